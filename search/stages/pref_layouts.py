"""The row layouts of preference data as it exists on the hub, each turned into one conversational pair.

Detected from the columns (after ``dpo.data.columns`` renamed them), first match wins:

=============  ===========================================================  =====================================
layout         columns                                                      where it comes from
=============  ===========================================================  =====================================
``orca``       ``system`` (optional), ``question``, ``chosen``, ``rejected``  orca_dpo_pairs and its German
                                                                            translations
``alpaca``     ``instruction``, ``input`` (optional), ``system`` (optional),  LLaMA-Factory's alpaca *ranking*
               ``output`` = ``[chosen, rejected]`` or ``chosen``/``rejected``  datasets (``ranking: true``)
``sharegpt``   ``conversations`` (``from``/``value`` or ``role``/``content``  LLaMA-Factory's sharegpt ranking
               messages), ``chosen``, ``rejected`` (one message each)       datasets
``trl``        ``prompt``, ``chosen``, ``rejected``: strings, or message      trl's explicit-prompt layouts;
               lists (a ``chosen`` list that repeats the prompt turns, as   UltraFeedback-binarized
               UltraFeedback-binarized does, is cut to the answer)
``messages``   ``chosen``, ``rejected`` only, each a whole conversation:      trl's implicit-prompt conversational
               their common first turns are the prompt                      layout
=============  ===========================================================  =====================================

Every pair is ``{"prompt": [messages], "chosen": [assistant message(s)], "rejected": [...]}``.
"""

from __future__ import annotations

from typing import Any

from objectives.errors import UserError

__all__ = ["LAYOUTS", "COLUMN_ROLES", "detect_layout", "rename_columns", "row_pair"]

Pair = dict[str, Any]

# layout -> the columns that identify it (all must be present)
LAYOUTS: dict[str, tuple[str, ...]] = {
    "orca": ("question", "chosen", "rejected"),
    "alpaca": ("instruction",),
    "sharegpt": ("conversations", "chosen", "rejected"),
    "trl": ("prompt", "chosen", "rejected"),
    "messages": ("chosen", "rejected"),
}
# the names ``dpo.data.columns`` may map a dataset's own column names to
COLUMN_ROLES = ("system", "question", "prompt", "instruction", "input", "output", "conversations", "chosen",
                "rejected")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
          "bot": "assistant", "model": "assistant"}


def rename_columns(row: dict[str, Any], columns: dict[str, str] | None) -> dict[str, Any]:
    """``row`` with the dataset's columns renamed to the roles ``columns`` maps them to (``{role: column}``)."""
    if not columns:
        return row
    taken = set(columns.values())
    out = {k: v for k, v in row.items() if k not in taken}
    out.update({role: row[col] for role, col in columns.items() if col in row})
    return out


def detect_layout(columns: set[str], source: str) -> str:
    """The first layout of :data:`LAYOUTS` whose columns are all present; else a :class:`UserError`."""
    for name, needed in LAYOUTS.items():
        if set(needed) <= columns:
            return name
    raise UserError(
        f"preference data {source!r}: unknown column layout {sorted(columns)}: expected orca "
        "(system/question/chosen/rejected), alpaca ranking (instruction/input/output or chosen/rejected), sharegpt "
        "(conversations/chosen/rejected), trl (prompt/chosen/rejected) or whole conversations (chosen/rejected); "
        "or map your columns with dpo.data.columns (e.g. {prompt: frage, chosen: gut, rejected: schlecht})")


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _message(m: Any) -> dict | None:
    """One message as ``{"role", "content"}`` (sharegpt's ``from``/``value`` too), or None."""
    if not isinstance(m, dict):
        return None
    role = _ROLES.get(str(m.get("role", m.get("from", ""))).lower())
    content = m.get("content", m.get("value"))
    if role is None or _text(content) is None:
        return None
    return {"role": role, "content": content}


def _messages(value: Any) -> list[dict] | None:
    if not isinstance(value, list) or not value:
        return None
    msgs = [_message(m) for m in value]
    return None if any(m is None for m in msgs) else msgs


def _answer(value: Any) -> list[dict] | None:
    """An answer: a string, one message, or a list of messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}] if _text(value) else None
    if isinstance(value, dict):
        m = _message(value)
        return [m] if m else None
    return _messages(value)


def _prompt(row: dict, layout: str) -> tuple[list[dict] | None, str]:
    """The prompt messages of a row and the reason when there are none."""
    system = [{"role": "system", "content": row["system"]}] if _text(row.get("system")) else []
    if layout == "orca":
        q = _text(row.get("question"))
        return (system + [{"role": "user", "content": row["question"]}] if q else None), "missing or empty question"
    if layout == "alpaca":
        if _text(row.get("instruction")) is None:
            return None, "missing or empty instruction"
        text = row["instruction"] + (f"\n{row['input']}" if _text(row.get("input")) else "")
        return system + [{"role": "user", "content": text}], ""
    if layout == "sharegpt":
        msgs = _messages(row.get("conversations"))
        return (system + msgs if msgs else None), "missing or empty conversations"
    if isinstance(row.get("prompt"), list):
        msgs = _messages(row["prompt"])
        return (system + msgs if msgs else None), "missing or empty prompt messages"
    return (system + [{"role": "user", "content": row["prompt"]}] if _text(row.get("prompt")) else None,
            "missing or empty prompt")


def _split_common(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """``(common first messages, chosen rest, rejected rest)`` of two whole conversations."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def row_pair(row: dict[str, Any], layout: str) -> tuple[Pair | None, str | None]:
    """The conversational pair of one row of ``layout``, or ``(None, reason)``."""
    if layout == "alpaca" and "output" in row and "chosen" not in row:
        out = row.get("output")
        if not (isinstance(out, list) and len(out) == 2):
            return None, "output is not a [chosen, rejected] pair"
        row = {**row, "chosen": out[0], "rejected": out[1]}
    if layout == "messages":
        chosen, rejected = _messages(row.get("chosen")), _messages(row.get("rejected"))
        if chosen is None or rejected is None:
            return None, "chosen/rejected are not whole conversations"
        prompt, chosen, rejected = _split_common(chosen, rejected)
        if not prompt:
            return None, "chosen and rejected share no prompt turns"
    else:
        prompt, reason = _prompt(row, layout)
        if prompt is None:
            return None, reason
        chosen, rejected = _answer(row.get("chosen")), _answer(row.get("rejected"))
        for key, msgs in (("chosen", chosen), ("rejected", rejected)):
            if msgs is None:
                return None, f"missing or empty {key}"
        if chosen[0]["role"] != "assistant":  # a whole conversation repeating the prompt (UltraFeedback)
            common, chosen, rejected = _split_common(chosen, rejected)
            if not common or common[-1]["role"] != "user":
                return None, "chosen/rejected repeat no prompt turn"
    if not chosen or not rejected or chosen[0]["role"] != "assistant" or rejected[0]["role"] != "assistant":
        return None, "chosen/rejected hold no assistant answer"
    if chosen == rejected:
        return None, "chosen == rejected"
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, None
