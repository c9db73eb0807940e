"""The asynchronous search driver: one process does Optuna ask/tell, Ray actors run the trials.

Contract of a trial worker (the object an actor keeps; it is built once per actor by ``worker_factory()``,
see :mod:`search.driver.workers`)::

    worker.setup() -> WorkerSetup                   # load models etc.; called once per actor
    worker.run_rung(trial_number, params, seed, rung) -> RungReport   # search.driver.workers.RungReport

A trial's rungs (fidelity levels of successive halving) run one after the other on the *same* actor (what the
worker loaded for the trial stays resident between them). After each rung the driver records the report's
``attrs`` as user attributes, reports the value (or the report's ``pruner_value``, e.g. an estimate) with
``step = items`` and asks the pruner; a pruned trial is ``PRUNED``. A
worker that raises fails its trial (reason in the ``fail_reason`` user attribute); a worker process that dies
fails its trial too and the actor is replaced. Both re-queue the parameters up to ``max_retries`` times; when
``max_failures_in_a_row`` trials in a row fail for the same reason (numbers aside), the search cannot succeed:
the driver stops asking, lets running trials finish and returns with ``DriverResult.stopped`` saying why. Ray
never re-runs anything by itself (``max_restarts=0``, ``max_task_retries=0``).

The driver is **asynchronous**: the moment a trial finishes on an actor, a new one is asked and started there.
Ctrl-C stops asking and lets the running trials finish; a second Ctrl-C fails (and re-queues) them and returns.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.driver.progress import ProgressView
from search.driver.study import is_feasible, ranked_trials, requeue
from search.driver.workers import RungReport, TrialActor, WorkerInfo
from search.rundir import TrialAttr

__all__ = ["Driver", "DriverResult", "init_ray", "trial_seed"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_seed(base_seed: int, trial_number: int) -> int:
    """The seed of a fresh trial (what its worker gets): a fixed function of the run seed and the trial number."""
    return (base_seed * 1_000_003 + trial_number * 7_919 + 1) % (2**31 - 1)


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Start a private local Ray (default) or join the cluster at ``address``; no-op if already up."""
    import ray

    if ray.is_initialized():
        return
    # Ray's start-up notices only with ``merge-search --verbose`` (MERGE_SEARCH_VERBOSE)
    quiet = {"logging_level": logging.INFO if os.environ.get("MERGE_SEARCH_VERBOSE") else logging.ERROR}
    if address:
        ray.init(address=address, log_to_driver=False, **quiet)
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, **quiet)


@dataclass
class _Slot:
    index: int
    actor: Any = None
    info: WorkerInfo | None = None
    ready: bool = False
    spawned: int = 0
    ready_at: float = 0.0


@dataclass
class _Running:
    trial: optuna.Trial
    params: dict
    seed: int
    rung: int
    items: int = 0
    started: float = field(default_factory=time.perf_counter)


@dataclass
class DriverResult:
    """What one :meth:`Driver.run` did (counts are of this run; ``best_*`` of the whole study: the first of
    :func:`search.study.ranked_trials`, i.e. feasible first, then the best primary value)."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    requeued: int = 0
    items: int = 0
    busy_seconds: float = 0.0
    available_seconds: float = 0.0  # summed over workers: from "models loaded" to the end (or its death)
    wall_seconds: float = 0.0
    workers: int = 0
    interrupted: bool = False
    best_number: int | None = None
    best_value: Any = None
    best_params: dict | None = None
    best_feasible: bool | None = None  # False: no COMPLETE trial meets its constraints
    stopped: str | None = None  # why the driver gave up (the same failure, trial after trial)

    @property
    def busy_fraction(self) -> float:
        """Share of the workers' ready time spent running trial rungs."""
        return self.busy_seconds / self.available_seconds if self.available_seconds else 0.0


