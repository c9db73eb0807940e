"""RUN/model-card.md: the recipe, the sources with their licences, the scores and the model to ship."""

from __future__ import annotations

import yaml

from search import atomic
from search.rundir import RunDir, TrialRecord
from search.stages.model_card import licence, write_model_card


def test_the_card_names_sources_licences_recipe_scores_and_the_model_to_ship(tmp_path):
    base, expert = tmp_path / "base", tmp_path / "expert"
    base.mkdir()
    expert.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [de]\n---\n# Base\n")
    (expert / "README.md").write_text("# no front matter\n")
    recipe = yaml.safe_dump({"merge_method": "dare_ties", "base_model": str(base),
                             "models": [{"model": str(base)}, {"model": str(expert),
                                                               "parameters": {"density": 0.6, "weight": 0.4}}]})
    record = TrialRecord(recipe=recipe, seed=3, number=7, weights_sha256="ab" * 32, scores={"task_a": 0.8125})
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    atomic.write_text(run.best_yaml, recipe)
    path = write_model_card(run, "demo", record, {"model": "merge+dpo", "reason": "the best rated model"},
                            {"merge": 6.34, "merge+dpo": 6.57, "verben": 5.61}, "chat average (stand-in judge)")
    card = path.read_text()
    assert f"| {base} | apache-2.0 |" in card and f"| {expert} | unknown |" in card
    assert "merge_method: dare_ties" in card and "--random-seed 3" in card and "ab" * 32 in card
    assert "| task_a | 0.8125 |" in card and "## Final measure: chat average (stand-in judge)" in card
    assert "| merge+dpo | 6.57 |" in card and "**merge+dpo**: the best rated model" in card
    assert licence("owner/not-cached") == "unknown"
