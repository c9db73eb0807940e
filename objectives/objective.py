"""An :class:`Objective`: validated tasks, fixed seeded document subsets, and scoring of a resident model.

Lifecycle::

    obj = Objective(config.objective)          # validates everything (all problems in one UserError),
                                                # loads each task's dataset once, picks the subsets
    obj.record()                                # JSON-able subsets to store in the run
    for r in obj.iter_rungs(model, tok):       # 50 -> 200 -> all items per task; only new docs evaluated
        trial.report(r.score, r.rung)           # partial results for pruning
    final = obj.score(model, tok, split="test")  # held-out documents

With ``objective.chat`` every rung also answers and judges its chat questions (:mod:`objectives.chat`): the
score is ``tasks["chat"]`` (0..1), ``n["chat"]`` the questions rated, and it is part of the primary fitness.

Subsets: for each task the documents ``0..n-1`` are permuted by ``random.Random(f"{subset_seed}:{task}")``
(string seeds are hashed with SHA-512, independent of ``PYTHONHASHSEED``); the search subset is the first
``subset`` ids of that order, a same-task held-out subset the next ``heldout`` ids, and rung ``k`` evaluates
the first ``k`` ids of the search subset, so rungs are nested and every trial sees the same documents.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from objectives.chat import ChatObjective
from objectives.config import CHAT, ObjectiveConfig, Size, TaskSpec
from objectives.errors import UserError, UserErrors, did_you_mean, first_line
from objectives.fitness import aggregate, constraint_values, violations
from objectives.lmeval import doc_values, make_lm, mean_and_stderr, run_tasks, task_manager
from objectives.selection import ItemMatrix, estimate_record, ordered, rung_estimates

__all__ = ["Objective", "RungResult", "Subset", "aggregate", "check_config", "constraint_values", "cpu_threads",
           "produced_metrics"]

Split = Literal["search", "test"]

# lm-eval's metrics when a task YAML has no metric_list (lm_eval.api.registry.DEFAULT_METRIC_REGISTRY).
_DEFAULT_METRICS = {"loglikelihood": ["perplexity", "acc"],
                    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
                    "multiple_choice": ["acc", "acc_norm"], "generate_until": ["exact_match"]}


@dataclass(frozen=True)
class Subset:
    """The fixed documents of one task: search ids in rung order, held-out task and ids."""

    task: str
    n_docs: int
    search: list[int]
    heldout_task: str | None = None
    heldout: list[int] | None = None


@dataclass
class RungResult:
    """Scores after one rung (or of the held-out split): what a trial records."""

    split: str
    rung: int  # index into config.rungs; -1 for the held-out split
    score: float
    tasks: dict[str, float]
    stderr: dict[str, float | None]
    n: dict[str, int]
    secondary: float | None = None
    violations: list[str] = field(default_factory=list)
    final: bool = True
    values: dict[str, dict[int, float]] = field(default_factory=dict, repr=False)
    estimate: dict[str, Any] | None = None  # full-subset estimate (objectives.selection.estimate_record)

    @property
    def items(self) -> int:
        """Documents evaluated in total (all tasks)."""
        return sum(self.n.values())

    @property
    def feasible(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the per-document values)."""
        d = asdict(self)
        d.pop("values")
        d.update(items=self.items, feasible=self.feasible)
        return d


# --- validation -------------------------------------------------------------------------------------------


def produced_metrics(cfg: dict[str, Any]) -> set[str] | None:
    """``metric,filter`` keys a task config produces; None when it cannot be told without loading it."""
    if cfg.get("class") or cfg.get("process_results") and not cfg.get("metric_list"):
        return None
    names = [m["metric"] for m in cfg.get("metric_list") or []] or \
        _DEFAULT_METRICS.get(cfg.get("output_type", "generate_until"), [])
    filters = [f["name"] for f in cfg.get("filter_list") or []] or ["none"]
    return {f"{m},{f}" for m in names if isinstance(m, str) for f in filters}


