"""The asynchronous search driver: one process does Optuna ask/tell, Ray actors run the trials.

Contract of a trial worker (the object an actor keeps; it is built once per actor by ``worker_factory()``)::

    worker.setup() -> {"stages": int, ...}          # load source models etc.; called once per actor
    worker.run_stage(trial_number, params, seed, stage) -> {
        "value": float | list[float],               # objective value(s) after this stage
        "items": int,                               # items evaluated so far (the pruner's step)
        "attrs": {str: JSON},                       # user attributes (per-task scores, stderr, sha256, ...)
        "constraints": {str: float},                # optional; <= 0 is feasible (set on the trial at the end)
    }

Stages run one after the other on the *same* actor (the merged model stays resident between them). After each
stage the driver reports the value with ``step = items`` and asks the pruner; a pruned trial is ``PRUNED``. A
worker that raises fails its trial (reason in the ``fail_reason`` user attribute); a worker process that dies
fails its trial too and the actor is replaced. Both re-queue the parameters up to ``max_retries`` times. Ray
never re-runs anything by itself (``max_restarts=0``, ``max_task_retries=0``).

The driver is **asynchronous**: the moment a trial finishes on an actor, a new one is asked and started there.
Ctrl-C stops asking and lets the running trials finish; a second Ctrl-C fails (and re-queues) them and returns.
"""

from __future__ import annotations

import math
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.study import ATTR_ATTEMPT, ATTR_FAIL_REASON, ATTR_SEED, ATTR_WORKER, is_feasible, ranked_trials, requeue

