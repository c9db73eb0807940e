"""The search on the demo world: a two-node Ray cluster, killed workers and drivers, pruning, export.

One two-node Ray cluster (``ray start --head`` + ``ray start --address``, 1 CPU each, separate processes) is
shared by the module; every CLI search joins it with ``--address``. It is stopped (by process group) at the
end. The in-process drivers (killed worker, pruning) use the session's one local Ray (``conftest.ray_local``).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from demo_configs import free_port  # tests/demo_configs.py
from demo_configs import ray_port_args, stop_group, write_config

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _node_args() -> list[str]:
    return ["--block", "--num-cpus=1", "--disable-usage-stats", *ray_port_args()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A two-node Ray cluster on this machine; yields its address."""
    tmp = tmp_path_factory.mktemp("ray")
    temp = Path(tempfile.mkdtemp(prefix="rt"))  # short: Ray's socket paths inside must fit an AF_UNIX path
    port = free_port()
    logs = [open(tmp / "head.log", "w"), open(tmp / "node.log", "w")]  # noqa: SIM115 (closed in finally)
    head = subprocess.Popen(
        [BIN / "ray", "start", "--head", f"--port={port}", "--include-dashboard=false",
         f"--dashboard-port={free_port()}", f"--temp-dir={temp}", *_node_args()],
        env=ENV, start_new_session=True, stdout=logs[0], stderr=subprocess.STDOUT)
    procs = [head]
    try:
        address = None
        for _ in range(120):
            text = (tmp / "head.log").read_text()
            if "Ray runtime started" in text:
                address = next(ln.split("--address='")[1].split("'")[0] for ln in text.splitlines()
                               if "--address='" in ln)
                break
            assert head.poll() is None, text
            time.sleep(0.5)
        assert address, (tmp / "head.log").read_text()
        procs.append(subprocess.Popen([BIN / "ray", "start", f"--address={address}", *_node_args()], env=ENV,
                                      start_new_session=True, stdout=logs[1], stderr=subprocess.STDOUT))
        # Count the live nodes from a subprocess: this process keeps its one local Ray (see conftest.ray_local).
        probe = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
                 "print(sum(n['Alive'] for n in ray.nodes()))")
        for _ in range(60):
            out = subprocess.run([sys.executable, "-c", probe, address], env=ENV, capture_output=True, text=True,
                                 timeout=120, check=False)
            if out.stdout.strip().endswith("2"):
                break
            time.sleep(1)
        assert out.stdout.strip().endswith("2"), out.stderr[-2000:]
        yield address
    finally:
        for p in reversed(procs):
            stop_group(p)
        for f in logs:
            f.close()
        shutil.rmtree(temp, ignore_errors=True)


def cli(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "merge-search"), *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def load(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="t", storage=f"sqlite:///{run / 'study.db'}")


@pytest.fixture(scope="module")
def two_worker_run(world, cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    cfg = write_config(world, tmp / "cfg.yaml")
    cli("search", str(cfg), "--out", str(tmp / "run"), "--address", cluster, "--no-progress")
    return tmp / "run"


def test_two_workers_on_two_nodes_record_everything(two_worker_run):
    study = load(two_worker_run)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 4 and len(study.trials) == 4
    assert len({t.user_attrs["node"] for t in done}) == 2  # one actor on each node of the cluster
    spans = sorted((t.datetime_start, t.datetime_complete) for t in done)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))  # trials overlapped in time
    warm = [t for t in done if "warm_start" in t.user_attrs]
    assert len(warm) == 1 and warm[0].params["zahlen.density"] == 0.6
    for t in done:
        ua = t.user_attrs
        assert set(ua["scores"]) == set(ua["stderr"]) and len(ua["scores"]) == 3
        assert ua["items_evaluated"] == 3 * 40 and t.intermediate_values == {60: pytest.approx(
            t.intermediate_values[60])}
        assert ua["merge_seconds"] > 0 and ua["eval_seconds"] > 0 and len(ua["weights_sha256"]) == 64
        assert isinstance(ua["seed"], int) and "dare_ties" in ua["recipe"]
        art = two_worker_run / "artifacts" / ua["recipe_artifact_id"]
        assert art.read_text() == ua["recipe"]


