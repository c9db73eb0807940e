"""The chat objective (objective.chat): nested question rungs, the judgement cache, the judge budget, the
disjointness from the final MT-Bench questions, and a real expert of the demo world scored on 8 questions.

The fast tests use a question file written here, a fake chat model and a counting stand-in judge."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from objectives.chat import ChatObjective, JudgeBudgetSpent, JudgementCache, normalise, overlap_problems
from objectives.config import CHAT, ChatConfig, ObjectiveConfig
from objectives.errors import UserError
from objectives.fitness import aggregate
from objectives.mtbench.judges import StandInJudge
from objectives.schema import validate

WORDS = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun", "zehn", "elf", "zwölf",
         "dreizehn", "vierzehn", "fünfzehn", "sechzehn", "siebzehn"]


def write_questions(path, n: int = 16, prefix: str = "q", offset: int = 0):
    """``n`` two-turn questions with keywords (the answer to question i is WORDS[i + 1], to its second turn
    WORDS[i])."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(offset, offset + n):
            f.write(json.dumps({
                "question_id": f"{prefix}{i + 1}", "category": "zahlen" if i % 2 else "alltag",
                "turns": [f"Frage {i}: welche Zahl folgt auf {WORDS[i]}?", f"Und welche Zahl steht vor {WORDS[i + 1]}?"],
                "reference": [f"Es ist {WORDS[i + 1]}.", f"Es ist {WORDS[i]}."],
                "keywords": [{"accept": [WORDS[i + 1]]}, {"accept": [WORDS[i]]}]}, ensure_ascii=False) + "\n")
    return path


class FakeChat:
    """Answers turn 1 right for even questions (``wrong`` for odd ones) and turn 2 always right; records every
    conversation it was asked."""

    fingerprint = None

    def __init__(self, wrong: str = "keine Ahnung"):
        self.asked: list[list[dict]] = []
        self.wrong = wrong

    def reply_all(self, conversations, temperatures, max_new_tokens, desc="", on_reply=None):
        out = []
        for conv in conversations:
            self.asked.append(conv)
            i = int(conv[0]["content"].split(":")[0].split()[-1])
            if len(conv) > 1:
                out.append(f"Es ist {WORDS[i]}.")
            else:
                out.append(f"Es ist {WORDS[i + 1]}." if i % 2 == 0 else self.wrong)
        return out

    def first_turns(self) -> list[str]:
        return [c[-1]["content"].split(":")[0] for c in self.asked if len(c) == 1]


class CountingJudge(StandInJudge):
    def __init__(self):
        self.calls = 0

    def judge(self, items, on_reply=None):
        self.calls += len(items)
        return super().judge(items, on_reply=on_reply)


def chat_cfg(questions, **over) -> ChatConfig:
    return validate(ChatConfig, {"questions": str(questions), "rungs": [8, 16], **over}, "objective.chat")


def test_rungs_answer_nested_prefixes_and_reuse_the_earlier_answers(tmp_path):
    obj = ChatObjective(chat_cfg(write_questions(tmp_path / "q.jsonl")), judge=CountingJudge())
    model = FakeChat()
    first = obj.score_with(model, rung=0, rungs=2)
    assert first.n == 8 and sorted(first.values) == list(range(8))
    assert model.first_turns() == [f"Frage {i}" for i in range(8)] and len(model.asked) == 16  # both turns
    second = obj.score_with(model, rung=1, rungs=2, previous=first.values)
    assert second.n == 16 and len(model.asked) == 32  # only the 8 new questions were asked
    assert model.first_turns()[8:] == [f"Frage {i}" for i in range(8, 16)]
    # even questions: both turns right (10, 10) -> 1.0; odd ones: turn 1 wrong (1, 10) -> 0.5
    assert first.values == {i: 1.0 if i % 2 == 0 else normalise(5.5) for i in range(8)}
    assert second.score == pytest.approx(0.75) and second.judge_calls == 16


def test_null_rungs_answer_every_question_at_the_first_rung(tmp_path):
    obj = ChatObjective(chat_cfg(write_questions(tmp_path / "q.jsonl", n=6), rungs=None), judge=CountingJudge())
    model = FakeChat()
    assert obj.score_with(model, rung=0, rungs=3).n == 6 and len(model.asked) == 12


