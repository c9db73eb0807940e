"""``merge-search evaluate`` on the demo world with small subsets: sources, recipes, top trials (hash-checked)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main

REPO = Path(__file__).resolve().parents[2]
HAND = REPO / "configs" / "recipes" / "demo-hand.yaml"


@pytest.fixture()
def small_config(world, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    data["objective"]["tasks"] = [
        {"name": "demo_zahlen_search", "test_task": "demo_zahlen_test", "subset": 16, "heldout": 16},
        {"name": "demo_artikel_search", "subset": 16, "heldout": 16}]
    data["objective"]["rungs"] = ["all"]
    data["objective"].pop("chat")
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def study_with_trial(run: Path, sha: str | None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{run / 'study.db'}", direction="maximize")
    attrs = {"recipe": HAND.read_text(encoding="utf-8"), "seed": 0, "weights_sha256": sha}
    study.add_trial(optuna.trial.create_trial(value=0.7, user_attrs=attrs))
    study.add_trial(optuna.trial.create_trial(value=0.1, user_attrs=attrs))


def test_evaluate_writes_heldout_json_and_table(small_config, tmp_path):
    from search.merge import merge_to_dir

    sha = merge_to_dir(HAND, tmp_path / "merged", seed=0)["weights_sha256"]
    run = tmp_path / "run"
    study_with_trial(run, sha)
    assert main(["evaluate", str(small_config), "--run", str(run), "--top-k", "1"]) == 0
    report = json.loads((run / "heldout.json").read_text())
    models = report["models"]
    assert {m["kind"] for m in models.values()} == {"source", "recipe", "trial"}
    assert sorted(models) == ["artikel", "base:base", "seed-recipe", "trial:0", "verben", "zahlen"]
    trial, seed = models["trial:0"], models["seed-recipe"]
    assert trial["trial"] == 0 and trial["search"] == seed["search"]  # the trial IS the seed recipe, seed 0
    for m in models.values():
        assert set(m["search"]) == set(m["test"]) == {"demo_zahlen_search", "demo_artikel_search"}
        assert m["search_avg"] == pytest.approx(sum(m["search"].values()) / 2)
        assert m["n_test"] == {"demo_zahlen_search": 16, "demo_artikel_search": 16}
    assert models["zahlen"]["search"]["demo_zahlen_search"] > models["base:base"]["search"]["demo_zahlen_search"]
    table = (run / "heldout.md").read_text()
    assert "| trial:0 | trial | demo_zahlen_search |" in table
    held = report["subsets"]["tasks"]["demo_artikel_search"]
    assert not set(held["search"]) & set(held["heldout"])


def test_hash_mismatch_is_a_user_error(small_config, tmp_path, capsys):
    run = tmp_path / "run"
    study_with_trial(run, "0" * 64)
    assert main(["evaluate", str(small_config), "--run", str(run), "--top-k", "1", "--out",
                 str(tmp_path / "o")]) == 2
    assert "weights_sha256" in capsys.readouterr().err


def test_top_k_needs_run(small_config):
    from search.config import load_run_config
    from search.stages.heldout import standalone_problems

    problems = standalone_problems(load_run_config(small_config), small_config.parent / "new", top_k=2)
    assert [p for p in problems if "top_k trials need the run folder" in p] == problems != []
