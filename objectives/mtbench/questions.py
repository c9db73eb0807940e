"""Question sets: FastEval's JSON object, FastChat's ``question.jsonl`` or a Hugging Face dataset id.

Every layout becomes a tuple of :class:`Question`; ids are strings (FastEval keys them as strings, FastChat
as ints; ``"81"`` and ``81`` name the same question).

Besides FastChat's fields a question may carry ``keywords``, one ``{"accept": [...], "reject": [...]}`` per
turn: what a correct answer says and what contradicts it. Only the offline stand-in judge reads them (the demo
world's questions have them); LLM judges ignore them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objectives.errors import UserError

__all__ = ["Keywords", "Question", "load_questions", "questions_from_records", "source_problems"]


def source_problems(source: str | None) -> list[str]:
    """A question source that cannot be loaded: none given, or a local file that does not exist (a dataset id
    is checked when it loads)."""
    if source is None:
        return ["mtbench.questions is not set: give a question file (FastEval .json, FastChat .jsonl) or a dataset id"]
    if (source.startswith((".", "/", "~")) or Path(source).suffix) and not Path(source).expanduser().is_file():
        return [f"mtbench.questions {source!r} does not exist: give a question file or a dataset id"]
    return []


@dataclass(frozen=True)
class Keywords:
    """Phrases (case-insensitive, matched as whole words) a correct answer contains / must not contain."""

    accept: tuple[str, ...]
    reject: tuple[str, ...] = ()


@dataclass(frozen=True)
class Question:
    question_id: str
    category: str
    turns: tuple[str, str]
    reference: tuple[str, ...] | None = None
    keywords: tuple[Keywords, ...] | None = None

    def keys(self, turn: int) -> Keywords | None:
        """The keywords of ``turn`` (0 or 1), the first ones when only one set is given, else ``None``."""
        return self.keywords[min(turn, len(self.keywords) - 1)] if self.keywords else None

    def ref(self, turn: int) -> str:
        """Reference answer of ``turn`` (0 or 1); the first one when only one is given."""
        assert self.reference
        return self.reference[min(turn, len(self.reference) - 1)]


def _question(qid: Any, rec: Any, source: str) -> Question:
    where = f"{source}: question {qid!r}"
    if not isinstance(rec, dict):
        raise UserError(f"{where}: must be an object with `category` and `turns`, but got {type(rec).__name__}")
    turns = rec.get("turns")
    if not isinstance(turns, list) or len(turns) != 2 or not all(isinstance(t, str) and t for t in turns):
        raise UserError(f"{where}: `turns` must be a list of 2 non-empty strings, but got {turns!r:.120}")
    category = rec.get("category")
    if not isinstance(category, str) or not category:
        raise UserError(f"{where}: `category` must be a non-empty string, but got {category!r}")
    ref = rec.get("reference")
    if ref is not None and (not isinstance(ref, list) or not ref or not all(isinstance(r, str) for r in ref)):
        raise UserError(f"{where}: `reference` must be a non-empty list of strings when given, but got {ref!r:.120}")
    keys = _keywords(rec.get("keywords"), where)
    return Question(str(qid), category, (turns[0], turns[1]), tuple(ref) if ref else None, keys)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)


def _keywords(value: Any, where: str) -> tuple[Keywords, ...] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and 1 <= len(value) <= 2 and all(
        isinstance(k, dict) and set(k) <= {"accept", "reject"} and _str_list(k.get("accept")) and k["accept"]
        and _str_list(k.get("reject", [])) for k in value)
    if not ok:
        raise UserError(f"{where}: `keywords` must be a list of 1 or 2 objects {{\"accept\": [phrases], \"reject\": "
                        f"[phrases]}} (accept non-empty), but got {value!r:.120}")
    return tuple(Keywords(tuple(k["accept"]), tuple(k.get("reject", []))) for k in value)


def questions_from_records(records: Iterable[dict], source: str) -> tuple[Question, ...]:
    """FastChat-style records (each with ``question_id``) to questions, checking ids are unique."""
    out: list[Question] = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or rec.get("question_id") is None:
            raise UserError(f"{source}: record {i + 1} has no `question_id`; every question needs one")
        out.append(_question(rec["question_id"], rec, source))
    return _unique(out, source)


def _unique(qs: list[Question], source: str) -> tuple[Question, ...]:
    seen: set[str] = set()
    for q in qs:
        if q.question_id in seen:
            raise UserError(f"{source}: question id {q.question_id!r} appears twice; ids must be unique")
        seen.add(q.question_id)
    if not qs:
        raise UserError(f"{source}: no questions found; pass a non-empty question file")
    return tuple(qs)


def _load_jsonl(path: Path) -> tuple[Question, ...]:
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{n}: invalid JSON line ({err.msg}); expected one question per line") from None
    return questions_from_records(records, str(path))


def _load_json(path: Path) -> tuple[Question, ...]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON at line {err.lineno} ({err.msg})") from None
    if isinstance(data, list):
        return questions_from_records(data, str(path))
    if isinstance(data, dict):
        return _unique([_question(k, v, str(path)) for k, v in data.items()], str(path))
    raise UserError(
        f"{path}: unknown question layout ({type(data).__name__}); expected FastEval's object keyed by "
        "question id or a list of FastChat questions"
    )


def _load_hub(dataset_id: str) -> tuple[Question, ...]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as err:  # offline, unknown id, ...: one line for the user
        raise UserError(
            f"questions {dataset_id!r} is neither a file nor a loadable Hugging Face dataset "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); pass a question file path"
        ) from None
    return questions_from_records(ds, dataset_id)


def load_questions(source: str | Path, limit: int | None = None) -> tuple[Question, ...]:
    """Load questions from a ``.json`` / ``.jsonl`` path or a Hugging Face dataset id (``owner/name``)."""
    path = Path(source)
    if path.is_file():
        qs = _load_jsonl(path) if path.suffix == ".jsonl" else _load_json(path)
    elif path.suffix in (".json", ".jsonl") or str(source).count("/") != 1:
        raise UserError(f"questions file {str(source)!r} does not exist: pass a FastEval .json or FastChat .jsonl")
    else:
        qs = _load_hub(str(source))
    return qs[:limit] if limit else qs