def _check_task(tm, name: str, where: str, metric: str | None) -> list[str]:
    from lm_eval.tasks._index import Kind

    entry = tm.task_index.get(name)
    if entry is None:
        hint = did_you_mean(name, tm.all_subtasks) or \
            " (check the name, `lm-eval ls tasks`, or add its folder to objective.include_paths)"
        return [f"{where}: unknown lm-eval task {name!r}{hint}"]
    if entry.kind in (Kind.GROUP, Kind.TAG):
        subs = sorted(n for n, e in tm.task_index.items()
                      if e.kind in (Kind.TASK, Kind.PY_TASK) and n.startswith(name))[:8]
        return [f"{where}: {name!r} is an lm-eval group/tag, not a single task: list its tasks instead"
                + (f" (e.g. {', '.join(subs)})" if subs else "")]
    produced = produced_metrics(entry.cfg or {}) if metric else None
    if produced is not None and metric not in produced:
        return [(f"{where}.metric: task {name!r} does not produce {metric!r}; it produces "
                 f"{', '.join(sorted(produced))}")]
    return []


def check_config(config: ObjectiveConfig, tm=None) -> list[str]:
    """Every problem found without loading any dataset: unknown tasks, groups, metrics, include paths."""
    problems = [f"objective.include_paths: {str(p)!r} is not a folder: give a folder of lm-eval task YAMLs"
                for p in config.include_paths if not p.is_dir()]
    if problems:
        return problems
    tm = tm or task_manager(config.include_paths, config.include_defaults)
    sections = [("objective", config)] + ([("objective.secondary", config.secondary)] if config.secondary else [])
    for prefix, spec in sections:
        for i, t in enumerate(spec.tasks):
            problems += _check_task(tm, t.name, f"{prefix}.tasks[{i}]", t.metric)
            if t.test_task:
                problems += _check_task(tm, t.test_task, f"{prefix}.tasks[{i}].test_task", t.metric)
    return problems


def _dataset_name(task) -> str:
    cfg = task.config
    return cfg.dataset_path + (f" ({cfg.dataset_name})" if getattr(cfg, "dataset_name", None) else "")


def _load_task(tm, name: str, where: str):
    """``(Task, None)`` or ``(None, problem)``; the dataset is read here (from the local cache when offline)."""
    try:
        return tm.load([name])["tasks"][name], None
    except Exception as err:  # noqa: BLE001 - datasets raises many types (ConnectionError, FileNotFoundError, ...)
        entry = tm.task_index.get(name)
        cfg = (entry.cfg or {}) if entry else {}
        ds = cfg.get("dataset_path", "?") + (f" ({cfg['dataset_name']})" if cfg.get("dataset_name") else "")
        first = first_line(err)
        if os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0", "false", "False"):
            return None, (f"{where}: dataset {ds} of task {name!r} is not available offline "
                          f"(HF_DATASETS_OFFLINE is set): download it once where there is internet "
                          f"(datasets.load_dataset) or unset HF_DATASETS_OFFLINE ({first})")
        return None, f"{where}: could not load dataset {ds} of task {name!r}: {first}"


def _order(seed: int, task: str, n: int) -> list[int]:
    return random.Random(f"{seed}:{task}").sample(range(n), n)


def _take(size: Size | None, available: int) -> int:
    return available if size in (None, "all") else size


@contextlib.contextmanager
def cpu_threads(threads: int | None, device: Any = "cpu") -> Iterator[None]:
    """Run the block with torch pinned to ``threads`` CPU threads when ``device`` is the CPU (restored
    afterwards), as Ray pins a search worker; ``None`` or a GPU device leaves torch as it is."""
    import torch

    if threads is None or torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- the objective ----------------------------------------------------------------------------------------


