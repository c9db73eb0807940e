"""The only code that touches mergekit beyond its documented entry points (mergekit 0.1.5, LGPL-3.0: imported,
never copied).

Everything the in-memory merge needs from mergekit goes through here: recipe parsing, per-tensor planning
(:func:`plan_merge_tasks`, a workaround for ``MergePlanner.plan_in_memory``), the loader cache that keeps the
source files open, architecture lookup and an ``Executor`` whose tensor loads can be served from memory. A
mergekit upgrade that breaks an assumption breaks one of the tests named below, and only this module changes.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from objectives.errors import UserError
from objectives.schema import format_validation_error, load_yaml

__all__ = [
    "architecture_info",
    "base_required",
    "build_executor",
    "chat_template_problems",
    "dtype_of",
    "load_recipe",
    "merge_options",
    "method_names",
    "method_parameters",
    "model_ref",
    "open_model",
    "output_setup",
    "plan_merge_tasks",
    "recipe_problems",
    "reopen_model",
    "tensor_shapes",
    "tokenizer_problems",
    "vocabulary_source",
]


def load_recipe(recipe) -> Any:
    """A :class:`MergeConfiguration` from a YAML path, a dict or a configuration (never mutated)."""
    import pydantic
    from mergekit.config import MergeConfiguration

    if isinstance(recipe, MergeConfiguration):
        return recipe.model_copy(deep=True)
    source = "recipe"
    if isinstance(recipe, (str, Path)):
        source, recipe = str(recipe), load_yaml(recipe)
    if not isinstance(recipe, dict):
        raise UserError(f"{source}: a mergekit recipe is a YAML mapping (merge_method, models, ...), but got "
                        f"{type(recipe).__name__}")
    try:
        config = MergeConfiguration.model_validate(recipe)
    except pydantic.ValidationError as err:
        raise UserError(format_validation_error(err, source)) from None
    except RuntimeError as err:  # mergekit's own validators raise these: "Cannot specify both ...", ...
        raise UserError(f"{source}: mergekit refuses the recipe: {err}: fix the recipe (e.g. give only one of "
                        "tokenizer_source and tokenizer; either models or slices)") from None
    problems = recipe_problems(recipe)
    if problems:
        raise UserError(f"{source}: {len(problems)} recipe error(s): " + "; ".join(problems))
    return config


def merge_options(device: str, trust_remote_code: bool = False) -> Any:
    """mergekit's ``MergeOptions`` for an in-memory merge on ``device``."""
    from mergekit.options import MergeOptions

    return MergeOptions(device=device, trust_remote_code=trust_remote_code, quiet=True)


def output_setup(merge_config, options, arch) -> tuple[Any, Any, Any]:
    """``(out_config, tokenizer, tokenizer_task)``: what stock ``mergekit-yaml`` writes besides the tensors.

    ``out_config``: the output model's ``transformers`` config (the base's, with the recipe's dtype, the layer
    count its ``slices`` give and, with a tokenizer setting, the merged vocabulary size, padded as
    ``pad_to_multiple_of`` says). ``tokenizer``: the merged tokenizer (``tokenizer_source``/``tokenizer:``) or the
    donor's (base model, else the first referenced model), with the recipe's ``chat_template`` applied.
    ``tokenizer_task``: mergekit's ``BuildTokenizer`` task of the recipe (None without a tokenizer setting);
    its value is what the merge tasks need (pass it to :func:`build_executor` as ``known``). These use
    ``mergekit.merge``'s private helpers (``_model_out_config``, ``_update_config_vocab``,
    ``_set_chat_template``), so the in-memory result follows stock mergekit wherever it changes;
    ``tests/merge/test_vocab.py`` compares against the real ``mergekit-yaml``. Never mutates ``merge_config``.
    """
    import transformers
    from mergekit import merge as mm
    from mergekit.plan import MergePlanner

    config = merge_config.model_copy(deep=True)
    out_config = mm._model_out_config(config, arch, trust_remote_code=options.trust_remote_code)
    task = MergePlanner(config, arch, options=options, out_model_config=out_config)._tokenizer_task
    info = None
    if task is not None:
        info = task.execute()
        pad = config.tokenizer.pad_to_multiple_of if config.tokenizer else None
        mm._update_config_vocab(out_config, arch, info.tokenizer, pad_to_multiple_of=pad)
        tokenizer = info.tokenizer
    else:
        donor = config.base_model or config.referenced_models()[0]
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            donor.model.path, revision=donor.model.revision, trust_remote_code=options.trust_remote_code)
    try:
        mm._set_chat_template(tokenizer, config, trust_remote_code=options.trust_remote_code)
    except RuntimeError as err:  # mergekit's words: "Invalid chat template: ..."
        raise UserError(f"chat_template: {err}: use a template name mergekit ships (chatml, alpaca, ...), "
                        "'auto' or a Jinja template") from None
    return out_config, tokenizer, (task, info) if task is not None else None


def plan_merge_tasks(merge_config, options, out_model_config, arch=None) -> list:
    """mergekit's per-tensor merge tasks for ``merge_config`` (a list of ``(WeightInfo, task)``).

    WORKAROUND (mergekit 0.1.5): ``MergePlanner.plan_in_memory()`` raises ``TypeError: Can't instantiate
    abstract class Task[Tensor]`` (its ``ReturnTensor`` wrapper no longer validates). We run the same
    planning step it would (``_plan()``) and return the planned tensor tasks (``_tensors``) ourselves; the
    dtype cast ``ReturnTensor``/``SaveTensor`` would apply is done by the caller. Executed in this order
    the tasks draw DARE masks in the same order as ``run_merge``, so the weights are bit-identical.
    ``tests/merge/test_engine.py::test_plan_in_memory_workaround_still_needed`` fails loudly when mergekit
    changes (fixed upstream, or ``_plan``/``_tensors`` renamed). ``_plan`` mutates the config: pass a copy.
    ``arch``: mergekit's ``ModelArchitecture`` of the referenced models, if already known.
    """
    from mergekit.plan import MergePlanner

    arch = arch or architecture_info(merge_config, options)
    planner = MergePlanner(merge_config, arch, options=options, out_model_config=out_model_config)
    planner._plan()
    return list(planner._tensors)


