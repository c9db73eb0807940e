"""FastEval-compatible aggregation: rating parsing, unparsed counting, and conformance on 34 published reports."""

from __future__ import annotations

import json

import pytest

from objectives.errors import UserError
from objectives.mtbench.questions import Question
from objectives.mtbench.scores import compute_scores, parse_rating
from search.cli import main


@pytest.mark.parametrize(
    "reply, rating",
    [("Rating: [[8]]", 8), ("Note: [[7.5]]", 7.5), ("[3] shown first, then [[9]]", 9), ("only [6]", 6),
     ("Rating: [[x]]", None), ("no rating", None), ("[[10]] and [[2]]", 10),
     ("Rating: [[11]]", None), ("Rating: [[0]]", None), ("[[1]]", 1), ("only [12]", None)],  # MT-Bench's 1-10
)
def test_parse_rating(reply, rating):
    assert parse_rating(reply) == rating


def test_scores_drop_and_count_unparsed():
    qs = [Question("1", "math", ("a", "b")), Question("2", "writing", ("c", "d"))]
    replies = [
        {"question_id": "1", "turn_number": 0, "judge_reply": "[[4]]"},
        {"question_id": "2", "turn_number": 0, "judge_reply": "[[8]]"},
        {"question_id": "1", "turn_number": 1, "judge_reply": "garbage"},
        {"question_id": "2", "turn_number": 1, "judge_reply": "[[3]]"},
    ]
    s = compute_scores(replies, qs)
    assert (s["first_turn"], s["second_turn"], s["average"]) == (6, 3, 4.5)
    assert s["categories"] == {"math": 4, "writing": 5.5}
    assert s["counts"] == {"first_turn": 2, "second_turn": 1, "unparsed_first_turn": 0, "unparsed_second_turn": 1}
    with pytest.raises(UserError, match="'9'"):
        compute_scores([{"question_id": 9, "turn_number": 0, "judge_reply": "[[1]]"}], qs)


def test_rescore_reproduces_all_fasteval_reports(fasteval_dir, capsys):
    reports = sorted(p for p in (fasteval_dir / "reports").iterdir() if p.is_dir())
    assert len(reports) == 34
    for report in reports:
        rc = main(["mtbench", "rescore", str(report / "judge-replies.json"),
                   "--questions", str(fasteval_dir / "questions.json"), "--json"])
        assert rc == 0
        got = json.loads(capsys.readouterr().out)
        want = json.loads((report / "scores.json").read_text())
        for key in ("first_turn", "second_turn", "average"):
            assert got[key] == pytest.approx(want[key], abs=1e-9), (report.name, key)
        assert list(got["categories"]) == list(want["categories"]), report.name
        for cat, value in want["categories"].items():
            assert got["categories"][cat] == pytest.approx(value, abs=1e-9), (report.name, cat)


def test_rescore_missing_file_is_one_line_error(tmp_path, capsys):
    assert main(["mtbench", "rescore", str(tmp_path / "nope.json"), "--questions", str(tmp_path / "q.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("merge-search: error:") and err.count("\n") == 1


def test_comparison_says_when_the_question_sets_differ():
    from objectives.mtbench.compare import comparison_table

    def scores(n, avg):
        return {"categories": {"writing": avg}, "first_turn": avg, "second_turn": avg, "average": avg,
                "counts": {"first_turn": n, "second_turn": n}}

    same = comparison_table([scores(80, 6.0), scores(80, 6.5)], ["a", "b"])
    assert "different numbers of questions" not in same
    mixed = comparison_table([scores(6, 6.0), scores(28, 6.5)], ["a", "b"])
    assert "different numbers of questions (a 6, b 28)" in mixed and "not comparable" in mixed


def test_comparison_names_different_judges_prompt_sets_and_question_sets():
    from objectives.mtbench.compare import comparison_table

    def scores(**measured):
        base = {"judge": "openai:gpt-4", "prompts": "judge_prompts_de.json 1a2b", "questions": "80 questions 9f"}
        return {"categories": {"writing": 6.0}, "first_turn": 6.0, "second_turn": 6.0, "average": 6.0,
                "counts": {"first_turn": 80, "second_turn": 80}, "measured_with": {**base, **measured}}

    assert "not comparable" not in comparison_table([scores(), scores()], ["a", "b"])
    table = comparison_table([scores(), scores(judge="standin", prompts="built-in (de) 77")], ["a", "b"])
    assert "different judges (a: openai:gpt-4; b: standin)" in table
    assert "different judge prompt sets (a: judge_prompts_de.json 1a2b; b: built-in (de) 77)" in table
    assert "question sets" not in table
    older = {k: v for k, v in scores().items() if k != "measured_with"}  # a scores.json of an older version
    assert "b: unknown" in comparison_table([scores(questions="80 questions 00"), older], ["a", "b"])


def test_scores_record_what_they_were_measured_with(tmp_path):
    from objectives.mtbench.config import MTBenchConfig
    from objectives.mtbench.prompts import builtin_prompts
    from objectives.mtbench.questions import Question
    from objectives.mtbench.run import measured_with

    qs = [Question(question_id=1, category="writing", turns=["a?", "b?"])]
    got = measured_with(MTBenchConfig(), qs, builtin_prompts("de"))
    assert got["judge"] == "standin" and got["prompts"].startswith("built-in (de) ")
    assert got["questions"].startswith("1 questions ")
    other = [Question(question_id=1, category="writing", turns=["a?", "c?"])]
    assert measured_with(MTBenchConfig(), other, builtin_prompts("de"))["questions"] != got["questions"]
