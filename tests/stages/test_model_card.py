"""RUN/model-card.md: the recipe, the sources with their licences, the scores and the model to ship."""

from __future__ import annotations

import yaml

from search import atomic
from search.rundir import RunDir, TrialRecord
from search.stages.model_card import dpo_lines, licence, write_model_card


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
    assert _front_matter(card)["license"] == "other"  # one source's licence is unknown


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---", 2)[1])


def test_the_card_has_hub_front_matter_and_says_how_the_merge_was_searched_scored_and_rated(tmp_path):
    from search.config import load_run_config
    from search.stages.heldout_report import HeldoutReport, ModelScores

    sources = [tmp_path / n for n in ("base", "a", "b")]
    for s in sources:
        s.mkdir()
        (s / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    recipe = yaml.safe_dump({"merge_method": "dare_ties", "base_model": str(sources[0]),
                             "models": [{"model": str(s), "parameters": {"weight": 0.5}} for s in sources[1:]]})
    record = TrialRecord(recipe=recipe, seed=0, number=4, weights_sha256="cd" * 32, scores={"t": 0.5})
    cfg = load_run_config("configs/demo.yaml")

    def scores(kind, trial, value, err):
        return ModelScores(kind=kind, trial=trial, search={"t": value}, test={"t": value}, search_avg=value,
                           test_avg=value, stderr={"t": err}, stderr_test={"t": err}, n={"t": 60}, n_test={"t": 60})

    heldout = HeldoutReport(models={"trial:4": scores("trial", 4, 0.7, 0.05), "a": scores("source", None, 0.6, 0.06),
                                    "b": scores("source", None, 0.4, 0.07)}, subsets={})
    metrics = {"heldout_before": {"n": 100, "pref_accuracy": 0.5, "reward_margin": 1.0},
               "heldout_after": {"n": 100, "pref_accuracy": 0.6, "reward_margin": 3.0},
               "generation": {"before": {"mean": 0.3}, "after": {"mean": 0.2}}, "warnings": ["gen fell"]}
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    card = write_model_card(run, "demo", record, None, {"merge": 6.0}, "MT-Bench average", cfg=cfg,
                            heldout=heldout, dpo_metrics=metrics,
                            measured_with={"judge": "gpt-4", "prompts": "judge_prompts_de.json",
                                           "questions": "80 questions"}).read_text()
    meta = _front_matter(card)
    assert meta["license"] == "apache-2.0" and meta["base_model"] == [str(s) for s in sources]
    assert {"merge", "mergekit", "dare_ties"} <= set(meta["tags"]) and meta["language"] == ["de"]
    assert "- sampler `tpe`, pruner `successive_halving`, 2 worker(s), seed 0" in card
    assert "- fitness: `weighted_mean` of `demo_zahlen_search` (acc,none, weight 1)" in card
    assert "| t | 0.700 ± 0.050 | 0.600 ± 0.060 |" in card and "best source (a)" in card
    assert f"learning rate {cfg.dpo.train.learning_rate:g}, {cfg.dpo.train.max_steps} steps" in card
    assert "preference accuracy 0.500 -> 0.600" in card and "held-out generation" in card and "gen fell" in card
    assert "judge gpt-4, judge prompts judge_prompts_de.json" in card
    epochs = cfg.dpo.model_copy(update={"train": cfg.dpo.train.model_copy(update={"max_steps": None})})
    assert f"{epochs.train.epochs:g} epochs, LoRA" in "\n".join(dpo_lines(epochs, metrics))  # no max_steps
