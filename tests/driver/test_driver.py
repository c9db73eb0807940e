"""The asynchronous driver with a cheap simulated worker: concurrency, faults, pruning, resume, Ctrl-C."""

from __future__ import annotations

import functools
import itertools
import os
import signal

import pytest
from optuna.trial import TrialState

from search.driver import Driver
from search.driver.study import SearchConfig, enqueue_warm_start, fail_orphans, open_study
from search.driver.testing import SimulatedWorker
from search.rundir import TrialAttr


pytestmark = pytest.mark.usefixtures("ray_local")  # the session's one in-process Ray (tests/conftest.py)


def suggest(trial):
    return {"a": trial.suggest_float("a", 0, 1), "b": trial.suggest_float("b", 0, 1)}


def make(tmp_path, *, pruner="none", n_trials=6, workers=2, worker=None, max_retries=1, on_submit=None,
         seed=0, max_failures_in_a_row=5):
    cfg = SearchConfig(pruner=pruner, n_trials=n_trials, workers=workers, max_retries=max_retries)
    study = open_study(cfg, name="t", run_dir=tmp_path, seed=seed)
    driver = Driver(study, worker_factory=worker or functools.partial(SimulatedWorker, seconds=0.05),
                    suggest=suggest, n_trials=n_trials, workers=workers, seed=seed, max_retries=max_retries,
                    num_cpus=0.5, on_submit=on_submit, progress=False, poll_seconds=0.1,
                    max_failures_in_a_row=max_failures_in_a_row)
    return study, driver


def states(study):
    return [t.state for t in study.get_trials(deepcopy=False)]


def test_two_workers_run_trials_concurrently(tmp_path):
    study, driver = make(tmp_path, n_trials=4, worker=functools.partial(SimulatedWorker, items=(100,),
                                                                         seconds=1.0))
    res = driver.run()
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert res.complete == 4 and len(trials) == 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # two actor processes
    spans = sorted((t.user_attrs["started"], t.user_attrs["ended"]) for t in trials)
    overlaps = sum(1 for (s0, e0), (s1, e1) in itertools.pairwise(spans) if s1 < e0)
    assert overlaps >= 2  # trials ran side by side, not one after the other
    assert all(isinstance(t.user_attrs["seed"], int) for t in trials)


def test_a_search_that_cannot_succeed_stops_with_the_reason(tmp_path):
    """Every trial fails the same way (as a NaN candidate would): the driver stops after K in a row instead of
    asking forever, and the study stays resumable (no trial left running)."""
    worker = functools.partial(SimulatedWorker, raise_on=tuple(range(1000)))
    study, driver = make(tmp_path, n_trials=4, worker=worker, max_retries=1, max_failures_in_a_row=4)
    res = driver.run()
    assert res.stopped and "simulated failure of trial" in res.stopped and "4 trials" in res.stopped
    assert not res.interrupted and res.complete == 0
    assert 4 <= res.failed <= 4 + 2  # the trials still running when it gave up finish (and fail) too
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_failures_in_a_row_reset_when_a_trial_finishes(tmp_path):
    worker = functools.partial(SimulatedWorker, raise_on=(0, 1, 3, 4, 6, 7))  # never 3 failures in a row
    study, driver = make(tmp_path, n_trials=4, workers=1, worker=worker, max_retries=0, max_failures_in_a_row=3)
    res = driver.run()
    assert res.stopped is None and res.complete == 4 and res.failed == 6


def test_raising_worker_fails_trial_and_requeues_params(tmp_path):
    worker = functools.partial(SimulatedWorker, raise_on=(1,))
    study, driver = make(tmp_path, n_trials=4, worker=worker, max_retries=1)
    res = driver.run()
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert res.failed == 1 and res.requeued == 1
    assert [t.number for t in failed] == [1]
    assert "simulated failure" in failed[0].user_attrs["fail_reason"]
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == failed[0].params
    assert retry[0].user_attrs["seed"] == failed[0].user_attrs["seed"] and retry[0].state == TrialState.COMPLETE
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4


def test_killed_worker_fails_trial_is_replaced_and_search_completes(tmp_path):
    killed = []

    def kill_mid_trial(number, rung, info):
        if number == 2 and rung == 1 and not killed:
            killed.append(info.pid)
            os.kill(info.pid, signal.SIGKILL)

    # long enough trials that the replacement actor (a few seconds to start under load) still gets work
    worker = functools.partial(SimulatedWorker, items=(50, 200), seconds=1.0)
    study, driver = make(tmp_path, n_trials=8, worker=worker, on_submit=kill_mid_trial)
    res = driver.run()
    assert killed
    t2 = study.trials[2]
    assert t2.state == TrialState.FAIL and "worker died" in t2.user_attrs["fail_reason"]
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 2]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == t2.params
    pids = {t.user_attrs["worker"].split(":")[1] for t in study.trials}
    assert str(killed[0]) in pids and len(pids) == 3  # the dead actor was replaced by a fresh process
    assert res.complete == 8 and len(study.get_trials(states=(TrialState.COMPLETE,))) == 8