__all__ = ["Driver", "DriverResult", "MergeEvalWorker", "SimulatedWorker", "init_ray", "trial_seed"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_seed(base_seed: int, trial_number: int) -> int:
    """The merge seed of a fresh trial: a fixed function of the run seed and the trial number."""
    return (base_seed * 1_000_003 + trial_number * 7_919 + 1) % (2**31 - 1)


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Start a private local Ray (default) or join the cluster at ``address``; no-op if already up."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False)


class _Actor:
    """Body of the Ray actor: keeps one worker (and its loaded models) for its whole life."""

    def __init__(self, worker_factory: Callable[[], Any]):
        self.worker = worker_factory()

    def setup(self) -> dict:
        import ray

        info = dict(self.worker.setup())
        ctx = ray.get_runtime_context()
        info.update(pid=os.getpid(), node=ray.util.get_node_ip_address(), node_id=ctx.get_node_id()[:12])
        return info

    def run_stage(self, trial_number: int, params: dict, seed: int, stage: int) -> dict:
        t0 = time.perf_counter()
        out = dict(self.worker.run_stage(trial_number, params, seed, stage))
        out["busy_seconds"] = time.perf_counter() - t0
        return out


@dataclass
class _Slot:
    index: int
    actor: Any = None
    info: dict = field(default_factory=dict)
    ready: bool = False
    spawned: int = 0
    ready_at: float = 0.0


@dataclass
class _Running:
    trial: optuna.Trial
    params: dict
    seed: int
    stage: int
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
    best_feasible: bool | None = None  # False: no COMPLETE trial meets objective.constraints

    @property
    def busy_fraction(self) -> float:
        """Share of the workers' ready time spent running trial stages."""
        return self.busy_seconds / self.available_seconds if self.available_seconds else 0.0


class Driver:
    """Run trials of ``study`` on ``workers`` Ray actors until ``n_trials`` trials are finished.

    ``suggest(trial) -> params`` samples a trial's parameters (it runs in the driver: enqueued parameters are
    taken as they are). ``describe(params) -> str``, if given, returns the trial's mergekit YAML, stored as the
    ``recipe`` user attribute and uploaded as an artifact to ``artifact_store``. ``on_submit(number, stage,
    worker_info)`` is called after each stage is started (tests use it to kill a worker mid-trial).
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
        multi_fidelity: bool = True,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        describe: Callable[[dict], str] | None = None,
        artifact_store: Any = None,
        artifact_dir: str | Path | None = None,
        progress: bool = True,
        on_submit: Callable[[int, int, dict], None] | None = None,
        poll_seconds: float = 0.5,
    ):
        self.study = study
        self.worker_factory = worker_factory
        self.suggest = suggest
        self.n_trials = n_trials
        self.workers = workers
        self.seed = seed
        self.max_retries = max_retries
        self.multi_fidelity = multi_fidelity
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.describe = describe
        self.artifact_store = artifact_store
        self.artifact_dir = Path(artifact_dir) if artifact_dir else None
        self.progress = progress
        self.on_submit = on_submit
        self.poll_seconds = poll_seconds
        self.multi_objective = len(study.directions) > 1
        self._pending: dict[Any, tuple[str, _Slot, _Running | None]] = {}
        self._slots = [_Slot(i) for i in range(workers)]
        self._stop = 0  # 1: stop asking (first Ctrl-C), 2: abort running trials (second Ctrl-C)
        self.result = DriverResult(workers=workers)

    # ---------------------------------------------------------------- actors
    def _spawn(self, slot: _Slot) -> None:
        import ray

        cls = ray.remote(_Actor).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                          max_restarts=0, max_task_retries=0)
        slot.actor, slot.ready, slot.info = cls.remote(self.worker_factory), False, {}
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
    def _finished_in_study(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=FINISHED))

    def _running(self) -> list[_Running]:
        return [run for kind, _, run in self._pending.values() if kind == "stage"]

    # ---------------------------------------------------------------- trials
    def _start_trial(self, slot: _Slot) -> None:
        trial = self.study.ask()
        attrs = trial.user_attrs
        seed = int(attrs.get(ATTR_SEED, trial_seed(self.seed, trial.number)))
        if ATTR_ATTEMPT not in attrs:
            trial.set_user_attr(ATTR_ATTEMPT, 0)
        trial.set_user_attr(ATTR_SEED, seed)
        params = self.suggest(trial)
        trial.set_user_attr(ATTR_WORKER, f"w{slot.index}:{slot.info.get('pid')}")
        trial.set_user_attr("node", f"{slot.info.get('node')}/{slot.info.get('node_id')}")
        if self.describe is not None:
            self._record_recipe(trial, params)
        stages = int(slot.info.get("stages", 1))
        first = 0 if self.multi_fidelity else stages - 1
        self._submit(slot, _Running(trial, params, seed, first))

    def _record_recipe(self, trial: optuna.Trial, params: dict) -> None:
        text = self.describe(params)
        trial.set_user_attr("recipe", text)
        if self.artifact_store is not None and self.artifact_dir is not None:
            self.artifact_dir.mkdir(parents=True, exist_ok=True)
            path = self.artifact_dir / f"trial-{trial.number:05d}.yaml"
            path.write_text(text, encoding="utf-8")
            art = optuna.artifacts.upload_artifact(artifact_store=self.artifact_store, file_path=str(path),
                                                   study_or_trial=trial, mimetype="text/yaml")
            trial.set_user_attr("recipe_artifact_id", art)
            path.unlink()

    def _submit(self, slot: _Slot, run: _Running) -> None:
        ref = slot.actor.run_stage.remote(run.trial.number, run.params, run.seed, run.stage)
        self._pending[ref] = ("stage", slot, run)
        if self.on_submit is not None:
            self.on_submit(run.trial.number, run.stage, dict(slot.info))

    def _fail(self, run: _Running, reason: str) -> None:
        run.trial.set_user_attr(ATTR_FAIL_REASON, reason[-2000:])
        frozen = self.study.tell(run.trial, state=TrialState.FAIL)
        self.result.failed += 1
        if requeue(self.study, frozen, self.max_retries):
            self.result.requeued += 1

    def _on_stage(self, slot: _Slot, run: _Running, out: dict) -> None:
        trial = run.trial
        self.result.busy_seconds += float(out.get("busy_seconds", 0.0))
        items = int(out["items"])
        self.result.items += max(0, items - run.items)
        run.items = items
        for k, v in dict(out.get("attrs") or {}).items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("items_evaluated", items)
        trial.set_user_attr("stage", run.stage)
        value = out["value"]
        last = run.stage >= int(slot.info.get("stages", 1)) - 1
        if not last and not self.multi_objective:
            trial.report(float(value), step=items)
            if trial.should_prune():
                self.study.tell(trial, state=TrialState.PRUNED)
                self.result.pruned += 1
                return
        if not last and self._stop < 2:
            self._submit(slot, _Running(trial, run.params, run.seed, run.stage + 1, items, run.started))
            return
        trial.set_user_attr("trial_seconds", round(time.perf_counter() - run.started, 3))
        for key, c in dict(out.get("constraints") or {}).items():  # feasible when <= 0 (samplers, best_trial)
            trial.set_constraint(key, c)
        self.study.tell(trial, values=value)
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
        self._on_stage(slot, run, out)

    # ---------------------------------------------------------------- loop
    def _on_sigint(self, *_: Any) -> None:
        self._stop += 1

    def run(self) -> DriverResult:
        """Run until ``n_trials`` trials of the study are finished (COMPLETE or PRUNED)."""
        import ray

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        old = signal.signal(signal.SIGINT, self._on_sigint) if _main_thread() else None
        view = _Progress(self) if self.progress else None
        t_first, shown = None, 0.0
        try:
            for slot in self._slots:
                self._spawn(slot)
            while True:
                if self._stop >= 2:
                    self._abort()
                    break
                finished, running = self._finished_in_study(), len(self._running())
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
            for slot in self._slots:
                self._kill(slot)
            self._pending.clear()
            self.result.wall_seconds = time.perf_counter() - t_first if t_first else 0.0
            self.result.interrupted = self._stop > 0
            self._fill_best()
            if view:
                view.close()
        return self.result

    def _abort(self) -> None:
        for run in self._running():
            self._fail(run, "interrupted: the search was stopped with a second Ctrl-C")

    def _fill_best(self) -> None:
        ranked = ranked_trials(self.study)
        if not ranked:
            return
        best = ranked[0]  # feasible first; multi-objective: the best primary value
        self.result.best_value = list(best.values) if self.multi_objective else best.value
        self.result.best_number, self.result.best_params = best.number, dict(best.params)
        self.result.best_feasible = is_feasible(best)


def _short(err: BaseException) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else type(err).__name__


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class _Progress:
    """Live rich view: trial counts, best so far, elapsed and ETA; a summary table when closed."""

    def __init__(self, driver: Driver):
        from rich.console import Console
        from rich.live import Live

        self.driver = driver
        self.t0 = time.perf_counter()
        self.done0 = driver._finished_in_study()
        self.console = Console(stderr=True)
        self.live = Live(self._render(), console=self.console, auto_refresh=False, transient=True)
        self.live.start()

    def _counts(self) -> dict[str, int]:
        counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        for t in self.driver.study.get_trials(deepcopy=False):
            if t.state.name.lower() in counts:
                counts[t.state.name.lower()] += 1
        counts["running"] = len(self.driver._running())
        return counts

    def _best(self) -> tuple[str, str]:
        d = self.driver
        ranked = ranked_trials(d.study)
        if not ranked:
            return "-", "-"
        best = ranked[0]
        value = [round(v, 4) for v in best.values] if d.multi_objective else round(best.value, 4)
        if not is_feasible(best):
            value = f"{value} (no trial meets the constraints yet)"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        return f"#{best.number}: {value}", params

    def _render(self):
        from rich.table import Table

        d, c = self.driver, self._counts()
        elapsed = time.perf_counter() - self.t0
        done = d._finished_in_study() - self.done0
        left = max(0, d.n_trials - d._finished_in_study())
        eta = f"{elapsed / done * left:.0f}s" if done else "?"
        best, params = self._best()
        table = Table(title=f"merge-search: study {d.study.study_name}", show_header=False)
        table.add_row("trials", f"complete {c['complete']}  running {c['running']}  failed {c['fail']}  "
                                f"pruned {c['pruned']}  (target {d.n_trials} finished)")
        table.add_row("best", best)
        table.add_row("params", params)
        table.add_row("time", f"elapsed {elapsed:.0f}s  ETA {eta}"
                      + ("  [stopping: waiting for running trials]" if d._stop == 1 else ""))
        return table

    def update(self) -> None:
        self.live.update(self._render(), refresh=True)

    def close(self) -> None:
        self.live.stop()
        self.console.print(self.summary())

    def summary(self):
        from rich.table import Table

        r = self.driver.result
        table = Table(title="search summary")
        for col in ("complete", "pruned", "failed", "re-queued", "items evaluated", "busy", "wall", "best"):
            table.add_column(col)
        best, _ = self._best()
        table.add_row(str(r.complete), str(r.pruned), str(r.failed), str(r.requeued), str(r.items),
                      f"{r.busy_fraction:.0%}", f"{r.wall_seconds:.1f}s", best)
        return table


class SimulatedWorker:
    """A cheap synthetic worker (tests, ``bench/search_bench.py``): no models, a known optimum.

    The value of stage ``s`` is ``1 - sum((p - 0.5)^2)`` plus a small stage-dependent term; a stage takes
    ``seconds`` (times a per-trial factor in ``[1 - jitter, 1 + jitter]``), evaluates ``items[s]`` items
    cumulatively, and raises for trial numbers in ``raise_on``.
    """

    def __init__(self, *, items: tuple[int, ...] = (50, 200), seconds: float = 0.0, jitter: float = 0.0,
                 raise_on: tuple[int, ...] = ()):
        self.items, self.seconds, self.jitter, self.raise_on = tuple(items), seconds, jitter, set(raise_on)

    def setup(self) -> dict:
        return {"stages": len(self.items)}

    def run_stage(self, trial_number: int, params: dict, seed: int, stage: int) -> dict:
        import random

        if trial_number in self.raise_on:
            raise RuntimeError(f"simulated failure of trial {trial_number}")
        rng = random.Random(seed * 31 + stage)
        factor = 1 + self.jitter * (2 * random.Random(seed).random() - 1)
        started = time.time()
        time.sleep(self.seconds * factor)
        base = 1 - sum((float(v) - 0.5) ** 2 for v in params.values())
        noise = 0.05 * rng.random() / math.sqrt(self.items[stage])
        return {"value": base + noise, "items": self.items[stage],
                "attrs": {"scores": {"sim": base + noise}, "started": started, "ended": time.time()}}


class MergeEvalWorker:
    """The real worker: merges a trial's recipe into a resident model and scores it stage by stage.

    ``config`` is the validated run config (``space``, ``objective``, ``device``). The source models and the
    lm-eval tasks are loaded once in :meth:`setup`; the merged model of the current trial stays resident
    between its stages, and each stage only evaluates the documents the previous one did not cover.
    """

    def __init__(self, config: Any):
        self.config = config
        self._trial: tuple[int, Any, Any, Any] | None = None  # (number, merge result, lm, last StageResult)

    def setup(self) -> dict:
        from objectives.objective import Objective
        from search.merge import ResidentMerger

        self.merger = ResidentMerger.from_space(self.config.space, device=self.config.device)
        self.objective = Objective(self.config.objective)
        return {"stages": len(self.config.objective.stages), "device": self.config.device}

    def run_stage(self, trial_number: int, params: dict, seed: int, stage: int) -> dict:

        from objectives.lmeval import make_lm
        from objectives.objective import constraint_values
        from search.space import to_merge_config

        attrs: dict[str, Any] = {}
        if self._trial is None or self._trial[0] != trial_number:
            self._trial = None
            merged = self.merger.merge(to_merge_config(self.config.space, params), seed)
            lm = make_lm(merged.model, merged.tokenizer, batch_size=self.config.objective.batch_size)
            self._trial = (trial_number, merged, lm, None)
            # CPU merges depend on torch's thread count (reduction order): record it so that an export
            # reproduces the scored weights with OMP_NUM_THREADS=<merge_threads> mergekit-yaml ...
            attrs.update(weights_sha256=merged.weights_sha256, merge_seconds=round(merged.seconds, 3),
                         merge_device=merged.device, merge_threads=merged.threads, eval_seconds=0.0)
        number, merged, lm, prev = self._trial
        t0 = time.perf_counter()
        res = self.objective.score(merged.model, merged.tokenizer, stage=stage, previous=prev, lm=lm)
        self._trial = (number, merged, lm, res)
        attrs.update(scores=res.tasks, stderr=res.stderr, items_per_task=res.n,
                     eval_seconds=round(time.perf_counter() - t0, 3), violations=res.violations)
        if res.secondary is not None:
            attrs["secondary"] = res.secondary
        value: Any = [res.score, res.secondary] if self.config.objective.secondary else res.score
        return {"value": value, "items": res.items, "attrs": attrs,
                "constraints": constraint_values(self.config.objective, res)}

