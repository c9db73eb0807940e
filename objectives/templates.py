"""Chat templates a stage can be told to use instead of (or for want of) the tokenizer's own.

A setting is ``None`` / ``"model"`` (the tokenizer's template), ``"chatml"`` (built in: the seed's ``chatml_de``
layout, ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message), the path of a ``.jinja`` file, or a Jinja
template string (anything containing ``{%`` or ``{{``).
"""

from __future__ import annotations

from pathlib import Path

from objectives.errors import UserError

__all__ = ["CHATML_TEMPLATE", "end_of_turn", "render_problem", "resolve_chat_template", "template_tokens"]

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
        return _checked(value, where)
    path = Path(value).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{where}: cannot read the template file {value!r} ({type(err).__name__}): pass a "
                            "UTF-8 .jinja file") from None
        return _checked(text, f"{where} ({value})")
    raise UserError(f"{where}: {value!r} is neither 'model', 'chatml', a Jinja template nor an existing .jinja file: "
                    "pass one of those")


def _checked(template: str, where: str) -> str:
    problem = render_problem(template)
    if problem:
        raise UserError(f"{where}: the chat template does not work ({problem}): fix the Jinja, or use chatml")
    return template


def render_problem(template: str) -> str | None:
    """Why ``template`` cannot render a two-turn conversation (compiled as transformers compiles chat templates:
    a sandboxed Jinja environment with ``raise_exception``), or None when it renders."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: "")
    conv = [{"role": "user", "content": "Hallo?"}, {"role": "assistant", "content": "Hallo."},
            {"role": "user", "content": "Wie geht es?"}, {"role": "assistant", "content": "Gut."}]
    try:
        env.from_string(template).render(messages=conv, add_generation_prompt=True, bos_token="<s>",
                                         eos_token="</s>")
    except Exception as err:  # noqa: BLE001 -- any error of the user's template is the answer
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else 'no message'}"
    return None


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
