"""The worker protocol: what a Ray actor runs for one rung of a trial (see :mod:`search.driver.driver`).

A worker is any object with ``setup() -> WorkerSetup`` (called once per actor: load models, tasks, ...) and
``run_rung(trial_number, params, seed, rung) -> RungReport``; :class:`TrialActor` keeps one for its whole life.
The driver knows nothing of what a worker does: the search stage's worker merges and scores a candidate
(:class:`search.stages.trial_worker.MergeEvalWorker`); ``search.driver.testing.SimulatedWorker`` is a cheap
stand-in for tests and benches.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RungReport", "TrialActor", "WorkerInfo", "WorkerSetup"]


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker's ``setup()`` returns: how many rungs (fidelity levels) a trial has, and where it runs."""

    rungs: int
    device: str = "cpu"


@dataclass(frozen=True)
class WorkerInfo:
    """A ready worker: its :class:`WorkerSetup` and where its actor runs."""

    setup: WorkerSetup
    pid: int
    node: str
    node_id: str


@dataclass(frozen=True)
class RungReport:
    """What a worker returns after one rung of a trial.

    ``value`` is the objective value (a list for several objectives); ``items`` the items evaluated so far (the
    pruner's step); ``attrs`` the trial user attributes to record (JSON values, keys of
    :class:`search.rundir.TrialAttr`); ``constraints`` Optuna constraint values (``<= 0`` feasible), set when
    the trial ends; ``pruner_value`` what the pruner sees instead of ``value`` (e.g. an estimate).
    """

    value: float | list[float]
    items: int
    attrs: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)
    pruner_value: float | None = None
    busy_seconds: float = 0.0  # set by the actor around the worker call
    started: float | None = None  # wall-clock span of the rung, recorded when given (tests of the overlap)
    ended: float | None = None


class TrialActor:
    """Body of the Ray actor: keeps one worker (and its loaded models) for its whole life."""

    def __init__(self, worker_factory: Callable[[], Any]):
        self.worker = worker_factory()

    def setup(self) -> WorkerInfo:
        import ray

        ctx = ray.get_runtime_context()
        return WorkerInfo(setup=self.worker.setup(), pid=os.getpid(), node=ray.util.get_node_ip_address(),
                          node_id=ctx.get_node_id()[:12])

    def run_rung(self, trial_number: int, params: dict, seed: int, rung: int) -> RungReport:
        t0 = time.perf_counter()
        report = self.worker.run_rung(trial_number, params, seed, rung)
        return dataclasses.replace(report, busy_seconds=time.perf_counter() - t0)
