"""`merge-search dashboard` serves a run in stock optuna-dashboard: checked in headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from search.driver.study import SearchConfig, open_study
from search.rundir import RunDir

pytestmark = pytest.mark.service  # headless Chromium and an optuna-dashboard server: `make test` only
BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def ensure_chromium() -> str:
    """The ``chromium`` executable; the test skips when it is not installed (never installs it)."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Chromium not installed: apt-get install chromium (.ci/run does)")
    return exe


def make_run(run: Path) -> None:
    """A run folder as `merge-search search` leaves it: study.db, artifacts/ with trial recipes, run.json."""
    storage = RunDir(run).default_storage_url()
    (run / "artifacts").mkdir(parents=True)
    study = open_study(SearchConfig(), name="dash-study", run_dir=run, seed=0, metric_names=["fitness (weighted_mean)"])
    store = optuna.artifacts.FileSystemArtifactStore(str(run / "artifacts"))
    for i, density in enumerate((0.2, 0.6, 0.9)):
        study.enqueue_trial({"zahlen.density": density})
        trial = study.ask()
        value = 1 - abs(trial.suggest_float("zahlen.density", 0.0, 1.0) - 0.5)
        recipe = run / f"trial-{i:05d}.yaml"
        recipe.write_text(f"merge_method: dare_ties\nmodels: []\n# trial {i} density {density}\n")
        optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(recipe), study_or_trial=trial,
                                         mimetype="text/yaml")
        study.tell(trial, value)
    (run / "run.json").write_text(json.dumps({"storage": storage, "study_name": "dash-study"}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(exe: str, url: str, tmp: Path, *extra: str) -> str:
    out = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=15000",
                          *extra, url], capture_output=True, text=True, timeout=120, check=False)
    return out.stdout


def test_dashboard_shows_study_trials_and_artifacts(tmp_path):
    exe = ensure_chromium()
    run = tmp_path / "run"
    make_run(run)
    port = free_port()
    server = subprocess.Popen([str(BIN / "merge-search"), "dashboard", str(run), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as r:
                    studies = json.load(r)["study_summaries"]
                    break
            except OSError:
                assert server.poll() is None, "the dashboard exited"
                time.sleep(0.5)
        else:
            pytest.fail("the dashboard never answered")
        assert [s["study_name"] for s in studies] == ["dash-study"]
        sid = studies[0]["study_id"]
        dom = chromium(exe, f"{base}/dashboard/studies/{sid}", tmp_path, "--dump-dom")
        assert "dash-study" in dom and "zahlen.density" in dom and "Best Trial" in dom
        assert "fitness (weighted_mean)" in dom and "Objective 0" not in dom  # the search names its objective
        trials = chromium(exe, f"{base}/dashboard/studies/{sid}/trials", tmp_path, "--dump-dom")
        assert all(f"Trial {i}" in trials for i in range(3))
        assert "trial-00000.yaml" in trials  # the recipe artifact, from RUN/artifacts
        chromium(exe, f"{base}/dashboard/studies/{sid}", tmp_path, f"--screenshot={tmp_path / 'dash.png'}",
                 "--window-size=1280,900")
        assert (tmp_path / "dash.png").stat().st_size > 10_000
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # the server's exit is not what is tested here
            server.kill()
            server.wait(10)