def test_the_cache_judges_an_answer_once_per_judge(tmp_path):
    questions = write_questions(tmp_path / "q.jsonl", n=8)
    judge = CountingJudge()
    cache = tmp_path / "run" / "judgements.jsonl"
    obj = ChatObjective(chat_cfg(questions, rungs=None), judge=judge, cache_path=cache)
    a = obj.score_with(FakeChat(), rung=0)
    assert judge.calls == 16 and a.judge_calls == 16
    b = obj.score_with(FakeChat(), rung=0)  # another candidate, the same answers: nothing judged again
    assert judge.calls == 16 and b.judge_calls == 0 and b.values == a.values
    # another answer to the odd questions' first turn: those 4 judgements are new, and so are their second turns'
    # (the judge of turn 2 reads the first answer too); the even questions are served from the cache
    c = obj.score_with(FakeChat(wrong="Das weiß ich nicht."), rung=0)
    assert judge.calls == 24 and c.judge_calls == 8
    # the file outlives the process: a new objective on the same file (a resumed search, another worker) asks nothing
    again = ChatObjective(chat_cfg(questions, rungs=None), judge=judge, cache_path=cache)
    again.score_with(FakeChat(), rung=0)
    assert judge.calls == 24
    # another judge identity (here: other judge prompts) is not served from the cache
    other = ChatObjective(chat_cfg(questions, rungs=None, language="en"), judge=judge, cache_path=cache)
    other.score_with(FakeChat(), rung=0)
    assert judge.calls == 40


def test_a_cache_file_sees_what_another_process_appended(tmp_path):
    path = tmp_path / "c.jsonl"
    a, b = JudgementCache(path, "s"), JudgementCache(path, "s")
    a.put(a.key("x"), "[[7]]")
    assert b.key("x") not in b.replies
    b.refresh()
    assert b.replies[b.key("x")] == "[[7]]"


def test_a_paid_judge_needs_a_budget():
    paid = {"backend": "openai", "base_url": "https://api.example.com/v1", "model": "gpt-4"}
    data = {"tasks": [{"name": "arc_de"}], "rungs": [50, "all"], "chat": {"questions": "q.jsonl", "judge": paid}}
    with pytest.raises(UserError, match=r"chat: max_judge_calls is required with judge\.backend 'openai' \(a paid "
                                        r"judge\) but is not set: set objective\.chat\.max_judge_calls"):
        validate(ObjectiveConfig, data, "objective")
    data["chat"]["max_judge_calls"] = 100
    assert validate(ObjectiveConfig, data, "objective").chat.max_judge_calls == 100


def test_a_judge_that_does_not_answer_its_probe_is_one_error_naming_the_keys(tmp_path):
    dead = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "retries": 0, "backoff_s": 0,
            "timeout_s": 2, "api_key_env": None}
    obj = ChatObjective(chat_cfg(write_questions(tmp_path / "q.jsonl"), judge=dead, max_judge_calls=100))
    with pytest.raises(UserError, match=r"^objective\.chat: the judge at http://127\.0\.0\.1:9/v1 did not answer a probe "
                                        r".*objective\.chat\.judge\.probe: false"):
        obj.score_with(FakeChat(), rung=0, rungs=2)


def test_the_search_stops_when_the_judge_budget_is_spent(tmp_path):
    judge = CountingJudge()
    obj = ChatObjective(chat_cfg(write_questions(tmp_path / "q.jsonl"), max_judge_calls=20), judge=judge)
    first = obj.score_with(FakeChat(), rung=0, rungs=2)  # 16 calls
    with pytest.raises(JudgeBudgetSpent, match=r"objective\.chat\.max_judge_calls \(20\) is spent: 16 judge calls "
                                               r"made, 16 more needed: raise objective\.chat\.max_judge_calls"):
        obj.score_with(FakeChat(), rung=1, rungs=2, previous=first.values)
    assert judge.calls == 16  # refused before the judge was called
    # answers judged before cost nothing, so the budget does not stop them
    assert obj.score_with(FakeChat(), rung=0, rungs=2).judge_calls == 0