def test_export_is_reproduced_by_stock_mergekit(two_worker_run, tmp_path):
    import json

    from search.merge import hash_model_dir

    out = tmp_path / "best.yaml"
    cli("export", str(two_worker_run), "--trial", "best", "--out", str(out))
    side = json.loads(out.with_suffix(".json").read_text())
    study = load(two_worker_run)
    assert side["trial"] == study.best_trial.number and side["value"] == study.best_value
    assert set(side["versions"]) >= {"mergekit", "torch", "transformers"}
    merged = tmp_path / "merged"
    assert side["reproduce"].startswith(f"OMP_NUM_THREADS={side['merge_threads']} mergekit-yaml")
    env = {**os.environ, "OMP_NUM_THREADS": str(side["merge_threads"])}  # CPU reductions depend on it
    proc = subprocess.run([str(BIN / "mergekit-yaml"), str(out), str(merged), "--random-seed", str(side["seed"])],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert hash_model_dir(merged) == side["weights_sha256"]


def test_killed_worker_fails_trial_and_search_completes(world, ray_local, tmp_path):
    from search.config import load_run_config
    from search.driver import Driver
    from search.stages.trial_worker import MergeEvalWorker
    from search.merge import suggest_params
    from search.driver.study import open_study

    cfg = load_run_config(write_config(world, tmp_path / "cfg.yaml", n_trials=3))
    study = open_study(cfg.search, name="t", run_dir=tmp_path / "run", seed=0)
    killed = []

    def kill_mid_trial(number, rung, info):
        if number == 1 and rung == 1 and not killed:
            killed.append(info.pid)
            os.kill(info.pid, signal.SIGKILL)

    driver = Driver(study, worker_factory=functools.partial(MergeEvalWorker, cfg),
                    suggest=functools.partial(suggest_params, cfg.space), n_trials=3, workers=2, max_retries=1,
                    on_submit=kill_mid_trial, progress=False)
    res = driver.run()
    assert killed and res.failed == 1 and res.requeued == 1
    t1 = study.trials[1]
    assert t1.state == TrialState.FAIL and "worker died" in t1.user_attrs["fail_reason"]
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == t1.params
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3


def test_pruning_lowers_items_evaluated(world, ray_local, tmp_path):
    from search.config import load_run_config
    from search.driver import Driver
    from search.stages.trial_worker import MergeEvalWorker
    from search.merge import suggest_params
    from search.driver.study import open_study

    results = {}
    for pruner in ("none", "successive_halving"):
        cfg = load_run_config(write_config(world, tmp_path / pruner / "cfg.yaml", n_trials=6, pruner=pruner,
                                           min_resource=1, reduction_factor=2))
        study = open_study(cfg.search, name="t", run_dir=tmp_path / pruner, seed=0)
        driver = Driver(study, worker_factory=functools.partial(MergeEvalWorker, cfg),
                        suggest=functools.partial(suggest_params, cfg.space), n_trials=6, workers=2, progress=False)
        results[pruner] = (driver.run(), study)
    (nop, _), (sha, study) = results["none"], results["successive_halving"]
    assert nop.items == 6 * 3 * 40 and nop.pruned == 0
    assert sha.pruned >= 1 and sha.items < nop.items
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert all(t.user_attrs["items_evaluated"] == 3 * 20 for t in pruned)


def test_constrained_two_objective_search_ranks_feasible_trials_first(world, ray_local, tmp_path):
    """NSGA-II on (zahlen + artikel, verben) with verben >= 0.5: constraint values reach Optuna, and the
    held-out top-K and the pipeline's winner skip a trial with a higher primary score that breaks it."""
    from search.config import load_run_config
    from search.driver import Driver
    from search.stages.trial_worker import MergeEvalWorker
    from search.merge import recipe_text, suggest_params
    from search.stages.export import export_trial, winner
    from search.stages.heldout import evaluate, top_trials
    from search.driver.study import is_feasible, open_study, ranked_trials

    search_tasks = world.tasks["search"]
    task = {s: {"name": search_tasks[s], "subset": 40, "test_task": world.tasks["test"][s], "heldout": 40}
            for s in search_tasks}
    objective = {"tasks": [task["zahlen"], task["artikel"]],
                 "secondary": {"name": "verben", "tasks": [task["verben"]]},
                 "constraints": [{"objective": "verben", "min": 0.5}]}
    cfg = load_run_config(write_config(world, tmp_path / "cfg.yaml", objective=objective, sampler="nsgaii"))
    run = tmp_path / "run"
    study = open_study(cfg.search, name="t", run_dir=run, seed=0, directions=["maximize", "maximize"],
                       constrained=True)
    hand = {  # (zahlen, artikel, verben) weights at density 0.7
        "no_verben": (0.7, 0.7, 0.0),  # strong on the primary tasks, breaks the constraint
        "all": (0.7, 0.7, 0.7),
        "weak": (0.1, 0.1, 0.1),
    }
    for tag, weights in hand.items():
        study.enqueue_trial({f"{s}.{p}": v for s, w in zip(("zahlen", "artikel", "verben"), weights)
                             for p, v in (("density", 0.7), ("weight", w))}, user_attrs={"hand": tag})
    driver = Driver(study, worker_factory=functools.partial(MergeEvalWorker, cfg),
                    suggest=functools.partial(suggest_params, cfg.space), describe=functools.partial(recipe_text, cfg.space),
                    n_trials=5, workers=2, progress=False)
    driver.run()
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 5
    for t in done:
        verben = t.user_attrs["scores"][search_tasks["verben"]]
        assert t.values[1] == pytest.approx(verben) == pytest.approx(t.user_attrs["secondary"])
        assert t.constraints == {"0:verben": pytest.approx(0.5 - verben)}
        assert bool(t.user_attrs["violations"]) == (not is_feasible(t))
    by_hand = {t.user_attrs["hand"]: t for t in done if "hand" in t.user_attrs}
    no_verben, best_feasible = by_hand["no_verben"], ranked_trials(study)[0]
    assert not is_feasible(no_verben) and is_feasible(best_feasible), "the hand recipes no longer split as planned"
    assert no_verben.values[0] > best_feasible.values[0]
    assert best_feasible.values[0] == max(t.values[0] for t in done if is_feasible(t))
    assert all(is_feasible(t) for t in study.best_trials)  # Optuna's Pareto front sees the constraints
    top = top_trials(str(run), 3)
    assert [is_feasible(t) for t in top] == sorted((is_feasible(t) for t in top), reverse=True)
    assert top[0].number == best_feasible.number
    export_trial(study, winner(study), run / "best.yaml")
    assert json.loads((run / "best.json").read_text())["trial"] == best_feasible.number
    evaluate(cfg, tmp_path / "eval", study_run=run, top_k=1, log=lambda m: None)
    held = json.loads((tmp_path / "eval" / "heldout.json").read_text())["models"][f"trial:{best_feasible.number}"]
    # re-merged from its recipe and seed, the trial scores what it scored in the search, on both objectives
    assert (held["search_avg"], held["secondary_avg"]) == pytest.approx(tuple(best_feasible.values))
    assert held["secondary_test_avg"] is not None
    assert "| **secondary average** |" in (tmp_path / "eval" / "heldout.md").read_text()


def test_killed_driver_resumes(world, cluster, tmp_path, kill_when):
    cfg = write_config(world, tmp_path / "cfg.yaml", n_trials=5, max_retries=1)
    run = tmp_path / "run"

    def complete_and_dispatched() -> bool:
        if not (run / "run.json").exists():  # written once the driver has created the study
            return False
        try:
            trials = load(run).get_trials()
        except (KeyError, optuna.exceptions.StorageInternalError):
            return False
        dispatched = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        return bool(dispatched) and TrialState.COMPLETE in {t.state for t in trials}

    kill_when([str(BIN / "merge-search"), "search", str(cfg), "--out", str(run), "--address", cluster,
               "--no-progress"], complete_and_dispatched, env=ENV,
              what="the search had a complete and a dispatched running trial at once", timeout=300)
    before = load(run).get_trials()
    orphans = [t.number for t in before if t.state == TrialState.RUNNING]
    assert orphans
    out = cli("search", str(cfg), "--out", str(run), "--address", cluster, "--no-progress")
    assert "resuming" in out.stderr
    study = load(run)
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 5  # --n-trials counts finished trials
    ran = [n for n in orphans if "worker" in before[n].user_attrs]
    assert ran  # the kill hit a dispatched trial (another one may have been between ask and dispatch)
    for n in orphans:
        assert trials[n].state == TrialState.FAIL and "orphaned" in trials[n].user_attrs["fail_reason"]
    for n in ran:
        assert [t for t in trials if t.user_attrs.get("retry_of") == n and t.params == trials[n].params]
    warm = [t for t in trials if "warm_start" in t.user_attrs and "retry_of" not in t.user_attrs]
    assert len(warm) == 1  # the hand recipe was enqueued once
    for t in before:
        if t.state == TrialState.COMPLETE:
            assert trials[t.number].state == TrialState.COMPLETE and trials[t.number].value == t.value
