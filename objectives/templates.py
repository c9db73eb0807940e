"""Chat templates a stage can be told to use instead of (or for want of) the tokenizer's own.

A setting is ``None`` / ``"model"`` (the tokenizer's template), ``"chatml"`` (built in: the seed's ``chatml_de``
layout, ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message), the path of a ``.jinja`` file, or a Jinja
template string (anything containing ``{%`` or ``{{``).
"""

from __future__ import annotations

from pathlib import Path

from objectives.errors import UserError

__all__ = ["CHATML_TEMPLATE", "resolve_chat_template"]

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def resolve_chat_template(value: str | None, where: str) -> str | None:
    """The Jinja template a setting names (``None`` for the tokenizer's own); ``where`` names the setting in
    errors. A value that is neither a known name, a Jinja template nor an existing file is a :class:`UserError`."""
    if value in (None, "model"):
        return None
    if value == "chatml":
        return CHATML_TEMPLATE
    if "{%" in value or "{{" in value:
        return value
    path = Path(value).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{where}: cannot read the template file {value!r} ({type(err).__name__}): pass a "
                            "UTF-8 .jinja file") from None
    raise UserError(f"{where}: {value!r} is neither 'model', 'chatml', a Jinja template nor an existing .jinja file: "
                    "pass one of those")
