"""The search submitted as a Ray job, as README's cluster section says: `ray start --head` with its job server on
127.0.0.1, a job submitted with the working directory uploaded (what `ray job submit --working-dir . --
merge-search search CONFIG --address auto` does, through the same Jobs SDK); a job with a bad config
ends FAILED with the one-line reason in its logs."""

from __future__ import annotations

import os
import shlex
import shutil
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


@pytest.fixture(scope="module")
def job_server(tmp_path_factory):
    """A one-node Ray head with its dashboard (the job server) on 127.0.0.1; yields the job server's URL."""
    tmp = tmp_path_factory.mktemp("rayjobs")
    temp = Path(tempfile.mkdtemp(prefix="rt"))  # short: Ray's socket paths inside must fit an AF_UNIX path
    dash = free_port()
    log = open(tmp / "head.log", "w")  # noqa: SIM115 (closed in finally)
    head = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", f"--port={free_port()}", "--node-ip-address=127.0.0.1",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         "--disable-usage-stats", f"--temp-dir={temp}", *ray_port_args()],
        env=ENV, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{dash}"
    try:
        for _ in range(180):
            try:
                _client(url).list_jobs()
                break
            except Exception:  # noqa: BLE001 - not up yet (connection refused, 5xx while it starts)
                pass
            assert head.poll() is None, (tmp / "head.log").read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail("the Ray job server never answered: " + (tmp / "head.log").read_text()[-3000:])
        yield url
    finally:
        stop_group(head, 60)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _client(url: str):
    from ray.job_submission import JobSubmissionClient  # an HTTP client: no ray.init in this process

    return JobSubmissionClient(url)


def _submit(url: str, *command: str) -> tuple[str, str]:
    """Submit ``merge-search COMMAND`` with the repository as working dir (the Jobs SDK that `ray job submit`
    uses); wait for it to end; ``(status, logs)``."""
    client = _client(url)
    entry = " ".join(shlex.quote(c) for c in (str(BIN / "merge-search"), *command))
    job = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(REPO)})
    deadline = time.time() + 600
    while time.time() < deadline and not client.get_job_status(job).is_terminal():
        time.sleep(2)
    return client.get_job_status(job).value, client.get_job_logs(job)


def test_search_runs_as_a_ray_job_and_a_bad_config_fails_with_its_reason(world, job_server, tmp_path):
    cfg = write_config(world, tmp_path / "cfg.yaml", n_trials=3)
    run = tmp_path / "run"
    state, logs = _submit(job_server, "search", str(cfg), "--out", str(run), "--address", "auto", "--no-progress")
    assert state == "SUCCEEDED", logs[-3000:]
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{run / 'study.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert "complete: 3" in logs and f"run: {run}" in logs  # the job's logs hold the search summary

    bad = write_config(world, tmp_path / "bad.yaml", n_trials=3)
    bad.write_text(bad.read_text().replace(str(world.experts["zahlen"]), str(tmp_path / "no-such-model")))
    state, logs = _submit(job_server, "search", str(bad), "--out", str(tmp_path / "bad-run"), "--address", "auto")
    assert state == "FAILED"
    errors = [ln for ln in logs.splitlines() if ln.startswith("merge-search: error:")]
    assert len(errors) == 1 and "no-such-model' does not exist" in errors[0] and "Traceback" not in logs
    assert not (tmp_path / "bad-run").exists()
