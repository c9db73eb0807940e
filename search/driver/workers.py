"""Trial workers: what a Ray actor runs for one fidelity stage of a trial (see :mod:`search.driver.driver`).

:class:`MergeEvalWorker` merges the trial's recipe into a resident model and scores it stage by stage;
:class:`SimulatedWorker` is a cheap synthetic stand-in with a known optimum (tests, ``bench/search_bench.py``).
Both return a :class:`~search.rundir.StageReport`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from objectives.lmeval import make_lm
from objectives.objective import Objective, constraint_values
from objectives.selection import ItemMatrix
from search.merge import ResidentMerger, to_merge_config
from search.rundir import MergeInfo, StageReport

__all__ = ["MergeEvalWorker", "SimulatedWorker", "TrialActor", "WorkerInfo", "WorkerSetup"]


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker's ``setup()`` returns: how many fidelity stages a trial has, and where it runs."""

    stages: int
    device: str = "cpu"


@dataclass(frozen=True)
class WorkerInfo:
    """A ready worker: its :class:`WorkerSetup` and where its actor runs."""

    setup: WorkerSetup
    pid: int
    node: str
    node_id: str


class TrialActor:
    """Body of the Ray actor: keeps one worker (and its loaded models) for its whole life."""

    def __init__(self, worker_factory: Callable[[], Any]):
        self.worker = worker_factory()

    def setup(self) -> WorkerInfo:
        import ray

        ctx = ray.get_runtime_context()
        return WorkerInfo(setup=self.worker.setup(), pid=os.getpid(), node=ray.util.get_node_ip_address(),
                          node_id=ctx.get_node_id()[:12])

    def run_stage(self, trial_number: int, params: dict, seed: int, stage: int) -> StageReport:
        t0 = time.perf_counter()
        report = self.worker.run_stage(trial_number, params, seed, stage)
        return dataclasses.replace(report, busy_seconds=time.perf_counter() - t0)


@dataclass
class _Resident:
    """The trial a :class:`MergeEvalWorker` holds: its merge, the lm-eval wrapper and the last stage's result."""

    number: int
    merged: Any
    lm: Any
    previous: Any = None


class SimulatedWorker:
    """A cheap synthetic worker (tests, ``bench/search_bench.py``): no models, a known optimum.

    The value of stage ``s`` is ``1 - sum((p - 0.5)^2)`` plus a small stage-dependent term; a stage takes
    ``seconds`` (times a per-trial factor in ``[1 - jitter, 1 + jitter]``), evaluates ``items[s]`` items
    cumulatively, and raises for trial numbers in ``raise_on``.
    """

    def __init__(self, *, items: tuple[int, ...] = (50, 200), seconds: float = 0.0, jitter: float = 0.0,
                 raise_on: tuple[int, ...] = ()):
        self.items, self.seconds, self.jitter, self.raise_on = tuple(items), seconds, jitter, set(raise_on)

    def setup(self) -> WorkerSetup:
        return WorkerSetup(stages=len(self.items))

    def run_stage(self, trial_number: int, params: dict, seed: int, stage: int) -> StageReport:
        import random

        if trial_number in self.raise_on:
            raise RuntimeError(f"simulated failure of trial {trial_number}")
        rng = random.Random(seed * 31 + stage)
        factor = 1 + self.jitter * (2 * random.Random(seed).random() - 1)
        started = time.time()
        time.sleep(self.seconds * factor)
        base = 1 - sum((float(v) - 0.5) ** 2 for v in params.values())
        value = base + 0.05 * rng.random() / math.sqrt(self.items[stage])
        return StageReport(value=value, items=self.items[stage], scores={"sim": value}, started=started,
                           ended=time.time())


class MergeEvalWorker:
    """The real worker: merges a trial's recipe into a resident model and scores it stage by stage.

    ``config`` is the validated run config (``space``, ``objective``, ``device``). The source models and the
    lm-eval tasks are loaded once in :meth:`setup`; the merged model of the current trial stays resident
    between its stages, and each stage only evaluates the documents the previous one did not cover.
    """

    def __init__(self, config: Any, matrix: ItemMatrix | None = None):
        self.config = config
        self.matrix = matrix  # the sources' item matrix (objective.selection: informative)
        self._trial: _Resident | None = None

    def setup(self) -> WorkerSetup:
        if self.config.objective.selection == "informative" and self.matrix is None:
            raise ValueError("objective.selection 'informative' needs the sources' item matrix "
                             "(search.stages.selection.item_matrix)")
        self.merger = ResidentMerger.from_space(self.config.space, device=self.config.device)
        self.objective = Objective(self.config.objective, matrix=self.matrix)
        return WorkerSetup(stages=len(self.config.objective.stages), device=self.config.device)

    def _load(self, trial_number: int, params: dict, seed: int) -> MergeInfo | None:
        """Merge the trial's candidate unless it is the resident one; its merge info when it was merged now."""
        if self._trial is not None and self._trial.number == trial_number:
            return None
        self._trial = None
        merged = self.merger.merge(to_merge_config(self.config.space, params), seed)
        self._trial = _Resident(trial_number, merged,
                                make_lm(merged.model, merged.tokenizer, batch_size=self.config.objective.batch_size))
        # CPU merges depend on torch's thread count (reduction order): recorded so that an export
        # reproduces the scored weights with OMP_NUM_THREADS=<merge_threads> mergekit-yaml ...
        return MergeInfo(weights_sha256=merged.weights_sha256, seconds=merged.seconds, device=merged.device,
                         threads=merged.threads)

    def run_stage(self, trial_number: int, params: dict, seed: int, stage: int) -> StageReport:
        merge = self._load(trial_number, params, seed)
        t = self._trial
        t0 = time.perf_counter()
        res = self.objective.score(t.merged.model, t.merged.tokenizer, stage=stage, previous=t.previous, lm=t.lm)
        t.previous = res
        value: Any = [res.score, res.secondary] if self.config.objective.secondary else res.score
        est = res.estimate
        use = self.config.objective.estimate and est is not None and not res.final
        return StageReport(value=value, items=res.items, scores=res.tasks, stderr=res.stderr, items_per_task=res.n,
                           eval_seconds=time.perf_counter() - t0, violations=list(res.violations),
                           secondary=res.secondary, constraints=constraint_values(self.config.objective, res),
                           merge=merge, estimate=est, pruner_value=est["value"] if use else None)
