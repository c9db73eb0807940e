"""Base class for every configuration model: strict, frozen, all errors reported at once.

Lives in ``objectives`` (the bottom layer) so that both ``objectives`` and ``search`` can use it."""

from __future__ import annotations


from pathlib import Path
from typing import Any, TypeVar, get_args

import pydantic
import pydantic_core
import yaml

from objectives.errors import UserError

__all__ = ["NO_DEFAULT", "ConfigProblems", "Strict", "refused_key", "format_validation_error", "load_json", "load_yaml", "parse_yaml",
           "schema_default", "validate"]

M = TypeVar("M", bound=pydantic.BaseModel)


class Strict(pydantic.BaseModel):
    """A config section: unknown keys are errors (a misspelled ``desnity`` is never ignored), numbers are finite
    (a NaN or infinite value can only make every trial fail)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


def refused_key(key: str, message: str):
    """A ``mode="before"`` model validator for a key a section no longer takes (renamed or removed): the key
    in the input is one config error, ``message`` (what it became, what to do)."""
    def check(cls, data):
        if isinstance(data, dict) and key in data:
            raise ValueError(message)
        return data

    return pydantic.model_validator(mode="before")(classmethod(check))


class ConfigProblems(ValueError):
    """Raised by a model validator that found several problems at once; each is counted and shown."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def format_validation_error(err: pydantic.ValidationError, source: str) -> str:
    """Every problem of one validation, one per ``; ``-separated item, each naming its field path."""
    items = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msgs = [e["msg"]]
        if e["type"] == "extra_forbidden":
            msgs = ["unknown field (check the spelling; see the config reference in README)"]
        elif e["type"] == "value_error":  # our validators' own messages, without pydantic's "Value error, "
            error = e.get("ctx", {}).get("error")
            msgs = error.problems if isinstance(error, ConfigProblems) else [str(error or e["msg"])]
        items += [f"{loc}: {m}" if loc else m for m in msgs]  # cross-section checks name their fields themselves
    return f"{source}: {len(items)} config error(s): " + "; ".join(items)


def validate(model: type[M], data: Any, source: str) -> M:
    """Validate ``data`` against ``model``, raising one :class:`UserError` that lists every problem."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as err:
        raise UserError(format_validation_error(err, source)) from None


def load_json(path: str | Path, missing_fix: str) -> Any:
    """Read a JSON file; a missing file (``missing_fix`` says what to pass instead) or invalid JSON is a
    one-line :class:`UserError`."""
    import json

    p = Path(path)
    if p.exists() and not p.is_file():
        raise UserError(f"{str(p)!r} is not a file (a folder or a device): {missing_fix}")
    if not p.is_file():
        raise UserError(f"{str(p)!r} does not exist: {missing_fix}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{p}: invalid JSON at line {err.lineno} ({err.msg}): restore or remove the file") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text: restore or remove the file") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first at line {seen[key]}): keep one",
                    key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text (safe types only, duplicate keys refused) into a one-line :class:`UserError` on failure."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{source}: invalid YAML{where}: {problem}") from None


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file: a missing or unreadable file, text that is not UTF-8, a syntax error or a duplicate key
    is a one-line :class:`UserError`."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise UserError(f"config file {str(p)!r} is not a file (a folder or a device): pass the path of a YAML file")
    if not p.is_file():
        raise UserError(f"config file {str(p)!r} does not exist: pass the path of a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{p}: not UTF-8 text (byte {err.start}): save the file as UTF-8") from None
    except OSError as err:
        raise UserError(f"{p}: cannot be read ({err.strerror}): check its permissions") from None
    return parse_yaml(text, str(p))


NO_DEFAULT = object()  # what :func:`schema_default` returns for a required or unknown key


def schema_default(model: type[pydantic.BaseModel], dotted: str) -> Any:
    """The default of the key ``dotted`` (``"world.kind"``) of ``model`` as plain JSON data, walking nested
    models (also inside ``X | None``); :data:`NO_DEFAULT` when the key is required or not in the schema."""
    *parents, last = dotted.split(".")
    for part in parents:
        field = model.model_fields.get(part)
        inner = [a for a in get_args(field.annotation) or (field.annotation,)
                 if isinstance(a, type) and issubclass(a, pydantic.BaseModel)] if field is not None else []
        if not inner:
            return NO_DEFAULT
        model = inner[0]
    field = model.model_fields.get(last)
    if field is None or field.is_required():
        return NO_DEFAULT
    return pydantic_core.to_jsonable_python(field.get_default(call_default_factory=True))
