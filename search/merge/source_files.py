"""A source folder's files checked where they enter, before mergekit or transformers read them.

mergekit and transformers are forgiving in ways that hide damage: a tokenizer that does not load makes mergekit
"assume same as base" (the merge gets another vocabulary, silently), a shard missing from a sharded checkpoint
surfaces as a ``KeyError`` deep in a worker, a chat template that does not compile fails the DPO stage after the
whole search. Each function returns one readable line per problem (the file, what is wrong, the fix).

- :func:`shard_problems`: ``model.safetensors.index.json`` parses, every shard it names exists, and each tensor
  is in the shard the index maps it to;
- :func:`tokenizer_problems`: ``tokenizer.json`` loads with the ``tokenizers`` library, ``tokenizer_config.json``
  and ``special_tokens_map.json`` parse, and a chat template in them (or in ``chat_template.jinja``/``.json``)
  compiles and renders a two-turn conversation;
- :func:`path_problems`: paths mergekit cannot take (whitespace).
"""

from __future__ import annotations

import json
from pathlib import Path

from objectives.templates import render_problem

__all__ = ["path_problems", "shard_problems", "tokenizer_problems"]

INDEX = "model.safetensors.index.json"
_FIX = "download or save the model again"


def path_problems(path: str | Path, what: str = "model") -> list[str]:
    """A model path with whitespace (mergekit reads a recipe's model names as ``path+lora`` references and
    fails on such paths with an unrelated "circular reference" error)."""
    if any(c.isspace() for c in str(path)):
        return [f"{what} {str(path)!r}: merge-search cannot use model paths with spaces (mergekit misreads them): "
                "move the folder, or link it under a path without spaces (ln -s)"]
    return []


def shard_problems(folder: str | Path, what: str = "model") -> list[str]:
    """A sharded checkpoint whose index does not match its shards (see module doc); [] without an index."""
    from safetensors import SafetensorError, safe_open

    p = Path(folder)
    index = p / INDEX
    if not index.is_file():
        return []
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{what} {str(folder)!r}: {INDEX} is not a readable index ({type(err).__name__}): {_FIX}"]
    problems, keys = [], {}
    for shard in sorted(set(weight_map.values())):
        f = p / str(shard)
        if not f.is_file():
            problems.append(f"{what} {str(folder)!r}: shard {shard!r} named by {INDEX} is missing: {_FIX}")
            continue
        try:
            with safe_open(str(f), framework="pt") as handle:
                keys[shard] = set(handle.keys())
        except (SafetensorError, OSError) as err:
            problems.append(f"{what} {str(folder)!r}: shard {shard!r} is not a readable safetensors file ({err}): "
                            f"{_FIX}")
    wrong = sorted(name for name, shard in weight_map.items() if shard in keys and name not in keys[shard])
    if wrong:
        problems.append(f"{what} {str(folder)!r}: {INDEX} maps {len(wrong)} tensor(s) to a shard that does not "
                        f"hold them (e.g. {wrong[0]!r} -> {weight_map[wrong[0]]!r}): {_FIX}")
    return problems


def tokenizer_problems(folder: str | Path, what: str = "model") -> list[str]:
    """Tokenizer files that do not parse and chat templates that do not render (see module doc)."""
    p = Path(folder)
    problems = []
    if (p / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(p / "tokenizer.json"))
        except Exception as err:  # noqa: BLE001 -- the tokenizers library raises a bare Exception on bad files
            problems.append(f"{what} {str(folder)!r}: tokenizer.json does not load ({str(err)[:120]}): {_FIX}")
    templates: list[tuple[str, str]] = []
    for name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.json"):
        if not (p / name).is_file():
            continue
        try:
            data = json.loads((p / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            problems.append(f"{what} {str(folder)!r}: {name} is not valid JSON ({type(err).__name__}): {_FIX}")
            continue
        if name != "special_tokens_map.json" and isinstance(data, dict):
            templates += _templates(data.get("chat_template"), name)
    if (p / "chat_template.jinja").is_file():
        templates.append(("chat_template.jinja", (p / "chat_template.jinja").read_text(encoding="utf-8",
                                                                                      errors="replace")))
    for where, text in templates:
        problem = render_problem(text)
        if problem:
            problems.append(f"{what} {str(folder)!r}: the chat template in {where} does not render a conversation "
                            f"({problem}): fix it, or set the stage's chat_template (e.g. chatml)")
    return problems


def _templates(value, where: str) -> list[tuple[str, str]]:
    """The templates of a ``chat_template`` value: a string, or a list of ``{"name", "template"}``."""
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, list):
        return [(f"{where} ({t.get('name', '?')})", t["template"]) for t in value
                if isinstance(t, dict) and isinstance(t.get("template"), str)]
    return []
