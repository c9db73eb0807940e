"""The search space (the ``space:`` section of a run config) and its mapping to mergekit configurations.

A :class:`SpaceConfig` names a base model, the candidate models and the merge method; every mergekit
parameter is either fixed (``density: 0.6``) or searchable (``density: {low: 0.1, high: 1.0}`` or
``normalize: {choices: [true, false]}``). Parameter names are checked against what mergekit declares for
the method (``mergekit.merge_methods.get(method).spec.parameters``), so ``desnity`` is a config error with a
close-match suggestion, never silently ignored.

Pure functions connect the space to Optuna and mergekit:

* :func:`suggest_params` samples one candidate from an Optuna ``trial`` (stable names such as
  ``zahlen.density``, ``zahlen.weight@mlp[1]`` or ``lambda``);
* :func:`to_merge_config` turns sampled values into a :class:`mergekit.config.MergeConfiguration`;
* :func:`params_from_recipe` goes back from a hand recipe to the parameter dict
  (``study.enqueue_trial(params_from_recipe(space, recipe))``);
* :func:`recipe_yaml` writes the YAML that stock ``mergekit-yaml`` reads.

Granularity: ``layer_groups: k`` makes every searched per-model parameter a mergekit gradient of ``k``
values (interpolated across layers); ``filters: [self_attn, mlp]`` gives each filter its own value plus
one for all other tensors. Names: ``<model>.<param>[@<filter>][<i>]``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from objectives.errors import UserError
from objectives.schema import ConfigProblems, Strict

__all__ = [
    "DEFAULT_RANGES",
    "Choice",
    "ModelSpace",
    "ParamSlot",
    "Range",
    "SpaceConfig",
    "method_parameters",
    "params_from_recipe",
    "recipe_dict",
    "recipe_yaml",
    "suggest_params",
    "to_merge_config",
]

# Search ranges used for a per-model parameter that the method declares but the space does not mention.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {"density": (0.1, 1.0), "weight": (0.0, 1.0)}


class Range(Strict):
    """A searchable float: ``trial.suggest_float(name, low, high, log=log, step=step)``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    @pydantic.model_validator(mode="after")
    def _check(self) -> Range:
        if not self.low <= self.high:
            raise ValueError(f"`low <= high` must hold, but got (low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"`low > 0` must hold for log=true, but got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("`step` and `log` cannot be combined: drop one of them")
        return self


class Choice(Strict):
    """A searchable categorical: ``trial.suggest_categorical(name, choices)``."""

    choices: list[bool | float | str] = pydantic.Field(min_length=1)


def _spec_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "float"
    if isinstance(v, dict) and "choices" in v or isinstance(v, Choice):
        return "choice"
    return "range"


# A parameter value: fixed (``0.6``, ``true``) or searched (``{low: 0.1, high: 1.0}``, ``{choices: [...]}``).
ParamSpec = Annotated[
    Annotated[bool, pydantic.Tag("bool")] | Annotated[float, pydantic.Tag("float")] | Annotated[Range, pydantic.Tag("range")] | Annotated[Choice, pydantic.Tag("choice")],
    pydantic.Discriminator(_spec_kind),
]


class ModelSpace(Strict):
    """One candidate model: a local folder or hub id and its per-model parameters (fixed or searched)."""

    model: str
    # Short name used in Optuna parameter names; default: the last path component of ``model``.
    name: str | None = None
    parameters: dict[str, ParamSpec] = pydantic.Field(default_factory=dict)

    @property
    def short_name(self) -> str:
        return self.name or Path(self.model.rstrip("/")).name


class SpaceConfig(Strict):
    """The ``space:`` section: base model, candidates, merge method and parameters (fixed or searchable)."""

    base_model: str
    models: list[ModelSpace] = pydantic.Field(min_length=1)
    merge_method: str = "dare_ties"
    # Shared (method-level) parameters: normalize, int8_mask, lambda, rescale, ...
    parameters: dict[str, ParamSpec] = pydantic.Field(default_factory=dict)
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    out_dtype: Literal["bfloat16", "float16", "float32"] | None = None
    tokenizer_source: str | None = None
    cache_sources: bool = True  # keep source tensors on the merge device between candidates (memory: all sources)
    # Granularity: a gradient of ``layer_groups`` values per searched per-model parameter, and/or one value
    # per filter (e.g. ``self_attn``, ``mlp``) plus one for all other tensors.
    layer_groups: int | None = pydantic.Field(default=None, ge=2)
    filters: list[str] = pydantic.Field(default_factory=list)

    @pydantic.field_validator("merge_method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        names = _method_names()
        if v not in names:
            raise ValueError(f"unknown merge method {v!r}{_did_you_mean(v, names)}; known: {', '.join(names)}")
        return v

    @pydantic.model_validator(mode="after")
    def _check(self) -> SpaceConfig:
        shared, per_model = method_parameters(self.merge_method)
        problems = []
        for key, spec in self.parameters.items():
            if key not in shared:
                where = " (it is a per-model parameter: set it under models[i].parameters)" \
                    if key in per_model else _did_you_mean(key, list(shared))
                problems.append(f"parameters.{key}: not a shared parameter of {self.merge_method}{where}")
            else:
                problems += _type_problems(f"parameters.{key}", spec, shared[key])
        names = set()
        for i, m in enumerate(self.models):
            if m.short_name in names:
                problems.append(f"models[{i}].name: {m.short_name!r} is used twice: give each model a "
                                "unique `name`")
            names.add(m.short_name)
            for key, spec in m.parameters.items():
                if key not in per_model:
                    where = " (it is a shared parameter: set it under space.parameters)" \
                        if key in shared else _did_you_mean(key, list(per_model))
                    problems.append(f"models[{i}].parameters.{key}: not a per-model parameter of "
                                    f"{self.merge_method}{where}")
                else:
                    problems += _type_problems(f"models[{i}].parameters.{key}", spec, per_model[key])
        if len(set(self.filters)) != len(self.filters):
            problems.append(f"filters: each filter must appear once, but got {self.filters}")
        if problems:
            raise ConfigProblems(problems)
        return self

    @cached_property
    def slots(self) -> list[ParamSlot]:
        """Every parameter value of the space, in a stable order (shared first, then per model)."""
        return list(_iter_slots(self))

    @property
    def searched(self) -> list[ParamSlot]:
        """The slots Optuna samples (their names are the keys of :func:`suggest_params`'s dict)."""
        return [s for s in self.slots if not s.fixed]

    def model_paths(self) -> list[str]:
        """The base model followed by every candidate model, as written in the config."""
        return [self.base_model] + [m.model for m in self.models]


class ParamSlot(pydantic.BaseModel):
    """One scalar value of the space: its Optuna name, where it goes in the recipe and its spec."""

    model_config = pydantic.ConfigDict(frozen=True)

    name: str
    model_index: int | None  # None: a shared parameter
    param: str
    filter: str | None = None
    group: int | None = None  # index into a layer gradient
    spec: ParamSpec

    @property
    def fixed(self) -> bool:
        return not isinstance(self.spec, (Range, Choice))

    @property
    def distribution(self):
        """The Optuna distribution of a searched slot (what :func:`suggest_params` asks for)."""
        import optuna.distributions as d

        if isinstance(self.spec, Range):
            return d.FloatDistribution(self.spec.low, self.spec.high, log=self.spec.log, step=self.spec.step)
        return d.CategoricalDistribution(self.spec.choices)


# --- mergekit's declared parameters ---------------------------------------------------------------------


def _method_names() -> list[str]:
    import mergekit.merge_methods as mm

    return sorted(m.spec.name for m in mm.registered_methods())


def method_parameters(method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(shared, per_model)``: mergekit's ``ParameterSpec`` by name for ``method``."""
    import mergekit.merge_methods as mm
    from mergekit.merge_methods.base import ParameterScope

    spec = mm.get(method).spec
    shared = {p.name: p for p in spec.parameters if p.scope == ParameterScope.SHARED}
    per_model = {p.name: p for p in spec.parameters if p.scope != ParameterScope.SHARED}
    return shared, per_model


def _base_required(method: str) -> bool:
    import mergekit.merge_methods as mm
    from mergekit.merge_methods.base import BasePolicy

    return mm.get(method).spec.contract.base != BasePolicy.IGNORED


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else (f" (expected one of: {', '.join(options)})"
                                                          if options else "")


def _type_problems(where: str, spec: ParamSpec, pspec: Any) -> list[str]:
    is_bool = pspec.value_type is bool
    if is_bool and isinstance(spec, Range):
        return [f"{where}: is a boolean, so it cannot be a range: use true/false or {{choices: [true, false]}}"]
    if is_bool and not isinstance(spec, (bool, Choice)):
        return [f"{where}: is a boolean, but got {spec!r}: use true or false"]
    if not is_bool and isinstance(spec, bool):
        return [f"{where}: is a number, but got {spec!r}: use a number or {{low: ..., high: ...}}"]
    if pspec.name == "density":
        lo, hi = (spec.low, spec.high) if isinstance(spec, Range) else (spec, spec)
        if isinstance(lo, (int, float)) and not (0.0 <= lo and hi <= 1.0):
            return [f"{where}: `0 <= density <= 1` must hold, but got {spec!r}"]
    return []


# --- slots ------------------------------------------------------------------------------------------------


def _iter_slots(space: SpaceConfig) -> Iterator[ParamSlot]:
    _, per_model = method_parameters(space.merge_method)
    for key, spec in space.parameters.items():
        yield ParamSlot(name=key, model_index=None, param=key, spec=spec)
    for i, m in enumerate(space.models):
        specs = dict(m.parameters)
        for key, (lo, hi) in DEFAULT_RANGES.items():
            if key in per_model and key not in specs:
                specs[key] = Range(low=lo, high=hi)
        for key, spec in specs.items():
            if isinstance(spec, (bool, float, int)):
                yield ParamSlot(name=f"{m.short_name}.{key}", model_index=i, param=key, spec=spec)
                continue
            for flt in [*space.filters, None] if space.filters else [None]:
                tag = f"@{flt}" if flt else ("@rest" if space.filters else "")
                groups = range(space.layer_groups) if space.layer_groups else [None]
                for g in groups:
                    idx = f"[{g}]" if g is not None else ""
                    yield ParamSlot(name=f"{m.short_name}.{key}{tag}{idx}", model_index=i, param=key,
                                    filter=flt, group=g, spec=spec)


# --- Optuna -----------------------------------------------------------------------------------------------


def suggest_params(space: SpaceConfig, trial: Any) -> dict[str, float | bool | str]:
    """Sample every searched slot from ``trial`` (an ``optuna.Trial``); returns ``{slot name: value}``."""
    out: dict[str, float | bool | str] = {}
    for s in space.searched:
        if isinstance(s.spec, Range):
            out[s.name] = trial.suggest_float(s.name, s.spec.low, s.spec.high, log=s.spec.log, step=s.spec.step)
        else:
            out[s.name] = trial.suggest_categorical(s.name, s.spec.choices)
    return out


# --- to and from mergekit ---------------------------------------------------------------------------------


def _value(slot: ParamSlot, params: dict[str, Any]) -> Any:
    if slot.fixed:
        return slot.spec
    if slot.name not in params:
        raise UserError(f"parameter {slot.name!r} is searched but missing from the sampled values: "
                        f"pass every name of space.searched (got {sorted(params)})")
    return params[slot.name]


def _assemble(slots: list[ParamSlot], params: dict[str, Any]) -> Any:
    """The mergekit value of one (model, param): scalar, gradient list, or conditional list by filter."""
    if len(slots) == 1 and slots[0].filter is None and slots[0].group is None:
        return _value(slots[0], params)
    by_filter: dict[str | None, list[Any]] = {}
    for s in slots:
        by_filter.setdefault(s.filter, []).append(_value(s, params))
    vals = {f: (v if slots[0].group is not None else v[0]) for f, v in by_filter.items()}
    if list(vals) == [None]:
        return vals[None]
    return [{"filter": f, "value": v} if f is not None else {"value": v} for f, v in vals.items()]


def to_merge_config(space: SpaceConfig, params: dict[str, Any]):
    """The :class:`mergekit.config.MergeConfiguration` for sampled ``params`` (fixed values filled in)."""
    from mergekit.config import MergeConfiguration

    unknown = set(params) - {s.name for s in space.searched}
    if unknown:
        raise UserError(f"unknown parameter name(s) {sorted(unknown)}: expected the names of "
                        f"space.searched ({[s.name for s in space.searched]})")
    grouped: dict[tuple[int | None, str], list[ParamSlot]] = {}
    for s in space.slots:
        grouped.setdefault((s.model_index, s.param), []).append(s)
    shared = {p: _assemble(sl, params) for (i, p), sl in grouped.items() if i is None}
    models: list[dict[str, Any]] = []
    if _base_required(space.merge_method):
        models.append({"model": space.base_model})
    for i, m in enumerate(space.models):
        mp = {p: _assemble(sl, params) for (j, p), sl in grouped.items() if j == i}
        models.append({"model": m.model, **({"parameters": mp} if mp else {})})
    return MergeConfiguration.model_validate(recipe_dict(space, models, shared))


def recipe_dict(space: SpaceConfig, models: list[dict[str, Any]], shared: dict[str, Any]) -> dict[str, Any]:
    """A mergekit recipe (plain dict) for ``space`` with the given per-model entries and shared parameters."""
    data: dict[str, Any] = {"models": models, "merge_method": space.merge_method, "dtype": space.dtype}
    if _base_required(space.merge_method):
        data["base_model"] = space.base_model
    if shared:
        data["parameters"] = shared
    if space.out_dtype:
        data["out_dtype"] = space.out_dtype
    if space.tokenizer_source:
        data["tokenizer_source"] = space.tokenizer_source
    return data


def recipe_yaml(merge_config) -> str:
    """The YAML text of ``merge_config`` exactly as stock ``mergekit-yaml`` reads it."""
    return merge_config.to_yaml()


def _plain(v: Any) -> Any:
    """A mergekit parameter value as plain Python (lists, dicts with filter/value)."""
    if isinstance(v, pydantic.BaseModel):
        return _plain(v.model_dump())
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _slot_value(recipe_value: Any, slot: ParamSlot) -> Any:
    """The value of ``slot`` inside a recipe value (scalar broadcasts; gradients and filters map)."""
    v = _plain(recipe_value)
    if isinstance(v, list) and v and isinstance(v[0], dict):  # conditional list
        match = [c["value"] for c in v if c.get("filter") == slot.filter] or \
            [c["value"] for c in v if c.get("filter") is None]
        if not match:
            raise UserError(f"recipe value for {slot.name!r} has no entry for filter {slot.filter!r}: got {v}")
        v = match[0]
    if isinstance(v, list):
        if slot.group is None or slot.group >= len(v):
            raise UserError(f"recipe value for {slot.name!r} is a gradient {v}, which this space cannot "
                            f"express: set space.layer_groups to {len(v)} or use a scalar")
        return v[slot.group]
    return v


def _same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def params_from_recipe(space: SpaceConfig, recipe) -> dict[str, Any]:
    """The searched values of a hand recipe (dict, YAML path or ``MergeConfiguration``) in ``space``.

    Raises :class:`UserError` when the recipe cannot be expressed in the space: another method, a model
    missing, a value outside its range, or a fixed value that differs.
    """
    from mergekit.config import MergeConfiguration

    if isinstance(recipe, (str, Path)):
        from objectives.schema import load_yaml

        recipe = load_yaml(recipe)
    cfg = recipe if isinstance(recipe, MergeConfiguration) else MergeConfiguration.model_validate(recipe)
    if cfg.merge_method != space.merge_method:
        raise UserError(f"recipe merge_method {cfg.merge_method!r} differs from space.merge_method "
                        f"{space.merge_method!r}: change one of them")
    inputs = {str(m.model): (m.parameters or {}) for m in (cfg.models or [])}
    shared_in = cfg.parameters or {}
    out: dict[str, Any] = {}
    for s in space.slots:
        if s.model_index is None:
            source, where = shared_in, "parameters"
        else:
            path = space.models[s.model_index].model
            key = next((k for k in inputs if _same_model(k, path)), None)
            if key is None:
                raise UserError(f"recipe has no model {path!r} (space.models[{s.model_index}]): "
                                f"recipe models are {sorted(inputs)}")
            source, where = inputs[key], f"model {path!r}"
        if s.param not in source:
            if s.fixed:
                continue
            raise UserError(f"recipe {where} does not set {s.param!r}, which the space searches "
                            f"({s.name}): add it to the recipe")
        v = _slot_value(source[s.param], s)
        if s.fixed:
            if v != s.spec:
                raise UserError(f"recipe {where} sets {s.param}={v!r} but the space fixes {s.name}={s.spec!r}: "
                                "make them agree")
            continue
        if isinstance(s.spec, Range) and not (s.spec.low <= v <= s.spec.high):
            raise UserError(f"recipe value {s.name}={v} is outside the space range [{s.spec.low}, "
                            f"{s.spec.high}]: widen the range")
        if isinstance(s.spec, Choice) and v not in s.spec.choices:
            raise UserError(f"recipe value {s.name}={v!r} is not one of {s.spec.choices}: add it to choices")
        out[s.name] = v
    return out