def test_no_retry_beyond_max_retries(tmp_path):
    worker = functools.partial(SimulatedWorker, raise_on=(0, 1, 2, 3))  # trial 0 fails, retry 2/3 fail too
    study, driver = make(tmp_path, n_trials=2, workers=1, worker=worker, max_retries=1)
    driver.run()
    first = study.trials[0]
    chain = [t for t in study.trials if t.params == first.params]
    assert [t.user_attrs["attempt"] for t in chain] == [0, 1]  # one retry, then given up
    assert all(t.state == TrialState.FAIL for t in chain)


def test_pruning_lowers_items_evaluated(tmp_path):
    worker = functools.partial(SimulatedWorker, items=(20, 100, 400))
    _, nop = make(tmp_path / "nop", pruner="none", n_trials=12, worker=worker, seed=3)
    _, sha = make(tmp_path / "sha", pruner="successive_halving", n_trials=12, worker=worker, seed=3)
    r_nop, r_sha = nop.run(), sha.run()
    assert r_nop.pruned == 0 and r_nop.items == 12 * 400
    assert r_sha.pruned > 0 and r_sha.items < r_nop.items
    pruned = [t for t in sha.study.trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs["items_evaluated"] < 400 for t in pruned)
    assert all(t.intermediate_values for t in pruned)  # steps are items evaluated
    assert set(pruned[0].intermediate_values) <= {20, 100}
    assert {t.user_attrs["rung"] for t in pruned} <= {0, 1}  # the last rung a trial reached
    assert {t.user_attrs["rung"] for t in sha.study.get_trials(states=(TrialState.COMPLETE,))} == {2}


@pytest.mark.parametrize("sampler", ["tpe", "gp", "cmaes", "random", "nsgaii"])
def test_every_sampler_runs_a_warm_started_search_with_hyperband(tmp_path, sampler):
    cfg = SearchConfig(sampler=sampler, pruner="hyperband", n_trials=10, n_startup_trials=3, workers=2)
    warm = {"a": 0.2, "b": 0.7}
    study = open_study(cfg, name="t", run_dir=tmp_path, seed=0, x0=warm)
    assert enqueue_warm_start(study, [warm], seed=0) == 1
    driver = Driver(study, worker_factory=functools.partial(SimulatedWorker, items=(20, 100, 400)),
                    suggest=suggest, n_trials=10, workers=2, seed=0, num_cpus=0.5, progress=False,
                    poll_seconds=0.05)
    res = driver.run()
    assert res.failed == 0 and res.complete + res.pruned == 10 and res.complete >= 1
    trials = study.get_trials(deepcopy=False)
    assert trials[0].params == warm and trials[0].user_attrs["warm_start"] == 0
    assert all(0 <= v <= 1 for t in trials for v in t.params.values())
    # the sampler proposes anew (optuna 5.1's GP sampler may re-propose a boundary optimum once or twice)
    assert len({tuple(sorted(t.params.items())) for t in trials}) >= len(trials) - (3 if sampler == "gp" else 0)
    assert all(t.intermediate_values for t in trials if t.state == TrialState.PRUNED)
    assert res.best_number == max((t for t in trials if t.state == TrialState.COMPLETE),
                                  key=lambda t: t.value).number