def test_chat_settings_that_disagree_with_the_objective_are_refused():
    data = {"tasks": [{"name": "arc_de"}], "rungs": [50, "all"], "aggregate": "expert_relative",
            "reference": {"arc_de": 0.5}, "chat": {"questions": "q.jsonl", "rungs": [8, 16, 32]}}
    with pytest.raises(UserError) as e:
        validate(ObjectiveConfig, data, "objective")
    assert "chat.rungs: one entry per rung of objective.rungs (2" in str(e.value)
    assert "needs reference.chat" in str(e.value)
    with pytest.raises(UserError, match=r"rungs: must be >= 1, growing strictly"):
        validate(ChatConfig, {"questions": "q.jsonl", "rungs": [16, 8]}, "objective.chat")


def test_the_chat_score_is_a_weighted_part_of_the_fitness():
    data = {"tasks": [{"name": "a", "weight": 1.0}, {"name": "b", "weight": 1.0}],
            "chat": {"questions": "q.jsonl", "weight": 2.0}, "constraints": [{"objective": CHAT, "min": 0.5}]}
    spec = validate(ObjectiveConfig, data, "objective")
    assert aggregate(spec, {"a": 0.5, "b": 1.0, CHAT: 0.25}) == pytest.approx((0.5 + 1.0 + 2 * 0.25) / 4)
    assert aggregate(spec, {"a": 0.5, "b": 1.0}) == pytest.approx(0.75)  # a split without chat: the tasks alone
    assert aggregate(spec.model_copy(update={"aggregate": "min"}), {"a": 0.5, "b": 1.0, CHAT: 0.25}) == 0.25


