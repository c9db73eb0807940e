"""Strict recipes: what stock mergekit would silently accept but is wrong in a recipe.

mergekit's pydantic models ignore unknown keys (``desnity: 0.5`` would silently be the default density), and
accept parameter names a merge method does not declare, NaN or infinite numbers, chat templates it cannot apply
and a ``union`` tokenizer without a base model. :func:`recipe_problems` finds these in a recipe mapping;
:func:`tokenizer_problems` and :func:`chat_template_problems` check the matching settings of a search space.
Each problem is one line naming the key (``models[1].parameters.desnity``) with a close match when there is one.
What mergekit registers (merge methods, their parameters, chat template names) comes from
:mod:`search.merge.mergekit_compat`.
"""

from __future__ import annotations

import difflib
import math

from objectives.schema import format_validation_error
from search.merge import mergekit_compat as mk

__all__ = ["chat_template_problems", "recipe_problems", "tokenizer_problems"]


def recipe_problems(data: dict) -> list[str]:
    """What stock mergekit would silently accept but is wrong in a recipe: unknown keys (with a close match),
    parameter names the merge method does not declare, numbers that are NaN or infinite."""
    from mergekit.config import MergeConfiguration

    out: list[str] = []
    method, names = data.get("merge_method"), mk.method_names()
    params: set[str] | None = None
    if method in names:
        shared, per_model = mk.method_parameters(method)
        params = set(shared) | set(per_model)
    else:
        out.append(f"merge_method: unknown merge method {method!r}{_close(str(method), names)}")
    _walk(data, MergeConfiguration, "", params, out)
    _non_finite(data, "", out)
    if isinstance(data.get("chat_template"), str):
        out += chat_template_problems(data["chat_template"], "chat_template")
    tokenizer = data.get("tokenizer") if isinstance(data.get("tokenizer"), dict) else None
    if not data.get("base_model") and mk.vocabulary_source(data.get("tokenizer_source"), tokenizer) == "union":
        out.append("base_model: a `union` tokenizer without base_model takes its special tokens and template from "
                   "whichever source mergekit lists first (a set: it differs from run to run): set base_model")
    return out


def tokenizer_problems(section: dict, where: str) -> list[str]:
    """Problems of a ``tokenizer:`` section as mergekit's ``TokenizerConfig`` validates it."""
    import pydantic
    from mergekit.tokenizer.config import TokenizerConfig

    try:
        TokenizerConfig.model_validate(section)
    except pydantic.ValidationError as err:
        return [format_validation_error(err, where)]
    out: list[str] = []
    _walk(section, TokenizerConfig, where, None, out)  # mergekit ignores unknown keys (``sorce``)
    return out


def chat_template_problems(template: str, where: str) -> list[str]:
    """Problems of a recipe's ``chat_template`` by the rule ``mergekit-yaml`` applies when it saves the tokenizer:
    a template name it ships, ``auto``, or a Jinja template (20+ characters with ``{``)."""
    names = mk.chat_template_names()
    if template == "auto" or template in names or (len(template) >= 20 and "{" in template):
        return []
    return [f"{where}: {template!r} is neither a template name mergekit ships ({', '.join(names)}), 'auto', nor a "
            f"Jinja template{_close(template, names)}"]


def _models_in(annotation) -> list[type]:
    import typing

    import pydantic

    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def _is_mapping(annotation) -> bool:
    import typing

    return typing.get_origin(annotation) is dict or any(_is_mapping(a) for a in typing.get_args(annotation))


def _union_member(models: list[type], section) -> list[type]:
    """The models a section is checked against: for a union of several (e.g. a token's embedding ``source``),
    the one whose fields hold all its keys, else the closest one."""
    if len(models) < 2 or not isinstance(section, dict):
        return models
    fits = [m for m in models if set(section) <= set(m.model_fields)]
    return fits[:1] or [max(models, key=lambda m: len(set(section) & set(m.model_fields)))]


def _close(word: str, options) -> str:
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {found[0]!r}?)" if found else ""


def _walk(value, model: type, where: str, params: set[str] | None, out: list[str]) -> None:
    """Unknown keys against ``model``'s fields (and ``params``, when known, for a ``parameters`` mapping)."""
    if not isinstance(value, dict):
        if isinstance(value, list):
            for i, item in enumerate(value):
                _walk(item, model, f"{where}[{i}]", params, out)
        return
    fields = model.model_fields
    for key, item in value.items():
        here = f"{where}.{key}" if where else str(key)
        if key not in fields:
            out.append(f"{here}: unknown key{_close(str(key), fields)}")
        elif key == "parameters" and isinstance(item, dict) and params is not None:
            out += [f"{here}.{k}: not a parameter of this merge method{_close(str(k), params)}"
                    for k in item if k not in params]
        elif key == "parameters":
            continue
        else:
            annotation = fields[key].annotation
            keyed = _is_mapping(annotation) and isinstance(item, dict)  # {name: section}, e.g. modules, tokens
            subs = [m for m in _models_in(annotation) if m.__name__ not in ("ModelReference", "ModelPath")]
            for name, section in (item.items() if keyed else [("", item)]):
                for sub in _union_member(subs, section):
                    _walk(section, sub, f"{here}.{name}" if name else here, params, out)


def _non_finite(value, where: str, out: list[str]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        out.append(f"{where}: {value} is not a finite number")
    elif isinstance(value, dict):
        for k, v in value.items():
            _non_finite(v, f"{where}.{k}" if where else str(k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _non_finite(v, f"{where}[{i}]", out)
