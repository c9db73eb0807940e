"""What every stage result was made from, and whether it still holds: the lineage of a run folder's markers.

A stage's completion marker (``RUN/stages/<stage>.json``) records, besides its time:

- ``inputs.config``: the config sections that stage is the first to read (``SECTIONS``), as plain data, less
  the keys of how much is run (:data:`~search.preflight.RESOURCE_KEYS`) except :data:`RERUN_KEYS`;
- ``inputs.upstream``: the output fingerprint of every earlier stage when it ran;
- ``output``: its own output fingerprint: what the stage module's ``output_fingerprint(run)`` says of what it
  wrote (the search: its finished trials; export: ``best.yaml`` + ``best.json``), else a fresh token per
  completion.

A finished stage is **stale** when its config sections now differ, or when an earlier stage's output is no
longer what it consumed (that stage was redone, or ``best.yaml`` was exported anew); :func:`stale_stages` finds
the first stale stage, and every later one is stale with it. Markers written before lineage existed (no
``inputs``) are taken as they are.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from objectives.schema import load_json
from search.config import RunConfig
from search.preflight import RESOURCE_KEYS, as_read_back, config_diff
from search.rundir import RunDir

__all__ = ["RERUN_KEYS", "marker_record", "output_of", "stale_stages"]

# Keys of how much is run that still make a finished stage's result out of date: more trials are more work.
RERUN_KEYS = {"search.n_trials"}


def _drop(tree: Any, key: str) -> None:
    *path, name = key.split(".")
    for part in path:
        tree = tree.get(part) if isinstance(tree, dict) else None
    if isinstance(tree, dict):
        tree.pop(name, None)


def config_inputs(cfg: RunConfig, stage) -> dict:
    """The parts of ``cfg`` that decide ``stage``'s result: its ``SECTIONS``, less :data:`RESOURCE_KEYS` (except
    :data:`RERUN_KEYS`)."""
    tree = as_read_back(cfg)
    data = {section: tree.get(section) for section in stage.SECTIONS}
    for key in RESOURCE_KEYS - RERUN_KEYS:
        _drop(data, key)
    return data


def _marker(run: RunDir, name: str) -> dict | None:
    path = run.marker(name)
    if not path.is_file():
        return None
    data = load_json(path, f"remove {path} to run stage {name!r} again")
    return data if isinstance(data, dict) else None


def output_of(run: RunDir, stage) -> str | None:
    """The fingerprint of what ``stage`` has in the run folder now: its ``output_fingerprint(run)`` when it has
    one, else what its marker recorded; None when it has not finished."""
    data = _marker(run, stage.NAME)
    if data is None:
        return None
    fingerprint = getattr(stage, "output_fingerprint", None)
    return (fingerprint(run) if fingerprint else None) or data.get("output") or data.get("finished")


def marker_record(cfg: RunConfig, run: RunDir, stage, earlier: Sequence, seconds: float) -> dict:
    """The marker of ``stage`` just finished: time, inputs (config, upstream outputs) and output fingerprint."""
    fingerprint = getattr(stage, "output_fingerprint", None)
    return {"stage": stage.NAME, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "inputs": {"config": config_inputs(cfg, stage),
                       "upstream": {s.NAME: output_of(run, s) for s in earlier}},
            "output": (fingerprint(run) if fingerprint else None) or uuid.uuid4().hex}


def _stale_reason(cfg: RunConfig, run: RunDir, stage, earlier: Sequence) -> str | None:
    data = _marker(run, stage.NAME)
    inputs = (data or {}).get("inputs")
    if not isinstance(inputs, dict):
        return None
    keys = config_diff(inputs.get("config") or {}, config_inputs(cfg, stage))
    if keys:
        return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "") + " changed"
    recorded = inputs.get("upstream") or {}
    for s in earlier:
        if s.NAME in recorded and recorded[s.NAME] != output_of(run, s):
            return f"stage {s.NAME!r} has other results than it was made from"
    return None


def stale_stages(cfg: RunConfig, run: RunDir, stages: Sequence) -> dict[str, str]:
    """``{stage name: why}`` of every finished stage of ``stages`` (in pipeline order) whose result no longer
    holds: the first stale one and every finished one after it."""
    out: dict[str, str] = {}
    for i, stage in enumerate(stages):
        if not run.marker(stage.NAME).is_file():
            continue
        if out:
            out[stage.NAME] = f"made from stage {next(iter(out))!r}, which is stale"
            continue
        reason = _stale_reason(cfg, run, stage, stages[:i])
        if reason:
            out[stage.NAME] = reason
    return out


def sha256_of(data: Any) -> str:
    """A fingerprint of plain data (its canonical JSON)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
