"""The chat objective (``objective.chat``): what the final measurement measures, inside the search.

The candidate answers two-turn questions (MT-Bench format, :func:`~objectives.mtbench.questions.load_questions`)
in its own chat template (:class:`~objectives.mtbench.generate.LocalChatModel`; the second turn sees the first
answer), the configured judge (:func:`~objectives.mtbench.judges.make_judge`: ``standin``, ``openai``, ``hf``)
rates each turn 1-10, and a question's value is its mean rating mapped to 0..1, ``(rating - 1) / 9``. The chat
score is the mean over the questions (:data:`~objectives.config.CHAT` among a rung's task scores); it enters the
primary fitness with ``objective.chat.weight`` (:func:`objectives.fitness.aggregate`).

Rungs: rung ``i`` of the objective answers the first ``chat.rungs[i]`` questions of the file; with the previous
rung's values only the questions it did not answer are asked and judged. The held-out split answers
``test_questions`` (all of them), or has no chat component without that file.

Judgements are cached by (question id and content, turn, the answers the judge sees, judge identity): an answer
given before (common among similar merges, and greedy decoding repeats itself) is never judged twice. The cache
is a file when the objective is given a path (the search keeps it in the run folder and its workers read each
other's judgements), else in memory. ``max_judge_calls`` bounds the calls: the judgements held by the cache plus
failed calls; a rung that would go past it raises :class:`JudgeBudgetSpent` before calling the judge.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objectives.config import ChatConfig
from objectives.errors import UserError, first_line
from objectives.lmeval import mean_and_stderr
from objectives.mtbench.cache import ReplyCache, cached_replies
from objectives.mtbench.client import ERROR_REPLY
from objectives.mtbench.config import MTBenchConfig
from objectives.mtbench.generate import ChatModel, LocalChatModel, generate_answers
from objectives.mtbench.judges import JudgeItem, judge_scope, make_judge
from objectives.mtbench.prompts import builtin_prompts, judge_messages, load_prompts
from objectives.mtbench.questions import Question, load_questions
from objectives.mtbench.scores import parse_rating
from objectives.templates import resolve_chat_template

__all__ = ["ChatObjective", "ChatScore", "JudgeBudgetSpent", "JudgementCache", "normalise",
           "overlap_problems", "shared_questions"]



class JudgeBudgetSpent(UserError):
    """``objective.chat.max_judge_calls`` would be exceeded: the judge is not called (a search stops)."""


def normalise(rating: float) -> float:
    """A 1-10 rating on the fitness scale 0..1."""
    return (rating - 1) / 9


def _turn_texts(questions: tuple[Question, ...]) -> set[str]:
    return {" ".join(t.split()).casefold() for q in questions for t in q.turns}


def shared_questions(questions: tuple[Question, ...], others: tuple[Question, ...]) -> list[str]:
    """Ids of ``questions`` with a turn whose text (whitespace and case aside) is a turn of one of ``others``."""
    seen = _turn_texts(others)
    return [q.question_id for q in questions if _turn_texts((q,)) & seen]


def overlap_problems(chat: ChatConfig, final: str | None) -> list[str]:
    """The search's chat questions must stay apart from the final measurement (``mtbench.questions``), and the
    held-out chat questions from the search's; a file that cannot be read is left to the objective's checks,
    except the final set (it cannot be checked then)."""
    try:
        search = load_questions(chat.questions)
        test = load_questions(chat.test_questions) if chat.test_questions else ()
    except UserError:
        return []  # reported by ChatObjective (objective.chat.questions / test_questions)
    out = []
    if final is not None:
        try:
            final_qs = load_questions(final)
        except UserError as err:
            return [f"objective.chat.questions cannot be checked against mtbench.questions {final!r}, which does not "
                    f"load ({first_line(err)}): give mtbench.questions a readable question file, or set it to null"]
        shared = shared_questions(search, final_qs)
        if shared:
            out.append(f"objective.chat.questions {chat.questions!r} shares {len(shared)} question(s) with "
                       f"mtbench.questions {final!r} (same turn text; first: {shared[0]!r}): the final measurement "
                       "must stay unseen by the search: remove them from the search's question file")
    shared = shared_questions(test, search)
    if shared:
        out.append(f"objective.chat.test_questions {chat.test_questions!r} shares {len(shared)} question(s) with "
                   f"objective.chat.questions {chat.questions!r} (first: {shared[0]!r}): held-out questions must be "
                   "unseen by the search: remove them from one of the files")
    return out


class JudgementCache(ReplyCache):
    """A :class:`ReplyCache` that also reads the judgements other processes (the search's other workers) have
    appended to its file since it last looked (:meth:`refresh`)."""

    def __init__(self, path: str | Path | None, scope: Any):
        super().__init__(None, scope)
        self.path, self._offset = (Path(path) if path is not None else None), 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.refresh()

    def refresh(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # complete lines only: another process may be writing the last one
        for line in data[:end].decode("utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
                self.replies[str(rec["key"])] = str(rec["reply"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut off by a kill
        self._offset += end


@dataclass(frozen=True)
class ChatScore:
    """One split's (or rung's) chat component: the mean of the question values, their stderr, questions rated,
    ``values`` = ``{question index in its file: value in 0..1}`` and the judge calls this score made."""

    score: float
    stderr: float | None
    n: int
    values: dict[int, float] = field(repr=False)
    judge_calls: int = 0


class ChatObjective:
    """``objective.chat`` loaded: questions, judge prompts, the judge (made at its first use), the cache.

    Raises :class:`UserError` naming every problem of the section (question files missing or malformed, rungs
    larger than the file, an unknown chat template or judge prompts file)."""

    def __init__(self, cfg: ChatConfig, *, cache_path: str | Path | None = None, judge=None):
        """``cache_path``: the judgement cache's file (None: in memory); ``judge``: a judge backend to use instead
        of ``cfg.judge``'s (tests)."""
        self.cfg, self._judge, problems = cfg, judge, []
        self.questions, self.test_questions = self._load(cfg.questions, "questions", problems), ()
        if cfg.test_questions:
            self.test_questions = self._load(cfg.test_questions, "test_questions", problems)
        too_big = [k for k in cfg.rungs or [] if k != "all" and self.questions and k > len(self.questions)]
        if too_big:
            problems.append(f"objective.chat.rungs: {too_big[0]} questions is more than the {len(self.questions)} of "
                            f"{cfg.questions!r}: lower it or use 'all'")
        try:
            self.template = resolve_chat_template(cfg.chat_template, "objective.chat.chat_template")
            self.prompts = load_prompts(cfg.judge.prompts) if cfg.judge.prompts else builtin_prompts(cfg.language)
        except UserError as err:
            problems.append(str(err))
        if problems:
            raise UserError("; ".join(problems))
        prompts = json.dumps(self.prompts, sort_keys=True, ensure_ascii=False)
        self.cache = JudgementCache(cache_path, [judge_scope(cfg.judge), hashlib.sha256(prompts.encode()).hexdigest()])
        self.failed_calls = 0
        self.answering = MTBenchConfig(language=cfg.language, max_new_tokens=cfg.max_new_tokens,
                                       batch_size=cfg.batch_size, temperatures=cfg.temperatures,
                                       default_temperature=cfg.default_temperature, system_prompt=cfg.system_prompt,
                                       seed=cfg.seed, judge=cfg.judge)

    @staticmethod
    def _load(source: str, key: str, problems: list[str]) -> tuple[Question, ...]:
        if not Path(source).expanduser().is_file():
            problems.append(f"objective.chat.{key} {source!r} does not exist: give a question file in the MT-Bench "
                            "format (FastChat .jsonl or FastEval .json)")
            return ()
        try:
            return load_questions(Path(source).expanduser())
        except UserError as err:
            problems.append(f"objective.chat.{key}: {err}")
            return ()

    @property
    def judge(self):
        """The judge backend, made at its first use (a local ``hf`` judge loads its model then); an ``openai``
        judge answers one probe request first unless ``judge.probe`` is off (not counted as a judge call)."""
        if self._judge is None:
            judge = make_judge(self.cfg.judge)
            if self.cfg.judge.probe and hasattr(judge, "probe"):
                try:
                    judge.probe()
                except UserError as err:
                    raise UserError("objective.chat: " + str(err).replace("mtbench.judge", "objective.chat.judge")) from None
            self._judge = judge
        return self._judge

    # -- which questions -----------------------------------------------------------------------------------

    def size(self, rung: int, rungs: int) -> int:
        """Questions of search rung ``rung`` (of ``rungs``, the objective's; negative counts from the end)."""
        sizes = self.cfg.rungs or ["all"] * rungs
        k = sizes[rung % rungs]
        return len(self.questions) if k == "all" else k

    def questions_of(self, split: str, rung: int = -1, rungs: int = 1) -> tuple[Question, ...]:
        """The questions of ``split`` (search: of ``rung``); the held-out split: ``test_questions`` (may be none)."""
        return self.test_questions if split == "test" else self.questions[:self.size(rung, rungs)]

    def record(self) -> dict[str, Any]:
        """The question sets, as the objective's record stores them."""
        return {"questions": self.cfg.questions, "ids": [q.question_id for q in self.questions],
                "rungs": self.cfg.rungs, "test_questions": self.cfg.test_questions,
                "test_ids": [q.question_id for q in self.test_questions]}

    # -- scoring -------------------------------------------------------------------------------------------

    def chat_model(self, model, tokenizer) -> LocalChatModel:
        """The resident ``model`` as a chat model (its own template; ``chat_template`` for one without)."""
        if not tokenizer.chat_template and self.template is None:
            raise UserError("objective.chat: the candidate's tokenizer has no chat template: set "
                            "objective.chat.chat_template (chatml, a Jinja template or a .jinja file)")
        # progress bars only when asked for (merge-search --verbose), as for the lm-eval tasks beside it
        return LocalChatModel(model, tokenizer, device=str(model.device), batch_size=self.cfg.batch_size,
                              seed=self.cfg.seed, chat_template=self.template,
                              progress=bool(os.environ.get("MERGE_SEARCH_VERBOSE")))

    def score(self, model, tokenizer, *, split: str = "search", rung: int = -1, rungs: int = 1,
              previous: dict[int, float] | None = None) -> ChatScore | None:
        """:meth:`score_with` the resident ``model``; None for a held-out split without ``test_questions``."""
        if not self.questions_of(split, rung, rungs):
            return None
        return self.score_with(self.chat_model(model, tokenizer), split=split, rung=rung, rungs=rungs,
                               previous=previous)

    def score_with(self, chat_model: ChatModel, *, split: str = "search", rung: int = -1, rungs: int = 1,
                   previous: dict[int, float] | None = None) -> ChatScore | None:
        """Answer the questions of ``split``/``rung`` that ``previous`` (the values of an earlier rung of the same
        split) lacks, judge the answers and score all of the rung's questions."""
        questions = self.questions_of(split, rung, rungs)
        if not questions:
            return None
        previous = previous or {}
        todo = [i for i in range(len(questions)) if i not in previous]
        values = {i: v for i, v in previous.items() if i < len(questions)}
        calls = 0
        if todo:
            asked = tuple(questions[i] for i in todo)
            answers = generate_answers(chat_model, asked, self.answering, desc=f"chat objective ({split})")
            ratings, calls = self.rate(asked, answers)
            values.update({i: normalise(sum(r) / len(r)) for i, q in zip(todo, asked)
                           if (r := ratings[q.question_id])})
        if not values:
            raise UserError(f"objective.chat: not one of {len(questions)} answers got a rating from 1 to 10: check that "
                            "the judge answers in MT-Bench's format (objective.chat.judge)")
        score, stderr = mean_and_stderr(list(values.values()))
        return ChatScore(score=score, stderr=stderr, n=len(values), values=values, judge_calls=calls)

    def rate(self, questions: tuple[Question, ...], answers: dict[str, list[str]]) -> tuple[dict[str, list], int]:
        """``({question id: ratings of its rated turns}, judge calls made)``; cached judgements are reused."""
        items = [JudgeItem(q, turn, tuple(answers[q.question_id]),
                           tuple(judge_messages(self.prompts, q, answers[q.question_id], turn)))
                 for q in questions for turn in (0, 1)]
        keys = [[i.question.question_id, _digest(i.question), i.turn, list(i.answers[:i.turn + 1])] for i in items]
        self.cache.refresh()
        calls = 0

        def ask(todo: list[int], on_reply):
            nonlocal calls
            self.check_budget(len(todo))
            calls = len(todo)
            return self.judge.judge([items[i] for i in todo], on_reply=on_reply)

        replies = cached_replies(self.cache, keys, ask)
        errors = [r for r in replies if r.startswith(ERROR_REPLY)]
        if errors:
            self.failed_calls += len(errors)
            raise UserError(f"objective.chat: the judge did not answer {len(errors)} of {len(replies)} judgements "
                            f"({errors[0][len(ERROR_REPLY):].strip()[:200]}): check objective.chat.judge")
        out: dict[str, list] = {q.question_id: [] for q in questions}
        for item, reply in zip(items, replies):
            rating = parse_rating(reply)
            if rating is not None:
                out[item.question.question_id].append(rating)
        return out, calls

    @property
    def spent(self) -> int:
        """Judge calls counted against ``max_judge_calls``: the cache's judgements (a file: every process's, every
        run's) plus the calls that failed here."""
        self.cache.refresh()
        return len(self.cache.replies) + self.failed_calls

    def check_budget(self, wanted: int = 0) -> None:
        """Raise :class:`JudgeBudgetSpent` when ``wanted`` more judge calls would exceed ``max_judge_calls`` (with
        ``wanted=0``: when it is spent entirely, before a rung generates anything)."""
        budget = self.cfg.max_judge_calls
        if budget is not None and (self.spent + wanted > budget or self.spent >= budget):
            where = f" (the judgements are kept in {self.cache.path})" if self.cache.path else ""
            raise JudgeBudgetSpent(
                f"objective.chat.max_judge_calls ({budget}) is spent: {self.spent} judge calls made"
                + (f", {wanted} more needed" if wanted else "") + f"{where}: raise objective.chat.max_judge_calls to "
                "go on")


def _digest(q: Question) -> str:
    """What the judge reads of a question besides its id (turns, references, keywords), hashed."""
    text = json.dumps([q.category, q.turns, q.reference, [k.__dict__ for k in q.keywords or ()]], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
