"""``run_pipeline``: the ordered table of stages, run (or resumed) on one run folder.

Every stage is a module with the same contract (:mod:`search.stages.base`): ``NAME``, ``SECTIONS``,
``problems(cfg, run)`` and ``run(cfg, run, ctx)``. :data:`STAGES` is the one table that orders them; the
completion markers, resume, ``from_stage``/``only``, lineage and the run-folder ownership rules all read it.

When a stage has finished, its marker ``RUN/stages/<stage>.json`` is written (seconds, finish time, and what
the result was made from: :mod:`search.lineage`). Running again skips finished stages whose inputs are
unchanged, redoes *stale* ones (their config sections changed, or an earlier stage's result is another one now)
with every later stage, and resumes an interrupted one (the search from its Optuna storage); ``from_stage``
re-runs that stage and every later one, ``only`` just that one. Before anything is created every selected
stage's ``problems`` and the run-wide checks are made (:func:`check_run`). While it runs the command holds the
run folder's writer lock (:mod:`search.writelock`): a second writer is refused. Each stage writes beside its
earlier results and swaps them in when complete (:mod:`search.atomic`); a marker is replaced only then, so a
failed or killed stage leaves the earlier results and markers as they were. A run folder belongs to the config
that made it (``RUN/resolved.yaml``): a config whose first-stage sections differ is refused
(:func:`owner_problems`: another study).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from objectives.errors import UserError
from search import atomic
from search.config import RunConfig, save_run_config
from search.lineage import marker_record, stale_stages
from search.merge.memory import space_plan
from search.nodes import node_problems
from search.preflight import (
    RESOURCE_KEYS,
    as_read_back,
    config_diff,
    device_problems,
    local_models,
    output_problems,
    raise_problems,
    ray_problems,
)
from search.rundir import RunDir
from search.stages import dpo, export, heldout, mtbench, optimize, report
from search.stages.base import StageContext, StageInterrupted
from search.stages.verdict import stage_headlines
from search.writelock import held_problems, writer_lock

__all__ = ["STAGES", "StageContext", "StageInterrupted", "check_run", "owner_problems", "run_pipeline",
           "stage_names"]

# The pipeline, in order: adding a stage is one module with the stage contract and one entry here.
STAGES = (optimize, heldout, export, dpo, mtbench, report)


def stage_names() -> tuple[str, ...]:
    """The stages' names in pipeline order (markers, ``from_stage``/``only`` values)."""
    return tuple(s.NAME for s in STAGES)


def _stage(name: str):
    return next(s for s in STAGES if s.NAME == name)


def _section_stages() -> dict[str, str]:
    """``{config section: the first stage that reads it}``."""
    return {section: s.NAME for s in STAGES for section in s.SECTIONS}


# ------------------------------------------------------------------------------------------------ checks


def owner_problems(cfg: RunConfig, run: RunDir) -> list[str]:
    """A run folder made by another config whose first stage's sections (what the study holds) differ: refused
    (another run folder). Keys of a later stage's sections make that stage stale instead (:mod:`search.lineage`);
    keys of how much is run (:data:`~search.preflight.RESOURCE_KEYS`) never count."""
    if not run.resolved_config.is_file():
        return []
    old = yaml.safe_load(run.resolved_config.read_text(encoding="utf-8"))
    keys = [k for k in config_diff(old, as_read_back(cfg)) if k not in RESOURCE_KEYS]
    first = stage_names()[0]
    owner = _section_stages()
    study_keys = [k for k in keys if owner.get(k.split(".")[0], first) == first]
    if study_keys:
        return [f"run folder {str(run.root)!r} was made with a different config (see its "
                f"{run.resolved_config.name}): {_keys(study_keys)} differ, which changes what its study holds: use "
                "another run folder"]
    return []


