"""Error types shared by every stage.

``objectives`` is the bottom layer of the project (``search`` imports it, never the reverse), so the one
user-facing error type lives here. The CLI turns a :class:`UserError` into a single ``merge-search: error:``
line and a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input from the user: the message names the field or path, the rule, the value and the fix."""
