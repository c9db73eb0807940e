"""The search against a real PostgreSQL server (``search.storage: postgresql://...``), as a cluster runs it:
a 2-worker search, its driver killed and resumed with nothing lost, then ``export`` and optuna-dashboard
reading the same study through the run folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from demo_configs import write_config  # tests/demo_configs.py
from search.driver.lease import LEASE_ATTR

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "merge-search"), *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600, check=False)


def test_search_into_postgresql_resumes_and_is_exported_and_served(world, postgres, tmp_path, kill_when):
    pytest.importorskip("psycopg", reason="the postgres extra is not installed (pip install -e '.[postgres]')")
    url = postgres("merge_search")
    cfg = write_config(world, tmp_path / "cfg.yaml", n_trials=4, max_retries=1, storage=url)
    run = tmp_path / "run"

    def trials() -> list:
        try:
            return optuna.load_study(study_name="t", storage=url).get_trials()
        except (KeyError, optuna.exceptions.StorageInternalError):  # not created yet
            return []

    def complete_and_dispatched() -> bool:
        if not (run / "run.json").exists():  # written once the driver has created the study (no schema race)
            return False
        ts = trials()
        return any(t.state == TrialState.COMPLETE for t in ts) and any(
            t.state == TrialState.RUNNING and "worker" in t.user_attrs for t in ts)

    kill_when([str(BIN / "merge-search"), "search", str(cfg), "--out", str(run), "--no-progress"],
              complete_and_dispatched, env=ENV, what="a complete and a dispatched trial in PostgreSQL", timeout=400,
              group=True)
    before = trials()
    orphans = [t.number for t in before if t.state == TrialState.RUNNING]
    assert orphans and json.loads((run / "run.json").read_text())["storage"] == url
    assert not (run / "study.db").exists()  # the study lives in PostgreSQL only

    # A second run folder on the same study while a driver holds it (a live process's lease in the study): refused
    # in one line naming it, before a folder is made; once that process is gone the resume below takes the study.
    other = tmp_path / "other"
    holder = subprocess.Popen(["sleep", "120"])
    try:
        study = optuna.load_study(study_name="t", storage=url)
        study.set_user_attr(LEASE_ATTR, {"pid": holder.pid, "host": socket.gethostname(), "command": "sleep 120",
                                         "run_dir": str(run), "beat": time.time()})
        res = cli("search", str(cfg), "--out", str(other), "--no-progress")
        assert res.returncode == 2 and not other.exists()
        [line] = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert f"is being searched by process {holder.pid} on {socket.gethostname()} (sleep 120" in line
    finally:
        holder.kill()
        holder.wait()

    res = cli("search", str(cfg), "--out", str(run), "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming" in res.stderr
    lease = optuna.load_study(study_name="t", storage=url).user_attrs[LEASE_ATTR]
    assert lease["released"] and lease["run_dir"] == str(run)  # the resumed driver took the lease and let it go
    after = trials()
    assert len([t for t in after if t.state == TrialState.COMPLETE]) == 4
    for t in before:  # nothing finished was lost or changed
        if t.state == TrialState.COMPLETE:
            assert after[t.number].state == TrialState.COMPLETE and after[t.number].value == t.value
    for n in orphans:
        assert after[n].state == TrialState.FAIL and "orphaned" in after[n].user_attrs["fail_reason"]

    res = cli("export", str(run), "--trial", "best", "--out", str(tmp_path / "best.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    side = json.loads((tmp_path / "best.json").read_text())
    best = optuna.load_study(study_name="t", storage=url).best_trial
    assert side["trial"] == best.number and side["weights_sha256"] == best.user_attrs["weights_sha256"]

    assert _dashboard_studies(run) == ["t"]


def _dashboard_studies(run: Path) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(BIN / "merge-search"), "dashboard", str(run), "--port", str(port)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    return [s["study_name"] for s in json.load(r)["study_summaries"]]
            except OSError:
                assert server.poll() is None, "the dashboard exited"
                time.sleep(0.5)
        pytest.fail("the dashboard never answered")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # the server's exit is not what is tested here
            server.kill()
            server.wait(10)
