"""The held-out stage (``merge-search evaluate``): search-subset and held-out scores of sources, hand recipes
and top trials.

Every model is scored by the run's :class:`~objectives.objective.Objective` twice: on the search subsets
(all stages' documents) and on the held-out documents. Recipes and trials are re-merged in memory by
:func:`search.merge.remerge` with one shared :class:`~search.merge.ResidentMerger` (a trial from its
:class:`~search.rundir.TrialRecord`, its weights checked against the recorded ``weights_sha256``). The result
is a :class:`HeldoutReport`, saved as ``heldout.json``; on CPU the scoring runs at ``objective.threads`` torch
threads (default 1, as the search's Ray workers score)::

    {"models": {name: {"kind": "trial" | "source" | "recipe", "trial": number or null,
                       "search": {task: score}, "test": {task: score}, "search_avg": x, "test_avg": x,
                       "stderr": {task: x}, "stderr_test": {task: x}, "n": {task: n}, "n_test": {task: n},
                       "secondary_avg": x, "secondary_test_avg": x   (with a secondary objective)}},
     "subsets": Objective.record()}

and ``heldout.md`` (model x task table).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from objectives.errors import UserError
from objectives.lmeval import make_lm
from objectives.objective import Objective, aggregate, cpu_threads
from objectives.schema import load_json
from objectives.selection import ItemMatrix
from search.config import RunConfig
from search.driver.study import load_study, ranked_trials
from search.merge import ResidentMerger, record_of, remerge
from search.merge.sources import source_problems
from search.preflight import local_models, output_problems, owner_problems, raise_problems
from search.rundir import RunDir, TrialRecord

__all__ = ["Candidate", "HeldoutReport", "ModelScores", "evaluate_candidates", "evaluate_models", "format_table",
           "top_trials"]


@dataclass
class Candidate:
    """One model to evaluate: ``load()`` returns ``(model, tokenizer)`` resident on the run's device."""

    name: str
    kind: str  # source | recipe | trial
    trial: int | None
    load: Callable[[], tuple[Any, Any]]


@dataclass(frozen=True)
class ModelScores:
    """One model's row of ``heldout.json``."""

    kind: str
    trial: int | None
    search: dict[str, float]
    test: dict[str, float]
    search_avg: float
    test_avg: float | None
    stderr: dict[str, float]
    stderr_test: dict[str, float]
    n: dict[str, int]
    n_test: dict[str, int]
    secondary_avg: float | None = None
    secondary_test_avg: float | None = None
    has_secondary: bool = False