def test_resume_fails_orphans_and_keeps_warm_start_once(tmp_path):
    cfg = SearchConfig(n_trials=3, pruner="none")
    warm = [{"a": 0.5, "b": 0.5}]
    study = open_study(cfg, name="t", run_dir=tmp_path, seed=0)
    assert enqueue_warm_start(study, warm, 0) == 1
    orphan = study.ask()  # the warm-start trial, left RUNNING as by a SIGKILLed driver
    suggest(orphan)
    again = open_study(cfg, name="t", run_dir=tmp_path, seed=0)
    assert enqueue_warm_start(again, warm, 0) == 0
    assert fail_orphans(again, max_retries=1) == [orphan.number]
    assert again.trials[0].state == TrialState.FAIL and "orphaned" in again.trials[0].user_attrs["fail_reason"]
    driver = Driver(again, worker_factory=SimulatedWorker, suggest=suggest, n_trials=3, workers=2,
                    num_cpus=0.5, progress=False)
    driver.run()
    done = again.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3 and sum(t.params == warm[0] for t in again.trials) == 2  # orphan + its retry
    assert not again.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_orphans_killed_before_dispatch_lose_no_queued_recipe(tmp_path):
    """A driver can die between ask and dispatch: only dispatched or queued parameters are queued again."""
    cfg = SearchConfig(n_trials=3, pruner="none", max_retries=1)
    study = open_study(cfg, name="t", run_dir=tmp_path, seed=0)
    enqueue_warm_start(study, [{"a": 0.5, "b": 0.5}], 0)
    queued = study.ask()  # the hand recipe, asked but not yet sampled or dispatched
    sampled = study.ask()
    sampled.suggest_float("a", 0, 1)  # killed half-way through sampling
    ran = study.ask()
    params = suggest(ran)
    ran.set_user_attr("worker", "w0:1")  # dispatched (Driver._start_trial)
    assert fail_orphans(study, max_retries=1) == [queued.number, sampled.number, ran.number]
    trials = study.get_trials()
    assert all(trials[n].state == TrialState.FAIL for n in (0, 1, 2))
    assert "proposes anew" in trials[1].user_attrs["fail_reason"]
    again = {t.user_attrs["retry_of"]: t for t in study.get_trials(states=(TrialState.WAITING,))}
    assert sorted(again) == [queued.number, ran.number]  # nothing is re-queued for the half-sampled trial
    assert again[0].system_attrs["fixed_params"] == {"a": 0.5, "b": 0.5}
    assert again[0].user_attrs["warm_start"] == 0 and again[0].user_attrs["attempt"] == 0  # nothing ran
    assert again[2].system_attrs["fixed_params"] == params and again[2].user_attrs["attempt"] == 1


def test_sigterm_stops_at_once_and_leaves_no_trial_running(tmp_path):
    def terminate(number, rung, info):
        if number == 2 and rung == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    worker = functools.partial(SimulatedWorker, items=(50, 100), seconds=0.3)
    study, driver = make(tmp_path, n_trials=20, worker=worker, on_submit=terminate)
    before = signal.getsignal(signal.SIGTERM)
    res = driver.run()
    assert res.interrupted and signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    assert not study.get_trials(states=(TrialState.RUNNING,))
    ran = [t for t in study.trials if t.state != TrialState.WAITING]
    assert len(ran) <= 4  # no trial was started after the signal (trials 0-1 and the 2 workers' last two)
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert all(TrialAttr.RETRY_OF in t.user_attrs for t in queued)  # only the stopped trials, for a resume
    stopped = study.trials[2]
    assert stopped.state == TrialState.FAIL and "SIGTERM" in stopped.user_attrs["fail_reason"]


def test_ctrl_c_stops_asking_and_lets_running_trials_finish(tmp_path):
    def interrupt(number, rung, info):
        if number == 2 and rung == 0:
            os.kill(os.getpid(), signal.SIGINT)

    worker = functools.partial(SimulatedWorker, items=(50, 100), seconds=0.3)
    study, driver = make(tmp_path, n_trials=20, worker=worker, on_submit=interrupt)
    res = driver.run()
    assert res.interrupted
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert 3 <= len(study.trials) <= 4  # asked nothing after the interrupt
    assert study.trials[2].state == TrialState.COMPLETE  # the running trial finished all its rungs


def test_a_heartbeat_that_raises_stops_the_driver_at_its_next_poll(tmp_path):
    """A study lease taken over by another driver (search.driver.lease) raises in the heartbeat: this driver
    stops there, its running trials are failed and re-queued (not left RUNNING for nobody to resume)."""
    from objectives.errors import UserError

    study, driver = make(tmp_path, n_trials=20, worker=functools.partial(SimulatedWorker, seconds=0.3))

    def heartbeat():  # taken over mid-search: once a trial finished while others run
        states = [t.state for t in study.get_trials(deepcopy=False)]
        if TrialState.COMPLETE in states and TrialState.RUNNING in states:
            raise UserError("taken over")

    driver.heartbeat = heartbeat
    with pytest.raises(UserError, match="taken over"):
        driver.run()
    assert len(study.trials) < 20
    assert not study.get_trials(states=(TrialState.RUNNING,))  # its running trials failed, not left running
    stopped = study.get_trials(states=(TrialState.FAIL,))
    assert stopped and all("lost lease" in t.user_attrs["fail_reason"] for t in stopped)
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["retry_of"] for t in queued) == sorted(t.number for t in stopped)
