"""The held-out stage (``heldout``; ``merge-search evaluate`` on its own): search-subset and held-out scores of
sources, hand recipes and top trials.

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

from pathlib import Path
from typing import Any

from objectives.lmeval import make_lm
from objectives.objective import Objective, aggregate, cpu_threads
from objectives.selection import ItemMatrix
from search.config import RunConfig
from search.driver.study import load_study, ranked_trials
from search.merge.sources import source_problems
from search.preflight import local_models, output_problems
from search.rundir import RunDir
from search.stages.base import StageContext
from search.stages.candidates import Candidate, candidates
from search.stages.chat_templates import chat_objective_problems
from search.stages.heldout_report import HeldoutReport, ModelScores, fmt_score
from search.writelock import writer_lock

__all__ = ["NAME", "SECTIONS", "evaluate", "evaluate_candidates",
           "problems", "run", "standalone_problems", "top_trials"]

NAME = "heldout"
SECTIONS = ("pipeline",)  # pipeline.top_k: how many trials are re-evaluated


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
            + (f"  ({objective.config.secondary.name}: search {fmt_score(m.secondary_avg)})" if m.has_secondary else ""))
    return HeldoutReport(models=models, subsets=objective.record(), task_kinds=objective.task_kinds())


def _score(objective, c: Candidate) -> ModelScores:
    cfg = objective.config
    model, tok = c.load()
    lm = make_lm(model, tok, batch_size=cfg.batch_size)
    with cpu_threads(cfg.threads, model.device):  # objective.threads, as a search worker scores
        search = objective.score(model, tok, split="search", rung=-1, lm=lm)
        test = objective.score(model, tok, split="test", lm=lm) if objective.has_heldout else None
    test_tasks = test.tasks if test else {}
    test_avg = aggregate(cfg, test_tasks) if all(t.name in test_tasks for t in cfg.tasks) else None
    return ModelScores(kind=c.kind, trial=c.trial, search=search.tasks, test=test_tasks, search_avg=search.score,
                       test_avg=test_avg, stderr=search.stderr, stderr_test=test.stderr if test else {},
                       n=search.n, n_test=test.n if test else {}, secondary_avg=search.secondary,
                       secondary_test_avg=test.secondary if test else None, has_secondary=bool(cfg.secondary))


def problems(cfg: RunConfig, run: RunDir) -> list[str]:
    """Nothing of its own: it reads the search's sources and objective (checked by the search stage)."""
    return []


def run(cfg: RunConfig, run: RunDir, ctx: StageContext) -> HeldoutReport:
    """Sources, hand recipes and the ``pipeline.top_k`` best trials of the run's study on both splits."""
    return evaluate(cfg, run.root, study_run=run.root, top_k=cfg.pipeline.top_k, log=ctx.log)


def standalone_problems(cfg: RunConfig, out: str | Path, *, recipes: list[str] | None = None,
                        study_run: str | Path | None = None, top_k: int = 0) -> list[str]:
    """The checks of an evaluation outside the pipeline: the output folder (a run folder, or one holding only
    this stage's files), the extra recipe files, the trials asked for, and the source models."""
    problems = []
    if top_k and not study_run:
        problems.append("top_k trials need the run folder (or storage URL) of a search to take them from")
    if study_run and top_k < 1:
        problems.append(f"top_k must be >= 1 when a search run is given, but got {top_k}")
    missing = [r for r in recipes or [] if not Path(r).is_file()]
    if missing:
        problems.append(f"recipe file(s) {missing} do not exist: give mergekit YAML recipe paths")
    folder = RunDir(Path(out))
    own = None if folder.read_manifest() or folder.resolved_config.is_file() else {
        folder.heldout_json.name, folder.heldout_md.name}  # a run folder, or a folder of its own
    problems += output_problems(folder.root, what="output folder", inputs=local_models(cfg.space.model_paths()),
                                own=own)
    return problems + source_problems(cfg.space.base_model, [m.model for m in cfg.space.models],
                                      device=cfg.device, vocabulary=cfg.space.vocabulary_source) + \
        chat_objective_problems(cfg.objective, cfg.space)


def evaluate(cfg: RunConfig, out: str | Path, *, recipes: list[str] | None = None,
             study_run: str | Path | None = None, top_k: int = 0, log=print) -> HeldoutReport:
    """Evaluate sources, hand recipes, ``recipes`` and the ``top_k`` trials of ``study_run`` (a run folder or
    storage URL); writes ``heldout.json`` and ``heldout.md`` into ``out``. Inputs are checked by the caller
    (the pipeline, or :func:`standalone_problems`); holds ``out``'s writer lock (:mod:`search.writelock`)."""
    with writer_lock(out):
        return _evaluate(cfg, RunDir(Path(out)), recipes=recipes, study_run=study_run, top_k=top_k, log=log)


def _evaluate(cfg: RunConfig, folder: RunDir, *, recipes, study_run, top_k, log) -> HeldoutReport:
    trials = top_trials(study_run, top_k) if study_run else []
    matrix = RunDir(Path(study_run)).item_matrix if study_run and Path(study_run).is_dir() else None
    judged = RunDir(Path(study_run)).chat_judgements if study_run and Path(study_run).is_dir() else None
    objective = Objective(cfg.objective, matrix=ItemMatrix.load(matrix) if matrix and matrix.is_file() else None,
                          chat_cache=judged if cfg.objective.chat else None)  # the search's chat judgements
    report = evaluate_candidates(objective, candidates(cfg, list(recipes or []), trials), log=log)
    report.save(folder)
    log(f"wrote {folder.heldout_json} and {folder.heldout_md}")
    return report
