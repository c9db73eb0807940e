"""The model to ship and the stage verdicts, from the files the stages write (no world, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.rundir import RunDir
from search.stages.heldout_report import HeldoutReport, ModelScores
from search.stages.report import headline, write_report
from search.stages.verdict import ship_decision, stage_verdicts


def _scores(run: RunDir, name: str, average: float, standin: bool = True) -> None:
    folder = run.mtbench_model(name)
    folder.mkdir(parents=True)
    data = {"average": average, "categories": {}} | ({"label": "NOT an MT-Bench score"} if standin else {})
    (folder / "scores.json").write_text(json.dumps(data))


def _model(kind: str, trial: int | None, search: float, test: dict[str, float]) -> ModelScores:
    return ModelScores(kind=kind, trial=trial, search={}, test=test, search_avg=search,
                       test_avg=sum(test.values()) / len(test), stderr={}, stderr_test={}, n={}, n_test={})


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    kinds = {"mc": "loglikelihood", "gen": "generation"}
    HeldoutReport(models={"trial:3": _model("trial", 3, 0.9, {"mc": 0.9, "gen": 0.3}),
                          "verben": _model("source", None, 0.5, {"mc": 0.5, "gen": 0.4})},
                  subsets={}, task_kinds=kinds).save(run)
    return run


def test_a_merge_below_a_source_on_the_final_measure_is_not_shipped(run):
    _scores(run, "merge", 5.66)
    _scores(run, "merge+dpo", 3.25)
    _scores(run, "verben", 6.14)
    ship = ship_decision(run)
    assert (ship.model, ship.kind, ship.goal_met) == ("verben", "source", False)
    assert "did not reach its goal" in ship.reason and "Model to ship: verben, a source model" in headline(run.root)
    lines = {v.stage: v for v in stage_verdicts(run, winner=3)}
    # the log-likelihood win and the generation loss are told apart; worse stages say so first
    assert lines["held-out log-likelihood"].worse is False
    assert lines["held-out generation"].worse is True
    assert lines["held-out generation"].line.startswith("held-out generation: WORSE")
    assert lines["chat"].worse and lines["dpo"].worse


def test_a_hand_recipe_counts_on_the_final_measure(run):
    (run.mtbench).mkdir()
    _scores(run, "merge", 6.0)
    _scores(run, "verben", 5.5)
    _scores(run, "seed-recipe", 6.2)
    run.mtbench_kinds.write_text(json.dumps({"verben": "source", "seed-recipe": "recipe", "merge": "merge"}))
    ship = ship_decision(run)
    assert (ship.model, ship.kind, ship.goal_met) == ("seed-recipe", "recipe", False)
    chat = [v for v in stage_verdicts(run, winner=3) if v.stage == "chat"]
    assert [v.worse for v in chat] == [False, True] and "every hand recipe" in chat[1].line


def test_dpo_model_is_shipped_only_when_it_beats_the_merge(run):
    _scores(run, "merge", 6.5)
    _scores(run, "verben", 6.14)
    assert ship_decision(run).model == "merge"
    _scores(run, "merge+dpo", 6.9)
    ship = ship_decision(run)
    assert (ship.model, ship.kind, ship.goal_met) == ("merge+dpo", "merge+dpo", True)
    assert ship.scores == {"merge": 6.5, "merge+dpo": 6.9, "verben": 6.14}


def test_report_names_the_model_to_ship_first_and_writes_ship_json(run):
    assert ship_decision(run) is None  # no final measure yet: nothing decided
    _scores(run, "merge", 7.0, standin=False)
    _scores(run, "verben", 6.0, standin=False)
    report = write_report(run.root).read_text()
    verdict = report.split("## Verdict", 1)[1].strip().splitlines()[0]
    assert verdict.startswith("Model to ship: **merge**") and "MT-Bench average 7.00" in verdict
    assert json.loads(run.ship_json.read_text())["model"] == "merge"
    assert "Model to ship: merge" in headline(run.root)


def test_report_names_what_the_final_measure_was_rated_with(run):
    _scores(run, "merge", 7.0, standin=False)
    scores = run.mtbench_model("merge") / "scores.json"
    used = {"judge": "openai:gpt-4", "prompts": "judge_prompts_de.json 1a2b", "questions": "80 questions 9f"}
    scores.write_text(json.dumps(json.loads(scores.read_text()) | {"measured_with": used}))
    run.comparison_md.write_text("| | merge |\n|---|---|\n")
    report = write_report(run.root).read_text()
    assert ("Rated with judge openai:gpt-4, judge prompts judge_prompts_de.json 1a2b, 80 questions 9f."
            in report.split("## MT-Bench", 1)[1])
