"""The search engine: the Optuna study (storage, samplers, pruners, ranking, resume), the asynchronous Ray
driver, its live progress view and the trial workers. Knows nothing of run configs beyond the ``search:``
section; :mod:`search.stages.search` wires a run config into it."""

from search.driver.driver import Driver, DriverResult, init_ray, trial_seed
from search.driver.progress import ProgressView
from search.driver.study import (
    SearchConfig,
    build_pruner,
    build_sampler,
    check_sampler,
    enqueue_warm_start,
    fail_orphans,
    feasible_front,
    is_feasible,
    load_study,
    open_study,
    ranked_trials,
    requeue,
    resolve_storage,
)
from search.driver.workers import MergeEvalWorker, SimulatedWorker, TrialActor, WorkerInfo, WorkerSetup

__all__ = [
    "Driver",
    "DriverResult",
    "MergeEvalWorker",
    "ProgressView",
    "SearchConfig",
    "SimulatedWorker",
    "TrialActor",
    "WorkerInfo",
    "WorkerSetup",
    "build_pruner",
    "build_sampler",
    "check_sampler",
    "enqueue_warm_start",
    "fail_orphans",
    "feasible_front",
    "is_feasible",
    "init_ray",
    "load_study",
    "open_study",
    "ranked_trials",
    "requeue",
    "resolve_storage",
    "trial_seed",
]
