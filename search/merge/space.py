"""The search space: the ``space:`` section of a run config.

A :class:`SpaceConfig` names a base model, the candidate models and the merge method; every mergekit
parameter is either fixed (``density: 0.6``) or searchable (``density: {low: 0.1, high: 1.0}`` or
``normalize: {choices: [true, false]}``). Parameter names are checked against what mergekit declares for
the method, so ``desnity`` is a config error with a close-match suggestion, never silently ignored.

Granularity: ``layer_groups: k`` makes every searched per-model parameter a mergekit gradient of ``k``
values (interpolated across layers); ``filters: [self_attn, mlp]`` gives each filter its own value plus
one for all other tensors. Each value is a :class:`ParamSlot` named ``<model>.<param>[@<filter>][<i>]``;
:mod:`search.merge.recipe` maps slots to and from mergekit recipes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from objectives.schema import ConfigProblems, Strict
from search.merge import mergekit_compat as mk
from search.merge import strict

__all__ = [
    "DEFAULT_RANGES",
    "Choice",
    "ModelSpace",
    "ParamSlot",
    "Range",
    "SpaceConfig",
    "TokenizerSpec",
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


class TokenizerSpec(Strict):
    """mergekit's ``tokenizer:`` section, fixed for the whole search: how the output vocabulary is built when
    the sources' vocabularies differ (e.g. a fine-tune that added ChatML's ``<|im_start|>``/``<|im_end|>``)."""

    source: str = pydantic.Field("union", description=(
        "`base`: the base model's tokens; `union`: every model's tokens; or a model whose tokenizer is used"))
    tokens: dict[str, dict[str, Any]] | None = pydantic.Field(None, description=(
        "per-token embedding sources as mergekit reads them: `{\"<|im_end|>\": {source: MODEL}}`, `{source: {kind: "
        "zero}}`, `{source: {kind: model_token, model: M, token: \"</s>\"}}`; `force: true` overrides present rows"))
    pad_to_multiple_of: int | None = pydantic.Field(default=None, ge=1)  # vocabulary rows padded to a multiple


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
    tokenizer_source: str | None = pydantic.Field(None, description=(
        "how differing vocabularies merge (mergekit's setting): `base`, `union` or a model; or use `tokenizer`"))
    tokenizer: TokenizerSpec | None = pydantic.Field(None, description=(
        "mergekit's fuller `tokenizer:` section (source, tokens, pad_to_multiple_of); at most one of the two"))
    chat_template: str | None = pydantic.Field(None, description=(
        "the merge's chat template (mergekit's): `chatml`, `alpaca`, `llama3`, `mistral`, `exaone`, `auto` (the "
        "sources' most common) or a Jinja template; null: the tokenizer source's own"))
    cache_sources: bool | Literal["auto"] = pydantic.Field("auto", description=(
        "keep source tensors on the merge device between candidates (memory: all sources; faster trials); `auto`: "
        "when the sources' headers say they fit the worker's share of the device with 15% to spare "
        "(search.merge.memory)"))
    # Granularity: a gradient of ``layer_groups`` values per searched per-model parameter, and/or one value
    # per filter (e.g. ``self_attn``, ``mlp``) plus one for all other tensors.
    layer_groups: int | None = pydantic.Field(default=None, ge=2)
    filters: list[str] = pydantic.Field(default_factory=list)

    @pydantic.field_validator("merge_method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        names = mk.method_names()
        if v not in names:
            raise ValueError(f"unknown merge method {v!r}{_did_you_mean(v, names)}; known: {', '.join(names)}")
        return v

    @pydantic.model_validator(mode="after")
    def _check(self) -> SpaceConfig:
        shared, per_model = mk.method_parameters(self.merge_method)
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
        problems += self._tokenizer_problems()
        if len(set(self.filters)) != len(self.filters):
            problems.append(f"filters: each filter must appear once, but got {self.filters}")
        if problems:
            raise ConfigProblems(problems)
        return self

    def _tokenizer_problems(self) -> list[str]:
        problems = []
        if self.tokenizer_source and self.tokenizer:
            problems.append("tokenizer_source and tokenizer: give only one (mergekit refuses both); "
                            f"e.g. tokenizer: {{source: {self.tokenizer_source}}}")
        if self.tokenizer:
            problems += strict.tokenizer_problems(self.tokenizer_dict(), "tokenizer")
        if self.chat_template is not None:
            problems += strict.chat_template_problems(self.chat_template, "chat_template")
        return problems

    def tokenizer_dict(self) -> dict[str, Any] | None:
        """The ``tokenizer:`` section as the recipe writes it (None when not set)."""
        return self.tokenizer.model_dump(exclude_none=True) if self.tokenizer else None

    @property
    def vocabulary_source(self) -> str | None:
        """How differing vocabularies merge: ``tokenizer.source`` or ``tokenizer_source`` (None: not set)."""
        return mk.vocabulary_source(self.tokenizer_source, self.tokenizer_dict())

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


# --- checks against mergekit's declared parameters ----------------------------------------------------


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
    _, per_model = mk.method_parameters(space.merge_method)
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
