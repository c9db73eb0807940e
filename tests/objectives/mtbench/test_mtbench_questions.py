"""Question sets (FastEval JSON, FastChat JSONL), judge prompts (own, per language, or from a file)."""

from __future__ import annotations

import json

import pytest

from objectives.errors import UserError
from objectives.mtbench.prompts import builtin_prompts, judge_messages, load_prompts, prompt_name
from objectives.mtbench.questions import load_questions


def test_fasteval_and_fastchat_layouts(fasteval_dir, world):
    de = load_questions(fasteval_dir / "questions_de.json")
    assert len(de) == 80 and de[0].question_id == "81" and len({q.category for q in de}) == 8
    assert sum(q.reference is not None for q in de) > 0
    demo = load_questions(world.mtbench_questions)
    assert len(demo) == 80 and all(q.reference and q.keywords and len(q.turns) == 2 for q in demo)
    assert len(load_questions(world.mtbench_questions, limit=3)) == 3


@pytest.mark.parametrize(
    "content, suffix, match",
    [({"81": {"category": "writing", "turns": ["only one"]}}, ".json", "question '81'.*turns"),
     ({"82": {"turns": ["a", "b"]}}, ".json", "question '82'.*category"),
     (42, ".json", "unknown question layout"),
     ([{"question_id": 7, "category": "math", "turns": ["a", "b"], "reference": "x"}], ".json", "question 7.*reference")],
)
def test_malformed_question_file_names_the_question(tmp_path, content, suffix, match):
    p = tmp_path / f"q{suffix}"
    p.write_text(json.dumps(content))
    with pytest.raises(UserError, match=match):
        load_questions(p)


def test_missing_question_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_questions(tmp_path / "nope.jsonl")


def test_builtin_prompts_language_and_turns(world):
    q = load_questions(world.mtbench_questions)[0]
    answers = ["ERSTE ANTWORT", "ZWEITE ANTWORT"]
    de, en = builtin_prompts("de"), builtin_prompts("en")
    assert de.keys() == en.keys() and de["single-v1"] != en["single-v1"]
    m0 = judge_messages(de, q, answers, 0)[-1]["content"]
    assert q.turns[0] in m0 and "ERSTE ANTWORT" in m0 and q.reference[0] in m0 and "ZWEITE" not in m0
    assert "[[" in m0 and "Deutsch" in m0
    m1 = judge_messages(de, q, answers, 1)[-1]["content"]
    assert all(t in m1 for t in [*q.turns, *answers, *q.reference]) and "zweite" in m1.lower()
    assert prompt_name(q, 1) == "single-math-v1-multi-turn"
    with pytest.raises(UserError, match="language"):
        builtin_prompts("fr")


def test_fasteval_prompt_file_by_path(fasteval_dir):
    prompts = load_prompts(fasteval_dir / "judge_prompts_de.json")
    raw = json.loads((fasteval_dir / "judge_prompts_de.json").read_text())
    q = load_questions(fasteval_dir / "questions_de.json")[0]
    msgs = judge_messages(prompts, q, ["A1", "A2"], 1)
    assert msgs[0] == {"role": "system", "content": raw["single-v1-multi-turn"]["system_prompt"]}
    assert msgs[1]["content"] == raw["single-v1-multi-turn"]["prompt_template"].format(
        question_1=q.turns[0], question_2=q.turns[1], answer_1="A1", answer_2="A2")


def test_fastchat_jsonl_prompts_read_as_the_same_prompts(fasteval_dir, tmp_path):
    """FastChat's judge_prompts.jsonl layout (one record per line, keyed by `name`, with fields FastChat adds)."""
    raw = json.loads((fasteval_dir / "judge_prompts_de.json").read_text())
    lines = [json.dumps({"name": name, "type": "single", "category": "general", "output_format": "[[rating]]",
                         **rec}) for name, rec in raw.items()]
    jsonl = tmp_path / "judge_prompts.jsonl"
    jsonl.write_text("\n".join(lines) + "\n\n")
    assert load_prompts(jsonl) == load_prompts(fasteval_dir / "judge_prompts_de.json")
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(line for line in lines if '"single-math-v1"' not in line))
    with pytest.raises(UserError, match="'single-math-v1' is missing"):
        load_prompts(short)
    nameless = tmp_path / "nameless.jsonl"
    nameless.write_text(json.dumps({"prompt_template": "x"}) + "\n")
    with pytest.raises(UserError, match="not a FastEval/FastChat judge prompts file"):
        load_prompts(nameless)
