"""The space and mergekit recipes, both ways: pure functions between Optuna, the space and mergekit.

* :func:`suggest_params` samples one candidate from an Optuna ``trial`` (stable names such as
  ``zahlen.density``, ``zahlen.weight@mlp[1]`` or ``lambda``);
* :func:`to_merge_config` turns sampled values into a :class:`mergekit.config.MergeConfiguration`;
* :func:`params_from_recipe` goes back from a hand recipe to the parameter dict
  (``study.enqueue_trial(params_from_recipe(space, recipe))``);
* :func:`recipe_yaml` writes the YAML that stock ``mergekit-yaml`` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic

from objectives.errors import UserError
from objectives.schema import load_yaml
from search.merge import mergekit_compat as mk
from search.merge.space import Choice, ParamSlot, Range, SpaceConfig

__all__ = ["params_from_recipe", "recipe_dict", "recipe_text", "recipe_yaml", "suggest_params", "to_merge_config"]


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
    if mk.base_required(space.merge_method):
        models.append({"model": space.base_model})
    for i, m in enumerate(space.models):
        mp = {p: _assemble(sl, params) for (j, p), sl in grouped.items() if j == i}
        models.append({"model": m.model, **({"parameters": mp} if mp else {})})
    return MergeConfiguration.model_validate(recipe_dict(space, models, shared))


def recipe_dict(space: SpaceConfig, models: list[dict[str, Any]], shared: dict[str, Any]) -> dict[str, Any]:
    """A mergekit recipe (plain dict) for ``space`` with the given per-model entries and shared parameters."""
    data: dict[str, Any] = {"models": models, "merge_method": space.merge_method, "dtype": space.dtype}
    if mk.base_required(space.merge_method):
        data["base_model"] = space.base_model
    if shared:
        data["parameters"] = shared
    if space.out_dtype:
        data["out_dtype"] = space.out_dtype
    if space.tokenizer_source:
        data["tokenizer_source"] = space.tokenizer_source
    if space.tokenizer:
        data["tokenizer"] = space.tokenizer_dict()
    if space.chat_template is not None:
        data["chat_template"] = space.chat_template
    return data


def recipe_yaml(merge_config) -> str:
    """The YAML text of ``merge_config`` as stock ``mergekit-yaml`` reads it (mergekit's own ``to_yaml``, except
    that a ``tokenizer:`` section keeps its ``source`` when it is mergekit's default ``union``: ``tokenizer: {}``
    would mean the same to mergekit but nothing to a reader)."""
    import yaml
    from mergekit.config import ConfigYamlDumper

    data = merge_config.model_dump(exclude_defaults=True, mode="json")
    if merge_config.tokenizer is not None:
        data["tokenizer"] = merge_config.tokenizer.model_dump(mode="json", exclude_none=True)
    return yaml.dump(data, Dumper=ConfigYamlDumper).rstrip()


def recipe_text(space: SpaceConfig, params: dict[str, Any]) -> str:
    """The mergekit YAML of sampled ``params`` (what a trial records and exports)."""
    return recipe_yaml(to_merge_config(space, params))


def _same_output_setting(cfg, space: SpaceConfig) -> None:
    """A hand recipe is compared with the search's trials: it must build the same tokenizer and template."""
    from mergekit.config import MergeConfiguration

    ours = MergeConfiguration.model_validate(recipe_dict(space, [{"model": space.base_model}], {}))
    for key in ("tokenizer_source", "tokenizer", "chat_template"):
        mine, theirs = (_setting(getattr(c, key)) for c in (cfg, ours))
        if mine != theirs:
            mine, theirs = ("not set" if v is None else repr(v) for v in (mine, theirs))
            raise UserError(f"recipe {key} is {mine} but the space's is {theirs}: give the recipe the space's {key} "
                            "(a hand recipe is compared with trials that build that tokenizer)")


def _setting(value: Any) -> Any:
    return value.model_dump(mode="json", exclude_none=True) if isinstance(value, pydantic.BaseModel) else value


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
        recipe = load_yaml(recipe)
    cfg = recipe if isinstance(recipe, MergeConfiguration) else MergeConfiguration.model_validate(recipe)
    if cfg.merge_method != space.merge_method:
        raise UserError(f"recipe merge_method {cfg.merge_method!r} differs from space.merge_method "
                        f"{space.merge_method!r}: change one of them")
    _same_output_setting(cfg, space)
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
