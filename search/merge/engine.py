"""In-memory merging: one resident model, updated in place by mergekit's own planner and merge methods.

A :class:`ResidentMerger` opens the source models once (mergekit's loader cache), checks that they share
one architecture and tensor shapes (vocabularies may differ when a tokenizer setting says how to merge them),
and keeps one merged ``PreTrainedModel`` resident on its device, shaped as the recipe's output: its vocabulary
(mergekit's tokenizer build, ``tokenizer``/``tokenizer_source``), its depth (``slices``), its dtype (what the
method produces unless ``out_dtype`` casts) and its tokenizer with the recipe's ``chat_template``; the shape
is rebuilt only when a recipe changes it. :meth:`ResidentMerger.merge` reseeds torch (exactly as ``mergekit-yaml --random-seed N`` does),
plans the given :class:`~search.merge.recipe_value.Recipe` with mergekit's planner, executes the
per-tensor merge tasks with mergekit's ``Executor`` and copies every result into the resident weights. The
weights are bit-identical to what stock ``mergekit-yaml RECIPE OUT --random-seed N`` writes on the same
device (``tests/merge/test_engine.py`` and, across vocabularies, ``tests/merge/test_vocab.py`` check this
through the real executable). Every use of mergekit goes
through :mod:`search.merge.mergekit_compat`; saving and re-merging recorded trials is
:mod:`search.merge.export`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from objectives.errors import UserError
from objectives.objective import cpu_threads
from search.merge import mergekit_compat as mk
from search.merge.hashing import weights_sha256
from search.merge.recipe_value import Recipe
from search.merge.sources import source_problems
from search.merge.memory import resolve_cache_sources

__all__ = ["MergeError", "MergeResult", "ResidentMerger", "reseed"]

class MergeError(RuntimeError):
    """One candidate could not be merged (e.g. a NaN/inf tensor); the merger stays usable for the next."""


@dataclass
class MergeResult:
    """A finished merge: ``model`` is the resident model (its weights are overwritten by the next merge)."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any
    weights_sha256: str | None
    seconds: float
    seed: int
    device: str
    merge_config: Any  # the recipe's MergeConfiguration (a copy; mergekit never sees this object)
    threads: int  # torch CPU threads the merge math ran with (CPU reductions depend on it)


def reseed(seed: int) -> None:
    """Seed python, numpy and torch (all devices) exactly as ``mergekit-yaml --random-seed`` does."""
    import transformers

    transformers.trainer_utils.set_seed(seed)


