"""``run_pipeline``: the ordered table of stages, run (or resumed) on one run folder.

Every stage is a module with the same contract (:mod:`search.stages.base`): ``NAME``, ``SECTIONS``,
``problems(cfg, run)`` and ``run(cfg, run, ctx)``. :data:`STAGES` is the one table that orders them; the
completion markers, resume, ``from_stage``/``only`` and the run-folder ownership rules all read it.

When a stage has finished, its marker ``RUN/stages/<stage>.json`` (seconds taken, finish time) is written;
running again skips finished stages and resumes an interrupted one (the search resumes from its Optuna
storage: completed trials are kept, orphaned ones re-queued); ``from_stage`` re-runs that stage and every
later one, ``only`` just that one. Before anything is created every selected stage's ``problems`` and the
run-wide checks are made (:func:`check_run`). A run folder belongs to the config that made it
(``RUN/resolved.yaml``): a config whose first-stage sections differ is refused, one whose later sections
differ needs ``from_stage``/``only`` at or before the first stage that reads them (:func:`owner_problems`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from objectives.errors import UserError
from search.config import RunConfig, save_run_config
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


def owner_problems(cfg: RunConfig, run: RunDir, *, redo: str | None = None) -> list[str]:
    """A run folder made by another config: keys of the first stage's sections (what the study holds) are
    refused always; keys of a later stage's sections need ``redo`` (the first stage re-run) at or before the
    first stage that reads them. Keys of how much is run (:data:`~search.preflight.RESOURCE_KEYS`) never count."""
    if not run.resolved_config.is_file():
        return []
    old = yaml.safe_load(run.resolved_config.read_text(encoding="utf-8"))
    keys = [k for k in config_diff(old, as_read_back(cfg)) if k not in RESOURCE_KEYS]
    names, owner = stage_names(), _section_stages()
    first = names[0]
    where = f"run folder {str(run.root)!r} was made with a different config (see its {run.resolved_config.name})"
    study_keys = [k for k in keys if owner.get(k.split(".")[0], first) == first]
    if study_keys:
        return [f"{where}: {_keys(study_keys)} differ, which changes what its study holds: use another run folder"]
    later = sorted({owner[k.split(".")[0]] for k in keys}, key=names.index)
    if later and (redo is None or names.index(redo) > names.index(later[0])):
        return [f"{where}: {_keys(keys)} differ: re-run from stage {later[0]!r} (the stages they affect), or use "
                "another run folder"]
    return []


def _keys(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def check_run(cfg: RunConfig, run: RunDir, stages: Sequence[str] | None = None, *, address: str | None = None,
              redo: str | None = None) -> None:
    """Every problem of running ``stages`` (default: all) of ``cfg`` into ``run``, as one
    :class:`~objectives.errors.UserError`, before anything is created: the run folder (writable, not inside a
    source, owned by this config), the Ray address, the devices, and each selected stage's ``problems``."""
    names = list(stages or stage_names())
    problems = owner_problems(cfg, run, redo=redo)
    problems += output_problems(run.root, what="run folder", inputs=local_models(cfg.space.model_paths()))
    problems += ray_problems(address) + device_problems(cfg, address)
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

    ``progress``: the search's live view (default: when stderr is a terminal). Raises
    :class:`StageInterrupted` (a ``KeyboardInterrupt``) when a stage was stopped; the next call resumes it."""
    selected = _selected(from_stage, only)
    names = stage_names()
    run = RunDir.of(run_dir, cfg.name)
    missing = [s for s in names[: names.index(selected[0])] if not run.marker(s).is_file()]
    if missing:
        raise UserError(f"stage {selected[0]!r} needs {missing} done first: run the whole pipeline, or re-run "
                        f"from stage {missing[0]!r}")
    redo = selected[0] if (from_stage or only) else None
    check_run(cfg, run, selected, address=address, redo=redo)
    run.root.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, run.resolved_config)
    ctx = StageContext(address=address, progress=sys.stderr.isatty() if progress is None else progress,
                       redo=redo is not None)
    if redo:
        for name in selected:
            run.marker(name).unlink(missing_ok=True)
    for name in selected:
        _run_stage(cfg, run, ctx, name)
    return run


def _run_stage(cfg: RunConfig, run: RunDir, ctx: StageContext, name: str) -> None:
    marker = run.marker(name)
    if marker.is_file():
        ctx.log(f"{name}: done already ({marker}), skipped")
        return
    ctx.log(f"{name}: starting")
    t0 = time.time()
    try:
        _stage(name).run(cfg, run, ctx)
    except StageInterrupted:
        ctx.log(f"{name}: interrupted; run the same command again to resume")
        raise
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"stage": name, "seconds": round(time.time() - t0, 1),
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n", encoding="utf-8")
    ctx.log(f"{name}: done in {time.time() - t0:.0f} s")
