"""``merge-search run configs/seedlike.yaml``: the whole pipeline on sources that are not alike (added ChatML
tokens, another template, no template, sharded bfloat16), with one worker so the search is repeatable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _config(world, tmp_path: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "seedlike.yaml").read_text())
    cfg["space"]["base_model"] = str(world.base)
    for m in cfg["space"]["models"]:
        m["model"] = str(world.experts[m["name"]])
    cfg["objective"]["include_paths"] = [str(world.include_path)]
    # Smaller than the config's (the outcome is not asserted, the verdict is): 100 documents per task and split,
    # two rungs, fewer chat questions, two trials re-evaluated; the held-out stage scores 7 models on both splits.
    for t in cfg["objective"]["tasks"]:
        t.update(subset=100, heldout=100)
    cfg["objective"]["rungs"] = [50, "all"]
    cfg["objective"]["chat"].update(questions=str(world.chat_questions), rungs=[8, 16])
    cfg["search"].update(n_trials=8, workers=1)
    cfg["pipeline"]["top_k"] = 2
    cfg["dpo"]["data"] = {"train": str(world.preferences["train"]), "heldout": str(world.preferences["test"])}
    cfg["dpo"]["train"]["max_steps"] = 8
    cfg["mtbench"].update(questions=str(world.mtbench_questions), limit=4)
    path = tmp_path / "seedlike.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run(seedlike_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seedlike")
    out = tmp / "run"
    res = subprocess.run([str(BIN / "merge-search"), "run", str(_config(seedlike_world, tmp)), "--out", str(out)],
                         capture_output=True, text=True, timeout=1200, cwd=REPO,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_the_report_judges_the_winner_by_its_numbers_and_ships_nothing_below_a_source(run):
    """Whether this world's winner beats every source is the run's outcome (worlds differ per machine, and on some
    the seed-like search finds no merge above the verben expert: docs/performance.md); what the pipeline
    guarantees is that the report says which, from the re-evaluated numbers, and ships the best model by the
    final measure."""
    models = json.loads((run / "heldout.json").read_text())["models"]
    best = json.loads((run / "best.json").read_text())["trial"]
    winner = models[f"trial:{best}"]
    sources = {name: m for name, m in models.items() if m["kind"] == "source"}
    assert len(sources) == 4
    top = max(sources, key=lambda n: sources[n]["search_avg"])
    above = winner["search_avg"] > sources[top]["search_avg"]
    print(f"winner test {winner['test_avg']:.3f} search {winner['search_avg']:.3f}; best source {top} "
          f"search {sources[top]['search_avg']:.3f}; above: {above}")
    report = (run / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("- search: ") and "search-split fitness" in x)
    assert ("**above** every source model" in line) == above and f"(best: {top} " in line, line
    assert "seed-recipe" in report
    ship = json.loads((run / "ship.json").read_text())
    others = {n: v for n, v in ship["scores"].items() if n not in ("merge", "merge+dpo")}  # sources, hand recipes
    assert {n.split(":")[-1] for n in sources} <= set(others)  # every source was rated ("base:base" is "base")
    assert ship["score"] == max(ship["scores"].values())  # the best rated model is shipped
    merge_won = ship["kind"] in ("merge", "merge+dpo") and all(ship["score"] > v for v in others.values())
    assert ship["goal_met"] == merge_won
    assert f"Model to ship: **{ship['model']}**" in report


def test_exported_recipe_carries_the_tokenizer_and_template_and_the_merge_speaks_chatml(run, seedlike_world):
    recipe = yaml.safe_load((run / "best.yaml").read_text())
    assert recipe["tokenizer"] == {"source": "union"} and recipe["chat_template"] == "chatml"
    tok = AutoTokenizer.from_pretrained(run / "dpo" / "model")  # the merge + DPO, saved with its template
    ids = tok.apply_chat_template([{"role": "user", "content": "Hallo"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    zahlen = AutoTokenizer.from_pretrained(seedlike_world.experts["zahlen"])
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and "<|im_start|>" in zahlen.get_vocab()
    rows = sorted(tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]))
    adapter = json.loads((run / "dpo" / "adapter" / "adapter_config.json").read_text())
    assert adapter["trainable_token_indices"] == rows  # the added ChatML tokens: only one source trained them
    before = AutoModelForCausalLM.from_pretrained(run / "dpo" / "base").get_input_embeddings().weight
    after = AutoModelForCausalLM.from_pretrained(run / "dpo" / "model").get_input_embeddings().weight
    assert (before != after).any(dim=1).nonzero().flatten().tolist() == rows


MARKERS = {"base": "<|im_start|>user", "verben": "<|im_start|>user", "zahlen": "<|im_start|>user",
           "artikel": "<|user|>", "merge": "<|im_start|>user", "merge_dpo": "<|im_start|>user"}


@pytest.mark.parametrize("model", list(MARKERS))
def test_each_model_answered_in_its_own_template_with_its_end_of_turn(run, model):
    prompt = (run / "mtbench" / model / "rendered-prompt.txt").read_text()
    assert MARKERS[model] in prompt
    single = prompt.splitlines()[1]
    # zahlen added ChatML as tokens (and the union merge kept them); base and verben get the configured ChatML
    # fallback spelled in ordinary tokens; artikel keeps its own Zephyr-style template
    assert ("'<|im_start|>'" in single) == (model in ("zahlen", "merge", "merge_dpo")), single
    end = "</s>" if model == "artikel" else "<|im_end|>"
    assert end in prompt.splitlines()[2]
    answers = [json.loads(line) for line in (run / "mtbench" / model / "answers.jsonl").read_text().splitlines()]
    assert len([t for a in answers for t in a["choices"][0]["turns"]]) == 8
    # that generation really stops there is tests/objectives/mtbench/test_end_of_turn.py


def test_the_chat_objective_needs_a_template_for_sources_without_one(seedlike_world, tmp_path):
    from search.config import load_run_config
    from search.rundir import RunDir
    from search.stages import optimize

    cfg = load_run_config(_config(seedlike_world, tmp_path))
    assert cfg.objective.chat.chat_template == "chatml" and not optimize.problems(cfg, RunDir(tmp_path / "r"))
    bare = cfg.model_copy(update={"objective": cfg.objective.model_copy(update={
        "chat": cfg.objective.chat.model_copy(update={"chat_template": None})})})
    found = [p for p in optimize.problems(bare, RunDir(tmp_path / "r")) if "objective.chat.chat_template" in p]
    assert len(found) == 1 and str(seedlike_world.base) in found[0] and str(seedlike_world.experts["verben"]) in found[0]
    assert str(seedlike_world.experts["zahlen"]) not in found[0]  # it has its own template