class ResidentMerger:
    """Loads the source models once and merges each candidate into one resident model.

    ``dtype`` is the resident model's dtype (default: the base model's stored dtype); a recipe whose
    ``out_dtype``/``dtype`` differs converts the resident model first. ``device`` is where the merge math
    runs and where the model lives (``cpu`` or ``cuda``); DARE masks depend on it, so an export must use the
    same device as the scored trial.

    ``cache_sources`` keeps every source tensor that mergekit loads resident on ``device`` after the first
    merge (mergekit's ``Executor(cached_values=...)``), so later candidates read no weights at all: memory is
    the sum of the source models on that device. Off, each merge re-reads the tensors (from the page cache
    after the first). The weights are bit-identical either way (tested). A cached tensor that a merge method
    modified in place (its version counter moved) is re-read from a freshly opened file before the next merge
    (on CPU mergekit's loader hands out views of one memory map, so the edit would otherwise persist).

    ``shape``: the recipe whose output (vocabulary, layers, dtype, tokenizer) the resident model takes until the
    first merge; default: one over every model with the given ``dtype`` and tokenizer settings.
    """

    def __init__(self, base_model: str, models: Sequence[str], *, device: str = "cpu",
                 dtype: str | None = None, tokenizer_source: str | None = None, tokenizer: dict | None = None,
                 chat_template: str | None = None, trust_remote_code: bool = False, cache_sources: bool = True,
                 shape: Recipe | None = None):
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device={device!r} but torch sees no CUDA device: use the cpu device")
        self.device = device
        self.options = mk.merge_options(device, trust_remote_code)
        self.base_model = str(base_model)
        self.models = list(dict.fromkeys([self.base_model, *map(str, models)]))
        problems = source_problems(self.base_model, self.models[1:], device=device,
                                   trust_remote_code=trust_remote_code,
                                   vocabulary=mk.vocabulary_source(tokenizer_source, tokenizer))
        if problems:
            raise UserError("; ".join(problems))
        self._refs = {m: mk.model_ref(m) for m in self.models}
        self.cache_sources = cache_sources
        self._sources: dict[Any, tuple[Any, int]] = {}  # LoadTensor task -> (value, tensor version)
        self._arch: dict[frozenset[str], Any] = {}  # referenced models -> mergekit ModelArchitecture
        self._output: _Output | None = None  # built by the first merge, or on first use of .model/.tokenizer
        self._probe = shape if shape is not None else _probe_recipe(self.base_model, self.models, dtype,
                                                                   tokenizer_source, tokenizer, chat_template)

    @property
    def model(self) -> Any:
        """The resident ``PreTrainedModel`` (shaped as the last recipe's output)."""
        if self._output is None:
            self._setup(self._probe.config)
        return self._output.model

    @property
    def tokenizer(self) -> Any:
        """The output tokenizer of the last recipe (merged vocabulary and chat template, as mergekit writes it)."""
        if self._output is None:
            self._setup(self._probe.config)
        return self._output.tokenizer

    @classmethod
    def from_recipe(cls, recipe, *, device: str = "cpu") -> ResidentMerger:
        """A merger for every model a recipe references (a :class:`Recipe`, or what :meth:`Recipe.of` takes),
        shaped as the recipe's output (vocabulary, layers, dtype, tokenizer and chat template)."""
        recipe = Recipe.of(recipe)
        config, refs = recipe.config, recipe.referenced_models()
        return cls(recipe.base_model or refs[0], refs, device=device, dtype=config.out_dtype or config.dtype,
                   tokenizer_source=config.tokenizer_source and str(config.tokenizer_source),
                   tokenizer=config.tokenizer and config.tokenizer.model_dump(mode="json", exclude_none=True),
                   chat_template=config.chat_template, cache_sources=False,  # one merge: nothing to reuse
                   shape=recipe)

    @classmethod
    def from_space(cls, space, *, device: str = "cpu", workers_per_device: float = 1.0) -> ResidentMerger:
        """A merger for every model of a :class:`search.space.SpaceConfig` (its tokenizer settings included);
        ``cache_sources: auto`` is decided by :func:`search.merge.memory.resolve_cache_sources` for a worker
        that shares ``device`` with ``workers_per_device - 1`` others."""
        models = space.model_paths()
        cache = resolve_cache_sources(space.cache_sources, models, space.out_dtype or space.dtype, device,
                                      workers_per_device)
        return cls(space.base_model, models[1:], device=device,
                   dtype=space.out_dtype or space.dtype, tokenizer_source=space.tokenizer_source,
                   tokenizer=space.tokenizer_dict(), chat_template=space.chat_template, cache_sources=cache)

    def _setup(self, config) -> None:
        """Make the resident model and tokenizer the output of ``config`` (rebuilt only when its shape changes)."""
        key = _output_key(config)
        if self._output is not None and self._output.key == key:
            return
        out_config, tokenizer, vocab = mk.output_setup(config, self.options, self._architecture(config))
        want = mk.dtype_of(config.out_dtype or config.dtype)
        self._output = None  # frees the previous resident model first
        self._output = _Output(key=key, tokenizer=tokenizer, known=dict([vocab]) if vocab else {},
                               model=_resident_model(self.base_model, out_config, want, self.device,
                                                      self.options.trust_remote_code))

    def _architecture(self, config) -> Any:
        """mergekit's architecture info for the recipe's models (they are fixed: looked up once per set)."""
        key = frozenset(str(r) for r in config.referenced_models())
        if key not in self._arch:
            self._arch[key] = mk.architecture_info(config, self.options)
        return self._arch[key]

    def _executor(self, targets: list) -> Any:
        """mergekit's ``Executor`` for ``targets``; with ``cache_sources`` the loads are served from memory, and
        the recipe's tokenizer (built once per output shape) always is."""
        return mk.build_executor(targets, self.device, self._source if self.cache_sources else None,
                                 known=self._output.known)

    def _source(self, task) -> Any:
        """The value of a ``LoadTensor`` task as the executor would store it (loaded once, then kept)."""
        hit = self._sources.get(task)
        if hit is not None and (hit[0] is None or hit[0]._version == hit[1]):
            return hit[0]
        if hit is not None:  # edited in place; on CPU it shares memory with the loader's mapping: reopen that
            mk.reopen_model(task.model)
        value = task.execute()
        if value is not None:
            value = value.to(self.device)
        self._sources[task] = (value, value._version if value is not None else 0)
        return value

    def merge(self, recipe, seed: int, *, compute_hash: bool = True, threads: int | None = None) -> MergeResult:
        """Merge ``recipe`` (a :class:`Recipe`, or what :meth:`Recipe.of` takes: a ``MergeConfiguration`` built in
        code, a mapping, a YAML path) with ``seed`` into the resident model (weights updated in place).

        ``threads`` pins torch's CPU thread count for the merge (restored afterwards): on CPU the order of
        mergekit's reductions, and so the exact bits, depend on it. A re-merge of a recorded trial passes the
        trial's ``merge_threads``; stock ``mergekit-yaml`` reproduces with ``OMP_NUM_THREADS=<threads>``.

        Raises :class:`MergeError` for a candidate that yields NaN/inf (naming the tensor); the next call
        overwrites every weight, so the merger stays usable. A model the merger was not built with is a
        :class:`UserError`.
        """
        with cpu_threads(threads):  # pinned whatever the device: the recorded count is what a re-merge passes
            return self._merge(Recipe.of(recipe), seed, compute_hash)

    def _merge(self, recipe: Recipe, seed: int, compute_hash: bool) -> MergeResult:
        import torch

        t0 = time.perf_counter()
        config = recipe.merge_config()  # a copy: mergekit's planner mutates what it is given
        unknown = [str(r) for r in config.referenced_models() if str(r) not in self._refs]
        if unknown:
            raise UserError(f"recipe references model(s) {unknown} that this merger did not load "
                            f"(loaded: {self.models}): build the merger with every model of the space")
        self._setup(config)
        want = mk.dtype_of(config.out_dtype or config.dtype)
        if want is not None and want != self.model.dtype and not self._output.adopted:
            self.model.to(want)
        tasks = mk.plan_merge_tasks(config, self.options, self.model.config, arch=self._architecture(config))
        by_task = {task: weight for weight, task in tasks}
        executor = self._executor(list(by_task))
        reseed(seed)  # immediately before the first merge task draws from torch's RNG
        store = _Store(self, config)
        for task, value in executor.run(quiet=True):
            store.put(by_task[task], value)
        _check_complete(store.targets, store.written)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        digest = weights_sha256(self.model) if compute_hash else None
        return MergeResult(model=self.model, tokenizer=self.tokenizer, weights_sha256=digest,
                           seconds=time.perf_counter() - t0, seed=seed, device=self.device,
                           merge_config=recipe.merge_config(), threads=torch.get_num_threads())