def architecture_info(merge_config, options) -> Any:
    """mergekit's ``ModelArchitecture`` for the models a recipe references."""
    from mergekit.architecture import get_architecture_info

    return get_architecture_info(merge_config, options)


def dtype_of(name: str | None):
    """The torch dtype of a mergekit dtype name (``bfloat16``, ``float32``, ...), or None."""
    from mergekit.common import dtype_from_name

    return dtype_from_name(name) if name else None


def model_ref(path: str) -> Any:
    """mergekit's ``ModelReference`` for a folder or hub id."""
    from mergekit.common import ModelReference

    return ModelReference.model_validate(str(path))


def open_model(ref, options) -> None:
    """Open a source in mergekit's process-wide loader cache (kept open for every later merge)."""
    from mergekit.io.tasks import LoaderCache

    cache = LoaderCache()
    cache.setup(options)
    cache.get(ref)


def reopen_model(ref) -> None:
    """Drop mergekit's open handles of a source, so its next tensor load reads the file afresh."""
    from mergekit.io.tasks import LoaderCache

    LoaderCache().get(ref).flush()


def tensor_shapes(ref) -> dict[str, tuple[int, ...]] | None:
    """``{name: shape}`` from the safetensors headers of a model (None for other formats)."""
    from mergekit.io.tasks import LoaderCache
    from safetensors import safe_open

    index = LoaderCache().get(ref).index
    shapes = {}
    for name, shard in index.tensor_paths.items():
        if not shard.endswith(".safetensors"):
            return None
        with safe_open(str(Path(index.base_path) / shard), framework="pt") as f:
            shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def build_executor(targets: list, device: str, load: Callable[[Any], Any] | None = None,
                   known: dict | None = None) -> Any:
    """mergekit's ``Executor`` for the planned ``targets``.

    With ``load``, every tensor-load task of the graph is served by ``load(task)`` (mergekit's
    ``cached_values``) instead of being read by the executor, so a caller can keep the sources resident.
    ``known``: values of other tasks already computed (``{task: value}``, e.g. the ``BuildTokenizer`` task of
    :func:`output_setup`), served the same way.
    """
    from mergekit.graph import Executor, TaskHandle, TaskUniverse
    from mergekit.io.tasks import LoadTensor

    known = known or {}
    if load is None and not known:
        return Executor(targets, math_device=device, storage_device=device)
    universe = TaskUniverse(targets)
    handles = [universe.add_task(t) for t in targets]
    cached = {}
    for i, task in enumerate(universe.tasks):
        if task in known:
            cached[TaskHandle(universe, i)] = known[task]
        elif load is not None and isinstance(task, LoadTensor):
            cached[TaskHandle(universe, i)] = load(task)
    return Executor(handles, math_device=device, storage_device=device, cached_values=cached)


def vocabulary_source(tokenizer_source, tokenizer: dict | None):
    """How a recipe merges differing vocabularies: ``tokenizer``'s ``source`` (mergekit's default ``union``)
    or ``tokenizer_source``; None when neither is set."""
    return tokenizer.get("source", "union") if tokenizer is not None else tokenizer_source


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
    import importlib.resources

    from mergekit._data import chat_templates

    names = sorted(p.name[:-len(".jinja")] for p in importlib.resources.files(chat_templates).iterdir()
                   if p.name.endswith(".jinja"))
    if template == "auto" or template in names or (len(template) >= 20 and "{" in template):
        return []
    return [f"{where}: {template!r} is neither a template name mergekit ships ({', '.join(names)}), 'auto', nor a "
            f"Jinja template{_close(template, names)}"]


def method_names() -> list[str]:
    """Names of every merge method registered in mergekit."""
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


def base_required(method: str) -> bool:
    """Whether ``method`` uses a base model (its recipes then need ``base_model``)."""
    import mergekit.merge_methods as mm
    from mergekit.merge_methods.base import BasePolicy

    return mm.get(method).spec.contract.base != BasePolicy.IGNORED


# --- strict recipes: mergekit ignores unknown keys (``desnity: 0.5`` would silently be the default) --------


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


def recipe_problems(data: dict) -> list[str]:
    """What stock mergekit would silently accept but is wrong in a recipe: unknown keys (with a close match),
    parameter names the merge method does not declare, numbers that are NaN or infinite."""
    from mergekit.config import MergeConfiguration

    out: list[str] = []
    method, names = data.get("merge_method"), method_names()
    params: set[str] | None = None
    if method in names:
        shared, per_model = method_parameters(method)
        params = set(shared) | set(per_model)
    else:
        out.append(f"merge_method: unknown merge method {method!r}{_close(str(method), names)}")
    _walk(data, MergeConfiguration, "", params, out)
    _non_finite(data, "", out)
    if isinstance(data.get("chat_template"), str):
        out += chat_template_problems(data["chat_template"], "chat_template")
    tokenizer = data.get("tokenizer") if isinstance(data.get("tokenizer"), dict) else None
    if not data.get("base_model") and vocabulary_source(data.get("tokenizer_source"), tokenizer) == "union":
        out.append("base_model: a `union` tokenizer without base_model takes its special tokens and template from "
                   "whichever source mergekit lists first (a set: it differs from run to run): set base_model")
    return out