def test_question_files_missing_malformed_or_too_small_are_one_problem_each(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": "1", "category": "x", "turns": ["only one"]}\n', encoding="utf-8")
    small = write_questions(tmp_path / "small.jsonl", n=4)
    with pytest.raises(UserError) as e:
        ChatObjective(chat_cfg(small, rungs=[8, 16], test_questions=str(bad)))
    msg = str(e.value)
    assert "objective.chat.test_questions:" in msg and "`turns` must be a list of 2" in msg
    assert "objective.chat.rungs: 8 questions is more than the 4 of" in msg
    with pytest.raises(UserError, match=r"objective\.chat\.questions '.*nowhere\.jsonl' does not exist"):
        ChatObjective(chat_cfg(tmp_path / "nowhere.jsonl"))


def test_search_questions_sharing_a_question_with_the_final_set_are_refused(tmp_path):
    search = write_questions(tmp_path / "search.jsonl", n=8, prefix="s")
    final = write_questions(tmp_path / "final.jsonl", n=8, offset=8)
    assert overlap_problems(chat_cfg(search), str(final)) == []
    # the final set's second question, spelled with other spacing and case, under another id
    rec = json.loads(final.read_text(encoding="utf-8").splitlines()[1])
    rec["question_id"], rec["turns"] = "s99", ["  " + rec["turns"][0].upper(), "Und sonst?"]
    with search.open("a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    [problem] = overlap_problems(chat_cfg(search), str(final))
    assert str(search) in problem and str(final) in problem and "shares 1 question(s)" in problem
    assert "mtbench.questions" in problem and "'s99'" in problem
    held = overlap_problems(chat_cfg(write_questions(tmp_path / "s2.jsonl", n=8), test_questions=str(search)), None)
    assert len(held) == 1 and "objective.chat.test_questions" in held[0] and "shares 8 question(s)" in held[0]


# --- the demo world ------------------------------------------------------------------------------------------


def world_chat_questions(world):
    return getattr(world, "chat_questions", None) or world.mtbench_questions.with_name("search_question.jsonl")


def test_a_demo_expert_scores_a_chat_value_on_a_rung_of_8_questions(world):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from objectives.objective import Objective

    task = world.tasks["search"]["verben"]
    data = {"include_paths": [str(world.include_path)], "include_defaults": False, "rungs": [8, 16],
            "tasks": [{"name": task, "subset": 16}],
            "chat": {"questions": str(world_chat_questions(world)), "rungs": [8, 16], "weight": 1.0,
                     "max_new_tokens": 48}}
    judge = CountingJudge()
    obj = Objective(validate(ObjectiveConfig, data, "objective"), judge=judge)
    path = world.experts["verben"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        res = obj.score(model, tok, rung=0)
    assert res.n == {task: 8, CHAT: 8} and judge.calls == 16
    assert 0.0 <= res.tasks[CHAT] <= 1.0 and res.stderr[CHAT] is not None
    assert res.score == pytest.approx((res.tasks[task] + res.tasks[CHAT]) / 2)
    # the verben expert answers its own category better than the numbers questions
    ids = obj.chat.record()["ids"]
    cats = {q.question_id: q.category for q in obj.chat.questions}
    by_cat = {c: [v for i, v in res.values[CHAT].items() if cats[ids[i]] == c] for c in ("verben", "zahlen")}
    assert sum(by_cat["verben"]) / len(by_cat["verben"]) >= sum(by_cat["zahlen"]) / len(by_cat["zahlen"])
    assert obj.record()[CHAT]["ids"][:2] == ["s1", "s2"]
    held = obj.score(model, tok, split="test")  # no test_questions: the held-out split has no chat part
    assert CHAT not in held.tasks


def chat_run_config(world, tmp_path, questions):
    """A demo-world run config (rungs 20 -> 40 items per task) with a chat objective of 8 -> 16 questions."""
    from demo_configs import write_config

    from search.config import load_run_config

    path = write_config(world, tmp_path / "c.yaml", objective={
        "chat": {"questions": str(questions), "rungs": [8, 16], "max_new_tokens": 48, "batch_size": 16}})
    data = yaml.safe_load(path.read_text())
    data["mtbench"] = {"questions": str(world.mtbench_questions)}
    path.write_text(yaml.safe_dump(data))
    return load_run_config(path)


def test_the_search_refuses_chat_questions_shared_with_the_final_set(world, tmp_path):
    from search.rundir import RunDir
    from search.stages import optimize

    mixed = tmp_path / "mixed.jsonl"
    shutil.copy(world_chat_questions(world), mixed)
    with mixed.open("a", encoding="utf-8") as f:
        f.write(world.mtbench_questions.read_text(encoding="utf-8").splitlines()[0] + "\n")
    problems = optimize.problems(chat_run_config(world, tmp_path, mixed), RunDir(tmp_path / "run"))
    shared = [p for p in problems if "shares" in p]
    assert len(shared) == 1 and str(mixed) in shared[0] and str(world.mtbench_questions) in shared[0]
    assert "shares 1 question(s)" in shared[0]
    clean = optimize.problems(chat_run_config(world, tmp_path, world_chat_questions(world)), RunDir(tmp_path / "run"))
    assert clean == []


def test_a_trial_records_the_chat_score_rung_by_rung_and_keeps_its_judgements(world, tmp_path):
    import torch

    from search.rundir import TrialAttr
    from search.stages.optimize import warm_params
    from search.stages.trial_worker import MergeEvalWorker

    cfg = chat_run_config(world, tmp_path, world_chat_questions(world))
    cache = tmp_path / "run" / "chat-judgements.jsonl"
    worker = MergeEvalWorker(cfg, chat_cache=cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker.setup()
        params = warm_params(cfg)[0]
        first = worker.run_rung(0, params, 1, 0)
        second = worker.run_rung(0, params, 1, 1)
    finally:
        torch.set_num_threads(threads)
    assert first.attrs[TrialAttr.ITEMS_PER_TASK][CHAT] == 8 and second.attrs[TrialAttr.ITEMS_PER_TASK][CHAT] == 16
    assert 0 <= second.attrs[TrialAttr.SCORES][CHAT] <= 1 and second.items == 3 * 40 + 16
    # rung 2 judged only the 8 new questions: 16 + 16 judgements in the run folder's cache, none twice
    lines = cache.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 32 and len({json.loads(line)["key"] for line in lines}) == 32
