"""Error types shared by every stage.

``objectives`` is the bottom layer of the project (``search`` imports it, never the reverse), so the one
user-facing error type lives here. The CLI turns a :class:`UserError` into a single ``merge-search: error:``
line and a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "UserErrors", "did_you_mean", "first_line"]


class UserError(Exception):
    """Bad input from the user: the message names the field or path, the rule, the value and the fix."""


class UserErrors(UserError):
    """Several problems of one input at once: one message (``WHAT: N problem(s): a; b``) and ``problems``, each
    naming its own field, for callers that list them one by one (``merge-search check``'s rows)."""

    def __init__(self, what: str, problems: list[str]):
        super().__init__(f"{what}: {len(problems)} problem(s): " + "; ".join(problems))
        self.problems = list(problems)


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type when it has none:
    what a one-line error quotes of a library's failure."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def did_you_mean(word: str, options, *, listing: bool = False) -> str:
    """The hint an error about an unknown name ends with: `` (did you mean 'x'?)`` for the closest of
    ``options``; when none is close, `` (expected one of: a, b)`` with ``listing`` (and options), else ``""``."""
    import difflib

    options = [str(o) for o in options]
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of: {', '.join(options)})" if listing and options else ""
