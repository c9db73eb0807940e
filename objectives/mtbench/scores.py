"""Scores from judge replies, exactly as FastEval aggregates them.

A rating is the first ``[[x]]`` in the reply, falling back to the first ``[x]``; replies with neither, or with
a rating outside 1-10, are dropped and counted as unparsed. ``first_turn`` / ``second_turn`` are means over the rated judgments of that turn,
``categories`` means over both turns (in order of first appearance), ``average`` = (first + second) / 2.
Means use :func:`statistics.mean` (exact rational arithmetic), so rescoring FastEval's published
``judge-replies.json`` reproduces its ``scores.json`` bit for bit.
"""

from __future__ import annotations

import ast
import re
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path

from objectives.errors import UserError
from objectives.mtbench.questions import Question
from objectives.schema import load_json

__all__ = ["FASTEVAL_KEYS", "STANDIN_LABEL", "compute_scores", "load_judge_replies", "parse_rating"]

_DOUBLE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_SINGLE = re.compile(r"\[(\d+\.?\d*)\]")

FASTEVAL_KEYS = ("first_turn", "second_turn", "categories", "average")
# Written into every stand-in judge reply and every output derived from one.
STANDIN_LABEL = "NOT an MT-Bench score: offline stand-in judge (reference key words, else character n-gram overlap)"


def parse_rating(reply: str) -> int | float | None:
    """The rating in a judge reply (``[[x]]``, else ``[x]``), or ``None`` when there is none or it lies outside
    MT-Bench's scale of 1 to 10 (``[[11]]``, ``[[0]]``: the judge broke the format)."""
    match = _DOUBLE.search(reply) or _SINGLE.search(reply)
    rating = ast.literal_eval(match.group(1)) if match else None
    return rating if rating is not None and 1 <= rating <= 10 else None


def _mean(xs: list) -> float | None:
    return statistics.mean(xs) if xs else None


def compute_scores(replies: Iterable[Mapping], questions: Iterable[Question]) -> dict:
    """FastEval's ``scores.json`` (``first_turn``, ``second_turn``, ``categories``, ``average``) plus
    ``counts`` (rated / unparsed judgments per turn) and, for stand-in replies, ``label``."""
    category = {q.question_id: q.category for q in questions}
    turns: dict[int, list] = {0: [], 1: []}
    cats: dict[str, list] = {}
    unparsed = {0: 0, 1: 0}
    standin = False
    for i, item in enumerate(replies):
        try:
            qid, turn, reply = str(item["question_id"]), int(item["turn_number"]), item["judge_reply"]
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"judge replies item {i}: needs `question_id`, `turn_number` (0 or 1) and `judge_reply`, got {item!r:.120}"
            ) from None
        if qid not in category:
            raise UserError(f"judge replies item {i}: question id {qid!r} is not in the question file; pass the questions that were judged")
        if turn not in turns:
            raise UserError(f"judge replies item {i}: `turn_number` must be 0 or 1, but got {turn}")
        standin = standin or STANDIN_LABEL in str(reply)
        rating = parse_rating(str(reply))
        if rating is None:
            unparsed[turn] += 1
            continue
        turns[turn].append(rating)
        cats.setdefault(category[qid], []).append(rating)
    first, second = _mean(turns[0]), _mean(turns[1])
    scores = {
        "first_turn": first,
        "second_turn": second,
        "categories": {c: statistics.mean(r) for c, r in cats.items()},
        "average": (first + second) / 2 if first is not None and second is not None else None,
        "counts": {
            "first_turn": len(turns[0]),
            "second_turn": len(turns[1]),
            "unparsed_first_turn": unparsed[0],
            "unparsed_second_turn": unparsed[1],
        },
    }
    if standin:
        scores["label"] = STANDIN_LABEL
    return scores


def load_judge_replies(path: str | Path) -> list[dict]:
    """Read a FastEval ``judge-replies.json`` (a list of ``{question_id, turn_number, judge_reply}``)."""
    p = Path(path)
    data = load_json(p, "pass a FastEval judge-replies.json")
    if not isinstance(data, list):
        raise UserError(f"{p}: expected a list of judge replies (FastEval layout), got {type(data).__name__}")
    return data