@dataclass
class _Output:
    """The resident output of one recipe shape: model, tokenizer and the tokenizer task's known value."""

    key: str
    model: Any
    tokenizer: Any
    known: dict
    adopted: bool = False  # the model took the dtype the merge method produced (no out_dtype in the recipe)


def _output_key(config) -> str:
    """What decides the output's shape and tokenizer: models, base, tokenizer settings, layers (the dtype is
    converted per merge)."""
    import json

    data = config.model_dump(mode="json", exclude_none=True)
    layers = [[s.get("layer_range") for s in sl.get("sources", [])] for sl in data.get("slices") or []]
    keep = {k: data.get(k) for k in ("base_model", "tokenizer_source", "tokenizer",
                                     "chat_template", "modules")}
    return json.dumps({**keep, "layers": layers, "models": sorted(str(r) for r in config.referenced_models())},
                      sort_keys=True, default=str)


def _probe_recipe(base: str, models: list[str], dtype, tokenizer_source, tokenizer, chat_template) -> Recipe:
    """A recipe over every model with the given output settings: enough to shape the resident model before
    the first candidate arrives (the method and weights do not matter)."""
    data: dict[str, Any] = {"merge_method": "linear", "base_model": base,
                            "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models]}
    extra = {"dtype": dtype, "tokenizer_source": tokenizer_source, "tokenizer": tokenizer,
             "chat_template": chat_template}
    return Recipe.from_dict({**data, **{k: v for k, v in extra.items() if v is not None}})


def _resident_model(base: str, out_config, dtype, device: str, trust_remote_code: bool) -> Any:
    """The base model's weights in the output's shape (rows or layers the base lacks start random: every
    tensor is overwritten by the first merge)."""
    import transformers

    base_config = transformers.AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    reshaped = base_config.to_diff_dict() != out_config.to_diff_dict()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the reshaped tensors' "MISMATCH" load report is expected
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            base, config=out_config, dtype=dtype or "auto", ignore_mismatched_sizes=reshaped,
            trust_remote_code=trust_remote_code)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model.to(device).eval().requires_grad_(False)


