"""Chat templates a stage can be told to use instead of (or for want of) the tokenizer's own.

A setting is ``None`` / ``"model"`` (the tokenizer's template), ``"chatml"`` (built in: the seed's ``chatml_de``
layout, ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message), the path of a ``.jinja`` file, or a Jinja
template string (anything containing ``{%`` or ``{{``).
"""

from __future__ import annotations

from pathlib import Path

from objectives.errors import UserError

__all__ = ["CHATML_TEMPLATE", "end_of_turn", "resolve_chat_template", "template_tokens"]

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


_SENTINEL = "\x00reply\x00"


def end_of_turn(tokenizer) -> str | None:
    """The text a tokenizer's chat template writes right after an assistant reply (``<|im_end|>`` for ChatML,
    ``</s>`` for Zephyr), found by rendering a reply and reading what follows it up to the line end; ``None``
    when the template writes nothing there (or the tokenizer has no template). Generation stops at it."""
    if not tokenizer.chat_template:
        return None
    conv = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(conv, tokenize=False)
    except Exception:  # noqa: BLE001 -- a template that refuses this shape (e.g. needs a system turn): no marker
        return None
    if _SENTINEL not in text:
        return None
    after = text.split(_SENTINEL, 1)[1].lstrip(" ")
    marker = after.split("\n", 1)[0].strip()
    return marker or None


def template_tokens(tokenizer) -> list[int]:
    """Ids of the tokens *added* to the tokenizer's vocabulary (in ``added_tokens_decoder`` but not in the
    tokenizer model's own vocabulary: ChatML's ``<|im_start|>``/``<|im_end|>`` added by a fine-tune, not the
    base's ``<s>``/``</s>``) that its chat template writes around a system, user and assistant turn, sorted;
    empty when there is no template or it writes none (its markers are then ordinary tokens)."""
    if not tokenizer.chat_template:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    core = set(backend.get_vocab(with_added_tokens=False)) if backend is not None else {
        tokenizer.bos_token, tokenizer.unk_token}
    added = {tok.content for tok in tokenizer.added_tokens_decoder.values()} - core
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"}]
    try:
        text = tokenizer.apply_chat_template(conv, tokenize=False)
    except Exception:  # noqa: BLE001 -- a template without a system turn
        text = tokenizer.apply_chat_template(conv[1:], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return sorted({i for i in ids if tokenizer.convert_ids_to_tokens(i) in added})