class Driver:
    """Run trials of ``study`` on ``workers`` Ray actors until ``n_trials`` trials are finished.

    ``suggest(trial) -> params`` samples a trial's parameters (it runs in the driver: enqueued parameters are
    taken as they are). ``describe(params) -> str``, if given, returns the trial's recipe as YAML (the search
    stage: its mergekit YAML), stored as the ``recipe`` user attribute and uploaded as an artifact to
    ``artifact_store``. ``on_submit(number, rung, worker_info)`` is called after each rung is started with the
    :class:`WorkerInfo` of its actor (tests use it to kill a worker mid-trial).
    """

    def __init__(
        self,
        study: optuna.Study,
        *,
        worker_factory: Callable[[], Any],
        suggest: Callable[[optuna.Trial], dict],
        n_trials: int,
        workers: int,
        seed: int = 0,
        max_retries: int = 1,
        max_failures_in_a_row: int = 5,
        multi_fidelity: bool = True,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        describe: Callable[[dict], str] | None = None,
        artifact_store: Any = None,
        artifact_dir: str | Path | None = None,
        progress: bool = True,
        on_submit: Callable[[int, int, WorkerInfo], None] | None = None,
        poll_seconds: float = 0.5,
        heartbeat: Callable[[], None] | None = None,
    ):
        self.study = study
        self.worker_factory = worker_factory
        self.suggest = suggest
        self.n_trials = n_trials
        self.workers = workers
        self.seed = seed
        self.max_retries = max_retries
        self.max_failures_in_a_row = max_failures_in_a_row
        self._failures: list[str] = []  # reasons of the trials that failed since the last one that finished
        self.multi_fidelity = multi_fidelity
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.describe = describe
        self.artifact_store = artifact_store
        self.artifact_dir = Path(artifact_dir) if artifact_dir else None
        self.progress = progress
        self.on_submit = on_submit
        self.poll_seconds = poll_seconds
        self.heartbeat = heartbeat  # called on every poll (a study lease renews itself there; it may raise)
        self.multi_objective = len(study.directions) > 1
        self._pending: dict[Any, tuple[str, _Slot, _Running | None]] = {}
        self._slots = [_Slot(i) for i in range(workers)]
        self._stop = 0  # 1: stop asking (first Ctrl-C), 2: abort running trials (second Ctrl-C)
        self.result = DriverResult(workers=workers)

    # ---------------------------------------------------------------- actors
    def _spawn(self, slot: _Slot) -> None:
        import ray

        cls = ray.remote(TrialActor).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                          max_restarts=0, max_task_retries=0)
        slot.actor, slot.ready, slot.info = cls.remote(self.worker_factory), False, None
        slot.spawned += 1
        self._pending[slot.actor.setup.remote()] = ("setup", slot, None)

    def _kill(self, slot: _Slot) -> None:
        import ray

        if slot.actor is not None:
            ray.kill(slot.actor, no_restart=True)
        if slot.ready:
            self.result.available_seconds += time.perf_counter() - slot.ready_at
        slot.actor, slot.ready = None, False

    # ---------------------------------------------------------------- counting
    def finished_in_study(self) -> int:
        """COMPLETE + PRUNED trials of the whole study (what ``n_trials`` counts)."""
        return len(self.study.get_trials(deepcopy=False, states=FINISHED))

    def running_trials(self) -> list[_Running]:
        """The trials whose rung is running on a worker now."""
        return [run for kind, _, run in self._pending.values() if kind == "rung"]

    @property
    def stopping(self) -> bool:
        """True after the first Ctrl-C: no new trials, running ones finish."""
        return self._stop == 1

    # ---------------------------------------------------------------- trials
    def _start_trial(self, slot: _Slot) -> None:
        trial = self.study.ask()
        attrs = trial.user_attrs
        seed = int(attrs.get(TrialAttr.SEED, trial_seed(self.seed, trial.number)))
        if TrialAttr.ATTEMPT not in attrs:
            trial.set_user_attr(TrialAttr.ATTEMPT, 0)
        trial.set_user_attr(TrialAttr.SEED, seed)
        params = self.suggest(trial)
        trial.set_user_attr(TrialAttr.WORKER, f"w{slot.index}:{slot.info.pid}")
        trial.set_user_attr(TrialAttr.NODE, f"{slot.info.node}/{slot.info.node_id}")
        if self.describe is not None:
            self._record_recipe(trial, params)
        rungs = slot.info.setup.rungs
        first = 0 if self.multi_fidelity else rungs - 1
        self._submit(slot, _Running(trial, params, seed, first))

    def _record_recipe(self, trial: optuna.Trial, params: dict) -> None:
        text = self.describe(params)
        trial.set_user_attr(TrialAttr.RECIPE, text)
        if self.artifact_store is not None and self.artifact_dir is not None:
            self.artifact_dir.mkdir(parents=True, exist_ok=True)
            path = self.artifact_dir / f"trial-{trial.number:05d}.yaml"
            path.write_text(text, encoding="utf-8")
            art = optuna.artifacts.upload_artifact(artifact_store=self.artifact_store, file_path=str(path),
                                                   study_or_trial=trial, mimetype="text/yaml")
            trial.set_user_attr(TrialAttr.RECIPE_ARTIFACT, art)
            path.unlink()

    def _submit(self, slot: _Slot, run: _Running) -> None:
        ref = slot.actor.run_rung.remote(run.trial.number, run.params, run.seed, run.rung)
        self._pending[ref] = ("rung", slot, run)
        if self.on_submit is not None:
            self.on_submit(run.trial.number, run.rung, slot.info)

    def _fail(self, run: _Running, reason: str) -> None:
        run.trial.set_user_attr(TrialAttr.FAIL_REASON, reason[-2000:])
        frozen = self.study.tell(run.trial, state=TrialState.FAIL)
        self.result.failed += 1
        self._failures.append(reason)
        same = {re.sub(r"\d+", "N", r) for r in self._failures[-self.max_failures_in_a_row:]}
        if len(self._failures) >= self.max_failures_in_a_row and len(same) == 1 and self._stop < 2:
            self.result.stopped = (f"the last {self.max_failures_in_a_row} trials all failed with: "
                                   f"{_short_reason(reason)}")
            self._stop = max(self._stop, 1)
        if requeue(self.study, frozen, self.max_retries):
            self.result.requeued += 1

    def _on_rung(self, slot: _Slot, run: _Running, out: RungReport) -> None:
        trial = run.trial
        self.result.busy_seconds += out.busy_seconds
        self.result.items += max(0, out.items - run.items)
        run.items = out.items
        for k, v in out.attrs.items():
            trial.set_user_attr(k, v)
        if out.started is not None:
            trial.set_user_attr(TrialAttr.STARTED, out.started)
            trial.set_user_attr(TrialAttr.ENDED, out.ended)
        self._failures.clear()
        trial.set_user_attr(TrialAttr.ITEMS, out.items)
        trial.set_user_attr(TrialAttr.RUNG, run.rung)
        last = run.rung >= slot.info.setup.rungs - 1
        if not last and not self.multi_objective:
            trial.report(float(out.value if out.pruner_value is None else out.pruner_value), step=out.items)
            if trial.should_prune():
                self.study.tell(trial, state=TrialState.PRUNED)
                self.result.pruned += 1
                return
        if not last and self._stop < 2:
            self._submit(slot, _Running(trial, run.params, run.seed, run.rung + 1, out.items, run.started))
            return
        trial.set_user_attr(TrialAttr.TRIAL_SECONDS, round(time.perf_counter() - run.started, 3))
        for key, c in out.constraints.items():  # feasible when <= 0 (samplers, best_trial)
            trial.set_constraint(key, c)
        self.study.tell(trial, values=out.value)
        self.result.complete += 1

    def _handle(self, ref: Any) -> None:
        import ray

        kind, slot, run = self._pending.pop(ref)
        try:
            out = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # the worker raised; the actor is alive
            if kind == "setup":
                raise RuntimeError(f"worker setup failed on slot w{slot.index}: {err}") from None
            self._fail(run, f"worker raised: {_short(err)}")
            return
        except ray.exceptions.RayError as err:  # the actor process died (killed, OOM, node lost)
            if run is not None:
                self._fail(run, f"worker died ({type(err).__name__}): {_short(err)}")
            self._kill(slot)
            if slot.spawned > 3 * max(1, self.max_retries) + self.result.complete + 2:
                raise RuntimeError(f"worker slot w{slot.index} keeps dying: {_short(err)}") from None
            if self._stop == 0:
                self._spawn(slot)
            return
        if kind == "setup":
            slot.info, slot.ready, slot.ready_at = out, True, time.perf_counter()
            return
        self._on_rung(slot, run, out)

    # ---------------------------------------------------------------- loop
    def _on_sigint(self, *_: Any) -> None:
        self._stop += 1

    def _on_sigterm(self, *_: Any) -> None:
        """SIGTERM (a scheduler's preemption, ``kill``): stop now, as a second Ctrl-C does; the running trials
        are marked failed (re-queued when the search is resumed)."""
        self._stop = max(self._stop, 2)

    def run(self) -> DriverResult:
        """Run until ``n_trials`` trials of the study are finished (COMPLETE or PRUNED)."""
        import ray

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        old = signal.signal(signal.SIGINT, self._on_sigint) if _main_thread() else None
        old_term = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        view = ProgressView(self) if self.progress else None
        t_first, shown = None, 0.0
        try:
            for slot in self._slots:
                self._spawn(slot)
            while True:
                if self.heartbeat:
                    try:
                        self.heartbeat()
                    except BaseException:
                        with contextlib.suppress(Exception):  # the storage may be what failed
                            self._abort()  # this driver's running trials: failed and re-queued, not left RUNNING
                        raise
                if self._stop >= 2:
                    self._abort()
                    break
                finished, running = self.finished_in_study(), len(self.running_trials())
                if self._stop == 0:
                    busy = {id(s) for _, s, _ in self._pending.values()}
                    for slot in self._slots:
                        if slot.ready and id(slot) not in busy and finished + running < self.n_trials:
                            self._start_trial(slot)
                            running += 1
                            t_first = t_first or time.perf_counter()
                if not running and (self._stop or finished >= self.n_trials):
                    break
                ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=self.poll_seconds)
                for ref in ready:
                    self._handle(ref)
                if view and time.perf_counter() - shown > 0.5:
                    view.update()
                    shown = time.perf_counter()
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            for slot in self._slots:
                self._kill(slot)
            self._pending.clear()
            self.result.wall_seconds = time.perf_counter() - t_first if t_first else 0.0
            self.result.interrupted = self._stop > 0 and self.result.stopped is None
            self._fill_best()
            if view:
                view.close()
        return self.result

    def _abort(self) -> None:
        for run in self.running_trials():
            with contextlib.suppress(RuntimeError, ValueError):  # finished meanwhile (another driver's orphan)
                self._fail(run, "interrupted: the search was stopped (a second Ctrl-C, SIGTERM, or a lost lease)")

    def _fill_best(self) -> None:
        ranked = ranked_trials(self.study)
        if not ranked:
            return
        best = ranked[0]  # feasible first; multi-objective: the best primary value
        self.result.best_value = list(best.values) if self.multi_objective else best.value
        self.result.best_number, self.result.best_params = best.number, dict(best.params)
        self.result.best_feasible = is_feasible(best)


def _short_reason(reason: str) -> str:
    lines = [ln for ln in reason.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else reason[:300]


def _short(err: BaseException) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else type(err).__name__


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
