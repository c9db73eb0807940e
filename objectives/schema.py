"""Base class for every configuration model: strict, frozen, all errors reported at once.

Lives in ``objectives`` (the bottom layer) so that both ``objectives`` and ``search`` can use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from objectives.errors import UserError

__all__ = ["ConfigProblems", "Strict", "format_validation_error", "load_json", "load_yaml", "validate"]

M = TypeVar("M", bound=pydantic.BaseModel)


class Strict(pydantic.BaseModel):
    """A config section: unknown keys are errors (a misspelled ``desnity`` is never ignored)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, validate_default=True)


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
    if not p.is_file():
        raise UserError(f"{str(p)!r} does not exist: {missing_fix}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{p}: invalid JSON at line {err.lineno} ({err.msg})") from None


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning a missing file or a syntax error into a one-line :class:`UserError`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {str(p)!r} does not exist: pass the path of a YAML file")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{p}: invalid YAML{where}: {getattr(err, 'problem', err)}") from None
