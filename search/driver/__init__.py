"""The search engine: the Optuna study (storage, samplers, pruners, ranking, resume), the asynchronous Ray
driver, the study's lease (one driver per study, :mod:`search.driver.lease`), its live progress view and the
worker protocol (:class:`RungReport`, :class:`TrialActor`).

It knows Optuna and Ray, not merges: what a trial does is a worker's business (the search stage's
:class:`search.stages.trial_worker.MergeEvalWorker` merges and scores a candidate), and of the run config it
reads only the ``search:`` section (:class:`SearchConfig`); :mod:`search.stages.optimize` wires a run config
into it. Test doubles live in :mod:`search.driver.testing`, which nothing here imports."""

from search.driver.driver import Driver, DriverResult, init_ray, trial_seed
from search.driver.lease import LeaseHolder, StudyLease, lease_holder
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
from search.driver.workers import RungReport, TrialActor, WorkerInfo, WorkerSetup

__all__ = [
    "Driver",
    "DriverResult",
    "LeaseHolder",
    "ProgressView",
    "RungReport",
    "SearchConfig",
    "StudyLease",
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
    "lease_holder",
    "load_study",
    "open_study",
    "ranked_trials",
    "requeue",
    "resolve_storage",
    "trial_seed",
]
