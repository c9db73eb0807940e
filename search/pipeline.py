"""``run_pipeline``: search -> held-out -> export -> DPO -> MT-Bench -> report, resumable.

Each stage is a function of the resolved :class:`~search.config.RunConfig` and the
:class:`~search.rundir.RunDir`; it writes its outputs under the run folder and, when it has finished, a
completion marker ``RUN/stages/<stage>.json`` (seconds taken, finish time). Running again skips finished
stages and resumes an interrupted one (the search resumes from its Optuna storage: completed trials are kept,
orphaned ones re-queued); ``from_stage`` re-runs that stage and every later one, ``only`` just that one. The
resolved config is saved as ``RUN/resolved.yaml``. Before anything is created every input is checked
(:func:`search.preflight.run_problems`); a run folder belongs to the config that made it: a config that
changes what the study holds is refused, one that changes later stages only needs ``from_stage``/``only``
at or before the first stage it affects. The run folder's layout is :mod:`search.rundir`'s.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from objectives.errors import UserError
from objectives.mtbench.run import SCORES_FILE
from search.config import RunConfig, save_run_config
from search.driver.study import load_study
from search.merge import remerge
from search.preflight import raise_problems, run_problems, stage_input_problems
from search.rundir import STAGES, RunDir
from search.stages import dpo, export, heldout, mtbench, report, search
from search.stages.world import ensure_world

__all__ = ["STAGES", "StageInterrupted", "run_pipeline"]

class StageInterrupted(KeyboardInterrupt):
    """A stage stopped early (Ctrl-C): its marker is not written, the next run resumes it."""


@dataclass(frozen=True)
class _Context:
    cfg: RunConfig
    run: RunDir
    address: str | None
    progress: bool


def _say(msg: str) -> None:
    print(f"[merge-search run] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ stages


def _stage_search(ctx: _Context) -> None:
    summary = search.run_search(ctx.cfg, ctx.run.root, address=ctx.address, progress=ctx.progress, check=False)
    if summary.interrupted:
        raise StageInterrupted("search")


def _stage_heldout(ctx: _Context) -> None:
    heldout.evaluate_models(ctx.cfg, ctx.run.root, run=ctx.run.root, top_k=ctx.cfg.pipeline.top_k,
                            log=lambda m: _say(str(m)))


def _stage_export(ctx: _Context) -> None:
    study = load_study(ctx.run.root)
    trial = export.winner(study)
    if len(study.directions) > 1:
        _say(f"multi-objective: exporting trial {trial.number}, the feasible trial with the best primary value "
             f"{trial.values[0]:.4f} (secondary {trial.values[1]:.4f})")
    export.export_trial(study, trial, ctx.run.best_yaml)


def _stage_dpo(ctx: _Context) -> None:
    dpo.require_data(ctx.cfg.dpo)
    out = ctx.run.dpo
    shutil.rmtree(out.root, ignore_errors=True)  # an unfinished attempt (no marker): start the stage afresh
    remerge(ctx.run.best_record(), out=out.base)
    dpo.run_dpo(ctx.cfg.dpo, out.base, out.root, threads=ctx.cfg.objective.threads)  # ends with its own summary line


def _stage_mtbench(ctx: _Context) -> None:
    mtbench.run_mtbench_stage(ctx.cfg, ctx.run, log=_say)


def _stage_report(ctx: _Context) -> None:
    report.write_report(ctx.run.root, load_study(ctx.run.root))


STAGE_FUNCS: dict[str, Callable[[_Context], None]] = {
    "search": _stage_search, "heldout": _stage_heldout, "export": _stage_export,
    "dpo": _stage_dpo, "mtbench": _stage_mtbench, "report": _stage_report,
}


# ------------------------------------------------------------------------------------------------ driver


def _selected(from_stage: str | None, only: str | None) -> list[str]:
    if from_stage and only:
        raise UserError("--from and --only exclude each other: pass one of them")
    for name, value in (("--from", from_stage), ("--only", only)):
        if value is not None and value not in STAGES:
            raise UserError(f"{name} {value!r} is not a stage: use one of {list(STAGES)}")
    if only:
        return [only]
    return list(STAGES[STAGES.index(from_stage):]) if from_stage else list(STAGES)


def run_pipeline(cfg: RunConfig, run_dir: str | Path | None = None, *, from_stage: str | None = None,
                 only: str | None = None, address: str | None = None, progress: bool | None = None) -> RunDir:
    """Run (or resume) every stage of the resolved ``cfg`` in ``run_dir`` (default ``results/<name>``).

    ``progress``: the search's live view (default: when stderr is a terminal). Raises
    :class:`StageInterrupted` (a ``KeyboardInterrupt``) when a stage was stopped; the next call resumes it."""
    stages = _selected(from_stage, only)
    run = RunDir(Path(run_dir) if run_dir is not None else Path("results") / cfg.name)
    missing = [s for s in STAGES[: STAGES.index(stages[0])] if not run.marker(s).is_file()]
    if missing:
        raise UserError(f"stage {stages[0]!r} needs {missing} first: run without --only, or with --from {missing[0]}")
    ensure_world(cfg)  # the demo world's models are inputs the checks read
    redo = stages[0] if (from_stage or only) else None
    raise_problems(run_problems(cfg, run, address=address, redo=redo) + stage_input_problems(cfg, stages),
                   f"cannot run {cfg.name!r}")
    run.root.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, run.resolved_config)
    if redo:
        for stage in stages:
            run.marker(stage).unlink(missing_ok=True)
        for scores in run.mtbench.glob(f"*/{SCORES_FILE}") if "mtbench" in stages else ():
            scores.unlink()  # re-judged; answers asked with the same settings come from the stage's cache
    ctx = _Context(cfg, run, address, sys.stderr.isatty() if progress is None else progress)
    for stage in stages:
        _run_stage(ctx, stage)
    return run


def _run_stage(ctx: _Context, stage: str) -> None:
    marker = ctx.run.marker(stage)
    if marker.is_file():
        _say(f"{stage}: done already ({marker}), skipped")
        return
    _say(f"{stage}: starting")
    t0 = time.time()
    try:
        STAGE_FUNCS[stage](ctx)
    except StageInterrupted:
        _say(f"{stage}: interrupted; run the same command again to resume")
        raise
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"stage": stage, "seconds": round(time.time() - t0, 1),
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n", encoding="utf-8")
    _say(f"{stage}: done in {time.time() - t0:.0f} s")