def _keys(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def check_run(cfg: RunConfig, run: RunDir, stages: Sequence[str] | None = None, *,
              address: str | None = None) -> None:
    """Every problem of running ``stages`` (default: all) of ``cfg`` into ``run``, as one
    :class:`~objectives.errors.UserError`, before anything is created: the run folder (writable, not inside a
    source, owned by this config), the Ray address, the devices, and each selected stage's ``problems``."""
    names = list(stages or stage_names())
    raise_problems(held_problems(run.root), f"cannot run {cfg.name!r}")  # another writer: say so at once
    sources = cfg.space.model_paths()
    problems = owner_problems(cfg, run)
    problems += output_problems(run.root, what="run folder", inputs=local_models(sources))
    unreachable = ray_problems(address)
    problems += unreachable + device_problems(cfg, address)
    if address and not unreachable:  # every node of the cluster can run this config's trials
        problems += node_problems(cfg.device, sources, address, _streamed(cfg), cfg.search.worker_gpus)
    for name in names:
        problems += _stage(name).problems(cfg, run)
    raise_problems(problems, f"cannot run {cfg.name!r}")


# ------------------------------------------------------------------------------------------------ running


def _selected(from_stage: str | None, only: str | None) -> list[str]:
    names = stage_names()
    if from_stage and only:
        raise UserError("from_stage and only exclude each other: give one of them")
    for what, value in (("from_stage", from_stage), ("only", only)):
        if value is not None and value not in names:
            raise UserError(f"{what} {value!r} is not a stage: use one of {list(names)}")
    if only:
        return [only]
    return list(names[names.index(from_stage):]) if from_stage else list(names)


def run_pipeline(cfg: RunConfig, run_dir: str | Path | None = None, *, from_stage: str | None = None,
                 only: str | None = None, address: str | None = None, progress: bool | None = None) -> RunDir:
    """Run (or resume) every stage of the resolved ``cfg`` in ``run_dir`` (default ``results/<name>``).

    ``progress``: the search's progress (default on: a live view on a terminal, a line per finished trial in a
    log; False: none). Raises
    :class:`StageInterrupted` (a ``KeyboardInterrupt``) when a stage was stopped; the next call resumes it."""
    selected = _selected(from_stage, only)
    names = stage_names()
    run = RunDir.of(run_dir, cfg.name)
    missing = [s for s in names[: names.index(selected[0])] if not run.marker(s).is_file()]
    if missing:
        raise UserError(f"stage {selected[0]!r} needs {missing} done first: run the whole pipeline, or re-run "
                        f"from stage {missing[0]!r}")
    check_run(cfg, run, selected, address=address)
    stale = stale_stages(cfg, run, STAGES)
    before = [n for n in stale if names.index(n) < names.index(selected[0])]
    if before:
        raise UserError(f"stage {before[0]!r} is stale ({stale[before[0]]}): re-run from stage {before[0]!r} (or "
                        "run the whole pipeline) before stage " + repr(selected[0]))
    redo = set(selected) if (from_stage or only) else set()
    ctx = StageContext(address=address, progress=True if progress is None else progress)
    for name in selected:
        if name in stale and name not in redo:
            ctx.log(f"{name}: stale ({stale[name]}): redone")
    redo |= set(stale) & set(selected)
    with writer_lock(run.root):
        run.root.mkdir(parents=True, exist_ok=True)
        save_run_config(cfg, run.resolved_config)
        for name in selected:
            _run_stage(cfg, run, dataclasses.replace(ctx, redo=name in redo), name)
    return run


def _streamed(cfg: RunConfig) -> int | None:
    """The GPU memory a search worker needs at least (the memory plan without cached sources); None when the
    sources' headers are not here to plan from."""
    try:
        return space_plan(cfg.space, cfg.device).streamed
    except UserError:
        return None


def _run_stage(cfg: RunConfig, run: RunDir, ctx: StageContext, name: str) -> None:
    marker = run.marker(name)
    if marker.is_file() and not ctx.redo:
        ctx.log(f"{name}: done already ({marker}), skipped")
        return
    ctx.log(f"{name}: starting")
    t0 = time.time()
    stage = _stage(name)
    try:
        stage.run(cfg, run, ctx)
    except StageInterrupted:
        ctx.log(f"{name}: interrupted; run the same command again to resume")
        raise
    marker.parent.mkdir(parents=True, exist_ok=True)
    earlier = STAGES[: STAGES.index(stage)]
    atomic.write_json(marker, marker_record(cfg, run, stage, earlier, time.time() - t0))
    ctx.log(f"{name}: done in {time.time() - t0:.0f} s")
    try:
        headlines = stage_headlines(run, name)
    except Exception as err:  # noqa: BLE001 -- the stage is done; its summary must not fail the command
        headlines = [f"(no headline figures: {type(err).__name__}: {err})"]
    for line in headlines:
        ctx.log(f"  {line}")
