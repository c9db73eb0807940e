"""The only code that touches mergekit beyond its documented entry points (mergekit 0.1.5, LGPL-3.0: imported,
never copied).

Everything the in-memory merge needs from mergekit goes through here: its registries (merge methods and their
parameters, chat template names), per-tensor planning (:func:`plan_merge_tasks`, a workaround for
``MergePlanner.plan_in_memory``), the loader cache that keeps the source files open, architecture lookup and an
``Executor`` whose tensor loads can be served from memory. A mergekit upgrade that breaks an assumption breaks
one of the tests named below, and only this module changes. Recipes are parsed and validated by
:class:`search.merge.recipe_value.Recipe` (mergekit's public ``MergeConfiguration`` plus the strict checks of
:mod:`search.merge.strict`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from objectives.errors import UserError

__all__ = [
    "architecture_info",
    "base_required",
    "build_executor",
    "chat_template_names",
    "dtype_of",
    "merge_options",
    "method_names",
    "method_parameters",
    "model_ref",
    "open_model",
    "output_setup",
    "plan_merge_tasks",
    "reopen_model",
    "tensor_shapes",
    "vocabulary_source",
]


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


def chat_template_names() -> list[str]:
    """Names of the chat templates mergekit ships (``chatml``, ``alpaca``, ...), from its package data."""
    import importlib.resources

    from mergekit._data import chat_templates

    return sorted(p.name[:-len(".jinja")] for p in importlib.resources.files(chat_templates).iterdir()
                  if p.name.endswith(".jinja"))


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
