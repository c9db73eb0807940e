"""``merge-search run``: the whole pipeline on a reduced demo config, killed mid-search and resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from search.atomic import staging_name
from search.pipeline import stage_names
from search.writelock import holder

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def reduced_config(world, tmp_path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["name"] = "pipe"
    cfg["space"]["base_model"] = str(world.base)
    for m in cfg["space"]["models"]:
        m["model"] = str(world.experts[m["name"]])
    cfg["objective"]["include_paths"] = [str(world.include_path)]
    for t in cfg["objective"]["tasks"]:
        t.update(subset=60, heldout=60)  # held-out: 60 of each test task's documents
    cfg["objective"]["rungs"] = [30, "all"]
    cfg["objective"]["chat"].update(questions=str(world.chat_questions), rungs=[4, 8])  # chat in the workers too
    cfg["search"] = {**cfg.get("search", {}), "n_trials": 5, "workers": 1, "n_startup_trials": 3}
    cfg["dpo"] = {**cfg.get("dpo", {}), "data": {"train": str(world.preferences["train"]),
                                                 "heldout": str(world.preferences["test"]),
                                                 "train_eval_rows": 48, "heldout_eval_rows": 48}}
    cfg["dpo"].setdefault("train", {})["max_steps"] = 6
    cfg["mtbench"] = {**cfg.get("mtbench", {}), "questions": str(world.mtbench_questions), "limit": 2,
                      "max_new_tokens": 12}
    cfg["pipeline"] = {"top_k": 1, "mtbench_sources": False}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_cmd(config: Path, run: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "merge-search"), "run", str(config), "--out", str(run), *extra],
                          check=False, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)


def trials(run: Path) -> list[optuna.trial.FrozenTrial]:
    info = json.loads((run / "run.json").read_text())
    assert info["storage"] is None  # the folder's own study.db: a moved or copied folder keeps working
    return optuna.load_study(study_name=info["study_name"], storage=f"sqlite:///{run / 'study.db'}").get_trials()


def test_run_killed_during_search_resumes_without_recomputing(world, tmp_path, kill_when):
    config = reduced_config(world, tmp_path)
    run = tmp_path / "run"
    kill_when([str(BIN / "merge-search"), "run", str(config), "--out", str(run)],
              lambda: (run / "run.json").is_file() and any(t.state == TrialState.COMPLETE for t in trials(run)),
              env=ENV, what="a trial completed (the run is killed mid-search)", timeout=400, group=True)
    assert not (run / "stages" / "search.json").exists()
    before = {t.number: (t.params, t.datetime_complete) for t in trials(run) if t.state == TrialState.COMPLETE}

    # The resume holds the run folder: a second writer meanwhile is refused in one line within 10 s, naming it.
    first = subprocess.Popen([str(BIN / "merge-search"), "run", str(config), "--out", str(run)], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while holder(run) is None:
        assert first.poll() is None and time.time() < deadline, "the resumed run never took the run folder's lock"
        time.sleep(0.2)
    t0 = time.time()
    second = subprocess.run([str(BIN / "merge-search"), "search", str(config), "--out", str(run)], cwd=REPO,
                            env=ENV, capture_output=True, text=True, timeout=60)
    assert time.time() - t0 < 10 and second.returncode == 2
    [line] = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert f"being written by process {first.pid}" in line and "merge-search run" in line
    out, err = first.communicate(timeout=900)
    res = subprocess.CompletedProcess(first.args, first.returncode, out, err)
    assert res.returncode == 0, res.stderr[-3000:]
    # stderr is a file here, as in a cluster job's log: progress comes as whole lines, no redrawn bars
    assert [line for line in err.split("\n") if "\r" in line] == []
    assert "search: 5/5 finished (complete " in err and "\nDPO: 6/6 step (100%)" in err
    # each stage's headline figures follow its "done" line: the best trial, the held-out verdicts, DPO's held-out
    # effect, the chat verdict and the model to ship
    said_lines = [line.partition("[merge-search run] ")[2] for line in err.splitlines()]
    headlines = [line for line in said_lines if line.startswith("  ")]
    for said in ("failed; best trial #", "held-out log-likelihood: ", "DPO: held-out preference accuracy",
                 "chat: ", "model to ship: "):
        assert any(said in line for line in headlines), said
    after = trials(run)
    kept = {t.number: (t.params, t.datetime_complete) for t in after if t.number in before}
    assert kept == before  # completed trials were kept as they were, not re-run
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in after) == 5

    for stage in stage_names():
        assert (run / "stages" / f"{stage}.json").is_file(), stage
    for rel in ["study.db", "resolved.yaml", "best.yaml", "best.json", "heldout.json", "heldout.md",
                "dpo/metrics.json", "dpo/loss.png", "dpo/model/config.json", "mtbench/comparison.md",
                "mtbench/comparison.png", "mtbench/merge/scores.json", "mtbench/merge_dpo/scores.json",
                "report.md", "model-card.md", "plots/optimization_history.png", "plots/search_vs_test.png"]:
        assert (run / rel).is_file(), rel
    best = json.loads((run / "best.json").read_text())
    assert best["trial"] in {t.number for t in after if t.state == TrialState.COMPLETE}
    heldout = json.loads((run / "heldout.json").read_text())["models"]
    assert {m["kind"] for m in heldout.values()} == {"source", "recipe", "trial"}
    report = (run / "report.md").read_text()
    assert "## Held-out evaluation" in report and "preference accuracy" in report
    for card in (run / "model-card.md", run / "dpo" / "model" / "README.md"):  # hub cards: the merge, beside DPO's weights
        meta = yaml.safe_load(card.read_text().split("---", 2)[1])
        assert len(meta["base_model"]) == 4 and "merge" in meta["tags"], card
    assert "## DPO" in (run / "dpo" / "model" / "README.md").read_text()
    assert "## Held-out scores" in (run / "model-card.md").read_text()
    assert "report.md" in res.stdout  # the command ends by saying where the report is

    # A third run recomputes nothing: every stage is skipped and no file changes.
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and "study.db" not in p.name}
    n_trials = len(after)
    res = run_cmd(config, run)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("skipped") == len(stage_names())
    assert len(trials(run)) == n_trials
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # --only re-runs just that stage.
    res = run_cmd(config, run, "--only", "report")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "report.md").stat().st_mtime_ns > stamps[run / "report.md"]
    assert (run / "best.json").stat().st_mtime_ns == stamps[run / "best.json"]

    # A changed DPO setting makes DPO, MT-Bench and the report stale: a plain run redoes them, and only them.
    changed = yaml.safe_load(config.read_text())
    changed["dpo"]["train"]["max_steps"] = 4
    config.write_text(yaml.safe_dump(changed, sort_keys=False))
    markers = {s: json.loads((run / "stages" / f"{s}.json").read_text()) for s in stage_names()}
    # Killed (SIGKILL) while the redone DPO stage trains into its staging folder: the earlier DPO results and
    # every marker are as they were; the next run removes the staging folder and redoes the stage.
    old_dpo = {p: p.stat().st_mtime_ns for p in (run / "dpo").rglob("*") if p.is_file()}
    kill_when([str(BIN / "merge-search"), "run", str(config), "--out", str(run)],
              lambda: any(p.is_file() for p in staging_name(run / "dpo").rglob("*")), env=ENV,
              what="DPO writing into its staging folder",
              timeout=300, group=True)
    assert all(p.is_file() for p in old_dpo) and {p: p.stat().st_mtime_ns for p in old_dpo} == old_dpo
    assert {s: json.loads((run / "stages" / f"{s}.json").read_text()) for s in stage_names()} == markers
    res = run_cmd(config, run)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "dpo: stale (dpo.train.max_steps changed): redone" in res.stderr
    for stage in ("search", "heldout", "export"):
        assert f"{stage}: done already" in res.stderr
        assert json.loads((run / "stages" / f"{stage}.json").read_text()) == markers[stage]
    for stage in ("dpo", "mtbench", "report"):
        assert json.loads((run / "stages" / f"{stage}.json").read_text())["output"] != markers[stage]["output"]
        assert f"{stage}: stale" in res.stderr
    assert yaml.safe_load((run / "dpo" / "config.yaml").read_text())["dpo"]["train"]["max_steps"] == 4
    assert not list(run.glob(".*staging")) and not list((run / "mtbench").glob(".*"))  # nothing left half-done


def test_run_refuses_changed_config_and_bad_stage_order(world, tmp_path):
    config = reduced_config(world, tmp_path)
    run = tmp_path / "run"
    res = run_cmd(config, run, "--only", "export")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("merge-search: error: stage 'export' needs ['search'")
    assert not run.exists()  # nothing was written for a refused command
    from search.config import load_run_config, save_run_config

    save_run_config(load_run_config(config), run / "resolved.yaml")
    changed = yaml.safe_load(config.read_text())
    changed["seed"] = 99
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(changed))
    res = run_cmd(other, run)
    assert res.returncode == 2 and "different config" in res.stderr
    assert yaml.safe_load((run / "resolved.yaml").read_text())["seed"] == 0  # the stored config is untouched
    assert not (run / "study.db").exists()