@dataclass(frozen=True)
class HeldoutReport:
    """``heldout.json``: every evaluated model and the subsets they were scored on."""

    models: dict[str, ModelScores]
    subsets: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        models = {}
        for name, m in self.models.items():
            row = {k: v for k, v in asdict(m).items() if k != "has_secondary"}
            if not m.has_secondary:
                row.pop("secondary_avg"), row.pop("secondary_test_avg")
            models[name] = row
        return {"models": models, "subsets": self.subsets}

    def save(self, run: RunDir) -> None:
        run.root.mkdir(parents=True, exist_ok=True)
        run.heldout_json.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        run.heldout_md.write_text(format_table(self), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> HeldoutReport:
        data = load_json(path, "run the held-out stage first (merge-search evaluate)")
        models = {name: ModelScores(**m, has_secondary="secondary_avg" in m) for name, m in data["models"].items()}
        return cls(models=models, subsets=data.get("subsets", {}))


def _source(path: str, dtype: str, device: str) -> Callable[[], tuple[Any, Any]]:
    """A source model with its own tokenizer (sources may differ in vocabulary and template)."""
    def load():
        import torch
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        tok = transformers.AutoTokenizer.from_pretrained(path)
        return model.to(device).eval(), tok
    return load


def _merged(merger_of: Callable[[], ResidentMerger], record: TrialRecord) -> Callable[[], tuple[Any, Any]]:
    def load():
        res = remerge(record, merger=merger_of())
        return res.model, res.tokenizer
    return load


def top_trials(run: str | Path, k: int) -> list[Any]:
    """The ``k`` best COMPLETE trials of the study in run folder or storage URL ``run``: feasible first, then by
    the primary objective (:func:`search.driver.study.ranked_trials`)."""
    return ranked_trials(load_study(run))[:k]


def evaluate_candidates(objective, candidates: list[Candidate], *, log=print) -> HeldoutReport:
    """Score every candidate on the search subsets and the held-out documents (on CPU with torch pinned to
    ``objective.threads`` CPU threads while scoring)."""
    models = {}
    for c in candidates:
        log(f"evaluating {c.kind} {c.name} ...")
        models[c.name] = _score(objective, c)
        m = models[c.name]
        log(f"  search {m.search_avg:.4f}" + (f"  held-out {m.test_avg:.4f}" if m.test_avg is not None else "")
            + (f"  ({objective.config.secondary.name}: search {_fmt(m.secondary_avg)})" if m.has_secondary else ""))
    return HeldoutReport(models=models, subsets=objective.record())


def _score(objective, c: Candidate) -> ModelScores:
    cfg = objective.config
    model, tok = c.load()
    lm = make_lm(model, tok, batch_size=cfg.batch_size)
    with cpu_threads(cfg.threads, model.device):  # objective.threads, as a search worker scores
        search = objective.score(model, tok, split="search", stage=-1, lm=lm)
        test = objective.score(model, tok, split="test", lm=lm) if objective.has_heldout else None
    test_tasks = test.tasks if test else {}
    test_avg = aggregate(cfg, test_tasks) if all(t.name in test_tasks for t in cfg.tasks) else None
    return ModelScores(kind=c.kind, trial=c.trial, search=search.tasks, test=test_tasks, search_avg=search.score,
                       test_avg=test_avg, stderr=search.stderr, stderr_test=test.stderr if test else {},
                       n=search.n, n_test=test.n if test else {}, secondary_avg=search.secondary,
                       secondary_test_avg=test.secondary if test else None, has_secondary=bool(cfg.secondary))


def _fmt(x: float | None, err: float | None = None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4f}" + (f" ± {err:.4f}" if err is not None else "")


def format_table(report: HeldoutReport) -> str:
    """Markdown: one row per model and task (search vs held-out score with stderr), then the averages."""
    lines = ["| model | kind | task | search | held-out |", "|---|---|---|---|---|"]
    for name, m in report.models.items():
        for task, score in m.search.items():
            lines.append(f"| {name} | {m.kind} | {task} | {_fmt(score, m.stderr.get(task))} | "
                         f"{_fmt(m.test.get(task), m.stderr_test.get(task))} |")
        lines.append(f"| {name} | {m.kind} | **average** | **{_fmt(m.search_avg)}** | **{_fmt(m.test_avg)}** |")
        if m.has_secondary:
            lines.append(f"| {name} | {m.kind} | **secondary average** | **{_fmt(m.secondary_avg)}** | "
                         f"**{_fmt(m.secondary_test_avg)}** |")
    return "\n".join(lines) + "\n"


def _recipe_name(recipe: Any, i: int) -> str:
    return f"recipe:{Path(recipe).stem}" if isinstance(recipe, str) else ("seed-recipe" if i == 0
                                                                          else f"recipe:{i}")


def candidates(cfg: RunConfig, recipes: list[str], trials: list[Any], study_name: str | None = None) -> list[Candidate]:
    """Sources, the config's hand recipes plus ``recipes``, and ``trials``, in that order (merges share one
    :class:`ResidentMerger`, built on first use)."""
    space, device = cfg.space, cfg.device
    dtype = space.out_dtype or space.dtype
    merger: list[ResidentMerger] = []

    def merger_of() -> ResidentMerger:
        if not merger:
            merger.append(ResidentMerger.from_space(space, device=device))
        return merger[0]

    out = [Candidate(Path(p).name if i else f"base:{Path(p).name}", "source", None,
                     _source(p, dtype, device))
           for i, p in enumerate(space.model_paths())]
    for i, r in enumerate(list(cfg.recipes or []) + list(recipes)):
        record = record_of(r, seed=cfg.seed, label=_recipe_name(r, i))
        out.append(Candidate(_recipe_name(r, i), "recipe", None, _merged(merger_of, record)))
    for t in trials:
        out.append(Candidate(f"trial:{t.number}", "trial", t.number,
                             _merged(merger_of, TrialRecord.from_trial(t, study_name))))
    return out


def evaluate_models(cfg: RunConfig, out: str | Path, *, recipes: list[str] | None = None,
                    run: str | Path | None = None, top_k: int = 0, log=print) -> HeldoutReport:
    """Evaluate sources, hand recipes, ``recipes`` and the ``top_k`` trials of ``run``; writes
    ``heldout.json`` and ``heldout.md`` into ``out``."""
    if top_k and not run:
        raise UserError("--top-k needs --run RUN (the run folder of `merge-search search`)")
    if run and top_k < 1:
        raise UserError(f"--top-k must be >= 1 with --run, but got {top_k}")
    missing = [r for r in recipes or [] if not Path(r).is_file()]
    if missing:
        raise UserError(f"--recipe: file(s) {missing} do not exist: pass mergekit YAML recipe paths")
    folder = RunDir(Path(out))
    own = None if folder.read_manifest() or folder.resolved_config.is_file() else {
        folder.heldout_json.name, folder.heldout_md.name}  # a run folder, or a folder of its own
    problems = output_problems(folder.root, what="--out", inputs=local_models(cfg.space.model_paths()), own=own)
    problems += owner_problems(cfg, folder, redo="heldout")
    problems += source_problems(cfg.space.base_model, [m.model for m in cfg.space.models], device=cfg.device,
                                vocabulary=cfg.space.vocabulary_source)
    raise_problems(problems, "evaluate")
    trials = top_trials(run, top_k) if run else []
    matrix = RunDir(Path(run)).item_matrix if run and Path(run).is_dir() else None  # the search's item order
    objective = Objective(cfg.objective, matrix=ItemMatrix.load(matrix) if matrix and matrix.is_file() else None)
    report = evaluate_candidates(objective, candidates(cfg, list(recipes or []), trials), log=log)
    report.save(folder)
    log(f"wrote {folder.heldout_json} and {folder.heldout_md}")
    return report