class Objective:
    """Validated objective with fixed subsets; see the module docstring.

    Raises :class:`UserError` listing every problem (unknown tasks with close matches, metrics a task does
    not produce, groups, subsets larger than the task, datasets not available offline).
    """

    def __init__(self, config: ObjectiveConfig, *, tm=None, matrix: ItemMatrix | None = None,
                 chat_cache=None, judge=None):
        """``matrix``: the sources' item matrix (``selection: informative``: ordered subsets, rung estimates);
        ``chat_cache``: the chat judgement cache's file (None: in memory); ``judge``: a chat judge backend (tests)."""
        self.config = config
        bad_paths = [p for p in config.include_paths if not p.is_dir()]
        self._tm = tm or (None if bad_paths else task_manager(config.include_paths, config.include_defaults))
        problems = check_config(config, self._tm)
        if problems:
            raise UserErrors("objective", problems)
        self._tasks: dict[str, Any] = {}
        self.subsets: dict[str, Subset] = {}
        sections = [("objective", config)] + \
            ([("objective.secondary", config.secondary)] if config.secondary else [])
        for prefix, spec in sections:
            for i, t in enumerate(spec.tasks):
                problems += self._prepare(t, f"{prefix}.tasks[{i}]")
        problems += [f"objective.selection 'informative' needs per-item mean metrics, but {t.name!r} reports "
                     f"{t.metric!r}: use selection: random" for t in config.all_tasks() if config.selection ==
                     "informative" and t.name in self._tasks and not self._is_mean(t.name, t.name)]
        self.chat = None
        try:
            self.chat = ChatObjective(config.chat, cache_path=chat_cache, judge=judge) if config.chat else None
        except UserError as err:
            problems.append(str(err))
        if problems:
            raise UserErrors("objective", problems)
        self.matrix = matrix if config.selection == "informative" else None
        if self.matrix is not None:
            self.subsets = ordered(self.subsets, self.matrix)

    def _load(self, name: str, spec: TaskSpec, where: str) -> tuple[int | None, str | None]:
        task, problem = _load_task(self._tm, name, where)
        if task is None:
            return None, problem
        if spec.num_fewshot is not None:
            task.set_config(key="num_fewshot", value=spec.num_fewshot)
        self._tasks[name] = task
        return len(task.eval_docs), None

    def _prepare(self, t: TaskSpec, where: str) -> list[str]:
        n, problem = self._load(t.name, t, where)
        if problem:
            return [problem]
        problems = []
        order = _order(self.config.subset_seed, t.name, n)
        n_search = _take(t.subset, n)
        n_held = 0 if t.test_task else (_take(t.heldout, n - n_search) if t.heldout is not None else 0)
        if n_search + n_held > n:
            what = f"subset ({t.subset}) + heldout ({t.heldout})" if n_held else f"subset ({t.subset})"
            problems.append(f"{where}: {what} must be <= the {n} documents of {t.name!r}: lower it or use 'all'")
        held_task, held = None, None
        if t.test_task:
            m, problem = self._load(t.test_task, t, f"{where}.test_task")
            if problem:
                return problems + [problem]
            k = _take(t.heldout, m)
            if k > m:
                problems.append(f"{where}.heldout: {k} must be <= the {m} documents of {t.test_task!r}: lower it "
                                "or use 'all'")
            held_task, held = t.test_task, _order(self.config.subset_seed, t.test_task, m)[:k]
        elif t.heldout is not None:
            held_task, held = t.name, order[n_search:n_search + n_held]
        self.subsets[t.name] = Subset(task=t.name, n_docs=n, search=order[:n_search],
                                      heldout_task=held_task, heldout=held)
        return problems

    # -- recording -----------------------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """The subsets as JSON (``{"seed", "tasks": {task: {...ids...}}}``) to store with the run."""
        return {"seed": self.config.subset_seed, "selection": "informative" if self.matrix else "random",
                "tasks": {name: asdict(s) for name, s in self.subsets.items()},
                **({CHAT: self.chat.record()} if self.chat else {})}

    def task_kinds(self) -> dict[str, str]:
        """What each part of the primary fitness measures: ``"generation"`` (an lm-eval ``generate_until`` task),
        ``"loglikelihood"`` (every other lm-eval task) or ``"chat"`` (the chat objective); keyed by the task's name
        (secondary-objective tasks are not part of it)."""
        kinds = {t.name: "generation" if self._tasks[t.name].OUTPUT_TYPE == "generate_until" else "loglikelihood"
                 for t in self.config.tasks}
        return kinds | ({CHAT: "chat"} if self.chat else {})

    def rung_sizes(self) -> list[dict[str, int]]:
        """Items per task at each rung."""
        return [{n: len(s.search) if k == "all" else min(k, len(s.search)) for n, s in self.subsets.items()}
                for k in self.config.rungs]

    def samples(self, split: Split = "search", rung: int = -1) -> dict[str, list[int]]:
        """lm-eval ``samples`` (``{lm-eval task: sorted ids}``) of ``split`` (search: at ``rung``)."""
        if split == "test":
            return {s.heldout_task: sorted(s.heldout) for s in self.subsets.values() if s.heldout_task}
        sizes = self.rung_sizes()[rung]
        return {n: sorted(s.search[:sizes[n]]) for n, s in self.subsets.items()}

    @property
    def has_heldout(self) -> bool:
        return any(s.heldout_task for s in self.subsets.values()) or bool(self.chat and self.chat.test_questions)

    # -- scoring -------------------------------------------------------------------------------------------

    def score(self, model, tokenizer, *, rung: int = -1, split: Split = "search",
              previous: RungResult | None = None, lm=None) -> RungResult:
        """Evaluate the resident ``model`` on ``split`` (search: the documents of ``rung``).

        With ``previous`` (an earlier rung's result) only the documents it did not cover are evaluated
        for tasks whose metric is a mean; other tasks are evaluated on all documents of the rung.
        """
        rungs = len(self.config.rungs)
        rung = rung % rungs if split == "search" else -1
        if self.chat and split == "search":
            self.chat.check_budget()  # a spent judge budget stops before anything is scored
        want = self.samples(split, rung)
        lm_task = {s.task: (s.heldout_task if split == "test" else s.task) for s in self.subsets.values()}
        if split == "test":
            lm_task = {k: v for k, v in lm_task.items() if v}
        prev = previous.values if previous is not None and previous.split == split else {}
        todo = {}
        for name, task_name in lm_task.items():
            have = prev.get(name, {}) if self._is_mean(task_name, name) else {}
            ids = [i for i in want[task_name] if i not in have]
            if ids:
                todo[task_name] = ids
        out = None
        if todo:
            lm = lm or make_lm(model, tokenizer, batch_size=self.config.batch_size)
            c = self.config
            out = run_tasks(lm, [self._tasks[t] for t in todo], todo, task_manager=self._tm,
                            apply_chat_template=c.apply_chat_template, fewshot_as_multiturn=c.fewshot_as_multiturn,
                            bootstrap_iters=c.bootstrap_iters)
        chat = self.chat.score(model, tokenizer, split=split, rung=rung, rungs=rungs,
                               previous=prev.get(CHAT)) if self.chat else None
        return self._collect(split, rung, want, lm_task, prev, todo, out, chat)

    def _spec(self, name: str) -> TaskSpec:
        return next(t for t in self.config.all_tasks() if t.name == name)

    def _is_mean(self, task_name: str, name: str) -> bool:
        from lm_eval.api.metrics import mean

        metric = self._spec(name).metric.partition(",")[0]
        return self._tasks[task_name].aggregation().get(metric) is mean

    def _collect(self, split, rung, want, lm_task, prev, todo, out, chat) -> RungResult:
        scores, stderr, n, values = {}, {}, {}, {}
        for name, task_name in lm_task.items():
            metric = self._spec(name).metric
            ids = set(want[task_name])
            vals = {i: v for i, v in prev.get(name, {}).items() if i in ids}
            if task_name in todo:
                vals.update(doc_values(out, task_name, metric))
            values[name] = vals
            n[name] = len(vals)
            if self._is_mean(task_name, name):
                scores[name], stderr[name] = mean_and_stderr(list(vals.values()))
            else:
                res = out["results"][task_name]
                mname, _, filt = metric.partition(",")
                err = res.get(f"{mname}_stderr,{filt}")
                scores[name], stderr[name] = float(res[metric]), (float(err) if isinstance(err, (int, float))
                                                                 else None)
        if chat is not None:
            scores[CHAT], stderr[CHAT], n[CHAT], values[CHAT] = chat.score, chat.stderr, chat.n, chat.values
        c = self.config
        primary = aggregate(c, scores) if all(
            t.name in scores for t in c.tasks) else float("nan")
        secondary = None
        if c.secondary and all(t.name in scores for t in c.secondary.tasks):
            secondary = aggregate(c.secondary, scores)
        est = rung_estimates(self.matrix, self.subsets, values) if self.matrix and split == "search" else {}
        return RungResult(split=split, rung=rung, score=primary, tasks=scores, stderr=stderr, n=n,
                          secondary=secondary, violations=violations(c, primary, secondary, scores),
                          final=split == "test" or rung == len(c.rungs) - 1, values=values,
                          estimate=estimate_record(est, lambda v: aggregate(c, {**scores, **v})) if est else None)

    def iter_rungs(self, model, tokenizer) -> Iterator[RungResult]:
        """Yield the cumulative result after each rung (stop iterating to prune); one HFLM for all."""
        lm = make_lm(model, tokenizer, batch_size=self.config.batch_size)
        prev = None
        for i in range(len(self.config.rungs)):
            prev = self.score(model, tokenizer, rung=i, previous=prev, lm=lm)
            yield prev
