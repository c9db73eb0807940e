"""The run-config reference, generated from the schema (``merge-search config-reference``).

``docs/config-reference.md`` is this output; ``tests/test_configref.py`` fails when they drift apart.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import types
import typing
from typing import Any

import pydantic
from pydantic_core import PydanticUndefined

from search.config import RunConfig

__all__ = ["config_reference"]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _default(field: pydantic.fields.FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, pydantic.BaseModel):
        return "(section)"
    try:
        text = json.dumps(value, default=str)
    except TypeError:
        text = str(value)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


@functools.cache
def _comments(model: type) -> dict[str, str]:
    """Trailing ``# comments`` of field lines in the class source: the schema's inline documentation."""
    try:
        src = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    found = {}
    for m in re.finditer(r"^    (\w+): [^\n]*?#\s*(.+)$", src, flags=re.MULTILINE):
        found[m.group(1)] = m.group(2).strip()
    return found


def _describe(model: type, name: str, field: pydantic.fields.FieldInfo) -> str:
    text = field.description or _comments(model).get(name, "")
    return text.replace("|", "\\|").replace("\n", " ")


def _models_in(tp: Any) -> list[type[pydantic.BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return [tp]
    return [m for a in typing.get_args(tp) for m in _models_in(a)]


def _rows(model: type[pydantic.BaseModel], prefix: str, seen: set) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        desc = _describe(model, name, field)
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        for sub in _models_in(field.annotation):
            if (sub, key) in seen:
                continue
            seen.add((sub, key))
            origins = {typing.get_origin(field.annotation)} | {
                typing.get_origin(a) for a in typing.get_args(field.annotation)}
            inner = f"{key}[]." if list in origins else f"{key}.<name>." if dict in origins else f"{key}."
            rows += _rows(sub, inner, seen)
    return rows


def config_reference() -> str:
    """Markdown table of every run-config key (dotted path, type, default, description)."""
    head = ["| key | type | default | description |", "|---|---|---|---|"]
    return "\n".join(head + _rows(RunConfig, "", set())) + "\n"
