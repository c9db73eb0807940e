"""The search stage's trial worker: merge a trial's recipe into a resident model and score it rung by rung.

:class:`MergeEvalWorker` implements the driver's worker protocol (:mod:`search.driver.workers`): it returns a
:class:`~search.driver.RungReport` whose ``attrs`` are the trial user attributes of a scored merge (scores,
stderr, items per task, constraint violations, the full-subset estimate and, on the rung that merged the
candidate, its :class:`MergeInfo`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objectives.lmeval import make_lm
from objectives.objective import Objective, RungResult, constraint_values
from objectives.selection import ItemMatrix
from search.driver.workers import RungReport, WorkerSetup
from search.merge import ResidentMerger, to_merge_config
from search.rundir import TrialAttr

__all__ = ["MergeEvalWorker", "MergeInfo", "trial_attrs"]


@dataclass(frozen=True)
class MergeInfo:
    """How a trial's candidate was merged: what an export needs to reproduce the scored weights."""

    weights_sha256: str | None
    seconds: float
    device: str
    threads: int


def trial_attrs(res: RungResult, eval_seconds: float, merge: MergeInfo | None) -> dict[str, Any]:
    """The trial user attributes (JSON values) of one scored rung; ``merge`` when the rung merged the
    candidate (the first one a worker ran for the trial)."""
    out: dict[str, Any] = {TrialAttr.SCORES: res.tasks, TrialAttr.STDERR: res.stderr,
                           TrialAttr.ITEMS_PER_TASK: res.n, TrialAttr.EVAL_SECONDS: round(eval_seconds, 3),
                           TrialAttr.VIOLATIONS: list(res.violations)}
    if res.secondary is not None:
        out[TrialAttr.SECONDARY] = res.secondary
    if merge is not None:
        out.update({TrialAttr.WEIGHTS_SHA256: merge.weights_sha256,
                    TrialAttr.MERGE_SECONDS: round(merge.seconds, 3),
                    TrialAttr.MERGE_DEVICE: merge.device, TrialAttr.MERGE_THREADS: merge.threads})
    if res.estimate is not None:
        out[TrialAttr.ESTIMATE] = res.estimate
    return out


@dataclass
class _Resident:
    """The trial a :class:`MergeEvalWorker` holds: its merge, the lm-eval wrapper and the last rung's result."""

    number: int
    merged: Any
    lm: Any
    previous: Any = None


class MergeEvalWorker:
    """Merges a trial's recipe into a resident model and scores it rung by rung.

    ``config`` is the validated run config (``space``, ``objective``, ``device``). The source models and the
    lm-eval tasks are loaded once in :meth:`setup`; the merged model of the current trial stays resident
    between its rungs, and each rung only evaluates the documents the previous one did not cover.
    """

    def __init__(self, config: Any, matrix: ItemMatrix | None = None, chat_cache: Path | None = None):
        self.config = config
        self.matrix = matrix  # the sources' item matrix (objective.selection: informative)
        self.chat_cache = chat_cache  # objective.chat's judgement cache, shared by the workers (None: in memory)
        self._trial: _Resident | None = None

    def setup(self) -> WorkerSetup:
        if self.config.objective.selection == "informative" and self.matrix is None:
            raise ValueError("objective.selection 'informative' needs the sources' item matrix "
                             "(search.stages.selection.item_matrix)")
        scfg, cuda = self.config.search, self.config.device.startswith("cuda")
        sharing = 1 / scfg.worker_gpus if cuda and scfg.worker_gpus else 1.0 if cuda else scfg.workers
        self.merger = ResidentMerger.from_space(self.config.space, device=self.config.device,
                                                workers_per_device=sharing)
        self.objective = Objective(self.config.objective, matrix=self.matrix, chat_cache=self.chat_cache)
        return WorkerSetup(rungs=len(self.config.objective.rungs), device=self.config.device)

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

    def run_rung(self, trial_number: int, params: dict, seed: int, rung: int) -> RungReport:
        merge = self._load(trial_number, params, seed)
        t = self._trial
        t0 = time.perf_counter()
        res = self.objective.score(t.merged.model, t.merged.tokenizer, rung=rung, previous=t.previous, lm=t.lm)
        t.previous = res
        value: Any = [res.score, res.secondary] if self.config.objective.secondary else res.score
        est = res.estimate
        use = self.config.objective.estimate and est is not None and not res.final
        return RungReport(value=value, items=res.items, attrs=trial_attrs(res, time.perf_counter() - t0, merge),
                          constraints=constraint_values(self.config.objective, res),
                          pruner_value=est["value"] if use else None)
