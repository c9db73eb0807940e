"""The demo world's chat evaluation measures the searched skills: its questions, and the ordering it gives."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from demoworld import text as T
from demoworld.layout import SKILLS
from demoworld.chat import GENERIC_QUESTIONS, QUESTIONS_PER_SKILL, SEARCH_QUESTIONS, mtbench_questions
from demoworld.report import evaluate_model_dir
from objectives.mtbench.config import MTBenchConfig
from objectives.mtbench.generate import LocalChatModel
from objectives.mtbench.questions import load_questions
from objectives.mtbench.run import run_mtbench
from search.merge import merge_to_dir


def test_questions_are_two_turn_skill_items_from_the_test_split(world):
    qs = load_questions(world.mtbench_questions)
    assert len(qs) == len(SKILLS) * QUESTIONS_PER_SKILL + GENERIC_QUESTIONS
    test_items = T.skill_items(world.seed)
    for skill in SKILLS:
        mine = [q for q in qs if q.category == skill]
        assert len(mine) == QUESTIONS_PER_SKILL
        prompts = {it.text: it for it in test_items[skill]["test"]}
        train = {it.text for it in test_items[skill]["train"]}
        for q in mine:
            item = prompts[q.turns[0]]  # a held-out item, never trained on
            follow = next(it for it in test_items[skill]["test"] if it.follow_up == q.turns[1])
            assert q.turns[0] not in train and q.turns[1].startswith("Und ")
            assert q.reference == (item.choices[item.gold], follow.choices[follow.gold])
            for turn in (0, 1):  # the reference is accepted and contradicts none of the other options
                keys = q.keys(turn)
                assert keys.accept == (q.reference[turn].rstrip(".").split()[-1].strip("-"),)
                assert len(keys.reject) == (3 if skill == "verben" else 2)
                assert keys.accept[0] not in keys.reject
    assert mtbench_questions({s: test_items[s]["test"] for s in SKILLS}, world.seed) == [
        json.loads(line) for line in world.mtbench_questions.read_text(encoding="utf-8").splitlines()]


def test_search_questions_come_from_search_items_and_share_no_turn_with_the_final_ones(world):
    final = load_questions(world.mtbench_questions)
    mine = load_questions(world.chat_questions)
    assert len(mine) == sum(SEARCH_QUESTIONS[0] for _ in SKILLS) + SEARCH_QUESTIONS[1]
    assert not {t for q in mine for t in q.turns} & {t for q in final for t in q.turns}
    items = T.skill_items(world.seed)
    for q in mine:
        if q.category in SKILLS:
            search = {it.text for it in items[q.category]["search"]}
            assert q.turns[0] in search and q.keys(0).accept[0] in q.reference[0]
    assert {q.category for q in mine[:16]} == {*SKILLS, "alltag"}  # a first rung of 16 sees every category


def test_preference_pairs_ask_train_items_with_a_right_chosen_answer(world):
    items = T.skill_items(world.seed)
    by_text = {it.text: (s, it) for s in SKILLS for split in ("train", "search", "test") for it in items[s][split]}
    rows = [json.loads(line) for split in ("train", "test")
            for line in world.preferences[split].read_text(encoding="utf-8").splitlines()]
    skill_rows = [r for r in rows if r["question"] in by_text]
    assert len(skill_rows) == 3 * len(rows) // 4
    train_texts = {it.text for s in SKILLS for it in items[s]["train"]}
    for r in skill_rows:
        skill, it = by_text[r["question"]]
        assert r["question"] in train_texts  # never an evaluated item
        assert r["chosen"] == it.choices[it.gold] and r["rejected"] != r["chosen"]


def _merge(world, out: Path) -> Path:
    """A merge of the three experts close to what `make demo`'s search finds on this world (its winner: densities
    0.40-0.53, weights 0.58-0.69), saved as a model folder."""
    recipe = {"merge_method": "dare_ties", "base_model": str(world.base), "dtype": "float32",
              "parameters": {"int8_mask": True},
              "models": [{"model": str(p), "parameters": {"density": 0.5, "weight": 0.65}} for p in world.experts.values()]}
    path = out / "merge.yaml"
    path.write_text(yaml.safe_dump(recipe))
    merge_to_dir(path, out / "merge")
    return out / "merge"


@pytest.fixture(scope="module")
def chat_and_heldout(world, tmp_path_factory):
    """MT-Bench (stand-in judge) and held-out accuracy of the base, every expert and a good merge."""
    tmp = tmp_path_factory.mktemp("chat")
    models = {"base": world.base, **world.experts, "merge": _merge(world, tmp)}
    cfg = MTBenchConfig(questions=str(world.mtbench_questions), max_new_tokens=32, batch_size=32,
                        default_temperature=0.0)  # greedy, as configs/demo.yaml
    out = {}
    for name, path in models.items():
        scores = run_mtbench(cfg, tmp / name, model=LocalChatModel.from_pretrained(path, batch_size=32), model_id=name)
        out[name] = (scores, evaluate_model_dir(path, world))
    return out


# The skills whose answers the models can generate. zahlen's answer is a number word from the question, which
# these 0.4M-parameter character models rank well (held-out log-likelihood) but cannot copy when generating: every
# model, the zahlen expert included, mostly answers one favourite number, so its chat category measures luck
# (the zahlen expert 3.6 vs the base 1.2 on one machine's world, 1.8 vs 2.7 on another seed's; docs/demo-world.md).
GENERATED = ("artikel", "verben")


def generated_mean(scores: dict) -> float:
    return statistics.mean(scores["categories"][s] for s in GENERATED)


def test_each_expert_answers_its_own_skill_in_chat_better_than_the_base(chat_and_heldout):
    base_chat, base_heldout = chat_and_heldout["base"]
    for skill in SKILLS:
        chat, heldout = chat_and_heldout[skill]
        assert heldout[skill] > base_heldout[skill] + 0.3, skill  # ranked: every expert, zahlen included
        if skill in GENERATED:  # generated and judged
            assert chat["categories"][skill] > base_chat["categories"][skill] + 2, skill


def test_the_merge_keeps_every_skill_above_the_base_in_held_out_and_in_chat(chat_and_heldout):
    """A merge of the three experts holds all three skills: above the base on every held-out skill and on the chat
    categories it can generate. Whether it is also above the best expert in chat, as it is on held-out
    log-likelihood, is not asserted: for a fixed recipe the two disagree on some worlds (log-likelihood and
    generation disagree for merges), which is why a search can score generated answers (issue 25)."""
    base_chat, base_heldout = chat_and_heldout["base"]
    merge_chat, merge_heldout = chat_and_heldout["merge"]
    assert all(merge_heldout[s] > base_heldout[s] + 0.2 for s in SKILLS), (merge_heldout, base_heldout)
    assert statistics.mean(merge_heldout.values()) > max(statistics.mean(h.values()) for s, (_, h) in
                                                         chat_and_heldout.items() if s in SKILLS)
    assert generated_mean(merge_chat) > generated_mean(base_chat) + 0.5, (merge_chat, base_chat)