class _Store:
    """Copies each merged tensor into the resident weights: cast as the recipe says, checked for NaN/inf.

    Without ``out_dtype`` the output keeps the dtype the merge method produced (as stock mergekit writes
    it): the first tensor of another dtype converts the resident model to that dtype."""

    def __init__(self, merger: ResidentMerger, config):
        self.merger, self.config = merger, config
        self.targets = merger.model.state_dict()
        self.written: set[str] = set()
        self.dtypes: set = set()

    def put(self, weight, value) -> None:
        import torch

        if value is None:
            if weight.optional:
                return
            raise MergeError(f"merge produced no value for required tensor {weight.name!r}")
        cast = mk.dtype_of(weight.force_dtype or self.config.out_dtype)
        if cast is not None and value.dtype != cast:
            value = value.to(cast)
        if not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise MergeError(f"merged tensor {weight.name!r} has {bad} NaN/inf value(s): the candidate "
                             "is invalid (check weights/lambda/normalize)")
        dest = self.targets.get(weight.name)
        if dest is None:
            raise MergeError(f"merged tensor {weight.name!r} does not exist in the resident model")
        if dest.dtype != value.dtype and cast is None and not self.dtypes:
            self.merger.model.to(value.dtype)  # the method's own output dtype, as mergekit-yaml writes it
            self.merger._output.adopted = True
            self.targets = self.merger.model.state_dict()
            dest = self.targets[weight.name]
        self.dtypes.add(value.dtype)
        if dest.shape != value.shape or dest.dtype != value.dtype:
            raise MergeError(f"merged tensor {weight.name!r} is {tuple(value.shape)} {value.dtype} but the "
                             f"resident model has {tuple(dest.shape)} {dest.dtype}"
                             + (": the method produced mixed dtypes, set out_dtype" if len(self.dtypes) > 1 else ""))
        dest.copy_(value)
        self.written.add(weight.name)


def _check_complete(targets: dict, written: set[str]) -> None:
    """Every tensor of the model was written (tied weights through their alias), or :class:`MergeError`."""
    shared = {targets[n].data_ptr() for n in written}
    missing = sorted(n for n in set(targets) - written if targets[n].data_ptr() not in shared)
    if missing:
        raise MergeError(f"the merge did not produce {len(missing)} tensor(s) of the model, e.g. "
                         f"{missing[0]!r}")
