"""Test doubles of the driver (like ``optuna.testing``): imported by tests and benches, never by a run.

:class:`SimulatedWorker` is a cheap synthetic worker with a known optimum (``tests/driver``,
``bench/search_bench.py``).
"""

from __future__ import annotations

import math
import random
import time

from search.driver.workers import RungReport, WorkerSetup
from search.rundir import TrialAttr

__all__ = ["SimulatedWorker"]


class SimulatedWorker:
    """A cheap synthetic worker: no models, a known optimum.

    The value of rung ``r`` is ``1 - sum((p - 0.5)^2)`` plus a small rung-dependent term; a rung takes
    ``seconds`` (times a per-trial factor in ``[1 - jitter, 1 + jitter]``), evaluates ``items[r]`` items
    cumulatively, and raises for trial numbers in ``raise_on``.
    """

    def __init__(self, *, items: tuple[int, ...] = (50, 200), seconds: float = 0.0, jitter: float = 0.0,
                 raise_on: tuple[int, ...] = ()):
        self.items, self.seconds, self.jitter, self.raise_on = tuple(items), seconds, jitter, set(raise_on)

    def setup(self) -> WorkerSetup:
        return WorkerSetup(rungs=len(self.items))

    def run_rung(self, trial_number: int, params: dict, seed: int, rung: int) -> RungReport:
        if trial_number in self.raise_on:
            raise RuntimeError(f"simulated failure of trial {trial_number}")
        rng = random.Random(seed * 31 + rung)
        factor = 1 + self.jitter * (2 * random.Random(seed).random() - 1)
        started = time.time()
        time.sleep(self.seconds * factor)
        base = 1 - sum((float(v) - 0.5) ** 2 for v in params.values())
        value = base + 0.05 * rng.random() / math.sqrt(self.items[rung])
        return RungReport(value=value, items=self.items[rung], attrs={TrialAttr.SCORES: {"sim": value}},
                          started=started, ended=time.time())
