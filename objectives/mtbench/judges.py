"""Judge backends and the judging stage (FastEval ``judge-replies.json`` layout).

Every backend maps a list of :class:`JudgeItem` to reply strings, in order:

- :class:`HttpJudge`: any OpenAI-compatible chat-completions endpoint (concurrent, retried; see
  :mod:`objectives.mtbench.client`);
- :class:`LocalJudge`: a local Hugging Face model folder, greedy;
- :class:`StandInJudge`: offline, for the demo world only: a turn with ``keywords`` is rated 10 when the
  answer contains an accepted phrase and no rejected one, else 1; a turn without them by character n-gram
  overlap with the reference answer. Each of its replies carries
  :data:`~objectives.mtbench.scores.STANDIN_LABEL`, which every derived output repeats.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass

from objectives.errors import UserError
from objectives.mtbench.cache import ReplyCache, cached_replies
from objectives.mtbench.client import ERROR_REPLY, HttpSettings, chat_all
from objectives.mtbench.config import JudgeConfig
from objectives.mtbench.prompts import judge_messages
from objectives.mtbench.questions import Keywords, Question
from objectives.mtbench.scores import STANDIN_LABEL

__all__ = ["HttpJudge", "JudgeItem", "LocalJudge", "StandInJudge", "judge_answers", "judge_scope", "keyword_verdict",
           "make_judge", "ngram_f1"]


@dataclass(frozen=True)
class JudgeItem:
    question: Question
    turn: int  # 0 or 1
    answers: tuple[str, str]
    messages: tuple[dict, ...]  # the judge conversation built from the prompt set


class HttpJudge:
    def __init__(self, cfg: JudgeConfig):
        self.settings = HttpSettings(
            base_url=cfg.base_url, model=cfg.model, api_key_env=cfg.api_key_env, max_tokens=cfg.max_new_tokens,
            concurrency=cfg.concurrency, retries=cfg.retries, backoff_s=cfg.backoff_s,
            max_backoff_s=cfg.max_backoff_s, timeout_s=cfg.timeout_s,
        )
        self.temperature = cfg.temperature

    def judge(self, items: list[JudgeItem], on_reply=None) -> list[str]:
        return chat_all(self.settings, [(list(i.messages), self.temperature) for i in items], desc="judging",
                        on_reply=on_reply)

    def probe(self) -> None:
        """One short request (with the configured retries): a judge that cannot answer it is a
        :class:`UserError` before any answer is generated, not a run of unrated judgments."""
        settings = dataclasses.replace(self.settings, retries=min(self.settings.retries, 1))
        [reply] = chat_all(settings, [([{"role": "user", "content": "Antworte nur mit: OK"}], 0.0)],
                           desc="judge probe")
        if reply.startswith(ERROR_REPLY):
            raise UserError(f"the judge at {self.settings.base_url} did not answer a probe request "
                            f"({reply[len(ERROR_REPLY):].strip()}): check judge.base_url, judge.model and the key, "
                            "or turn the probe off (mtbench.judge.probe: false)")


class LocalJudge:
    def __init__(self, cfg: JudgeConfig):
        from objectives.mtbench.generate import LocalChatModel

        self.model = LocalChatModel.from_pretrained(cfg.model, device=cfg.device, batch_size=cfg.batch_size)
        self.cfg = cfg

    def judge(self, items: list[JudgeItem], on_reply=None) -> list[str]:
        convs = [list(i.messages) for i in items]
        return self.model.reply_all(convs, [self.cfg.temperature] * len(convs), self.cfg.max_new_tokens, desc="judging",
                                    on_reply=on_reply)


def _ngrams(text: str, n: int) -> Counter:
    t = " ".join(text.lower().split())
    return Counter(t[i : i + n] for i in range(max(0, len(t) - n + 1)))


def ngram_f1(answer: str, reference: str, n: int = 3) -> float:
    """F1 of the character ``n``-gram multisets of two texts (0 when either is shorter than ``n``)."""
    a, r = _ngrams(answer, n), _ngrams(reference, n)
    common = sum((a & r).values())
    if not common:
        return 0.0
    p, q = common / sum(a.values()), common / sum(r.values())
    return 2 * p * q / (p + q)


_WORD = re.compile(r"[^\W\d_]+|\d+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _contains(words: list[str], phrase: str) -> bool:
    p = _words(phrase)
    return bool(p) and any(words[i:i + len(p)] == p for i in range(len(words) - len(p) + 1))


def keyword_verdict(answer: str, keys: Keywords) -> tuple[bool, str]:
    """Whether ``answer`` says what ``keys`` accept and nothing they reject (whole words, any case), and why."""
    words = _words(answer)
    said = [p for p in keys.accept if _contains(words, p)]
    wrong = [p for p in keys.reject if _contains(words, p)]
    if wrong:
        return False, f"says {wrong[0]!r}, which contradicts the reference"
    if not said:
        return False, f"does not say {keys.accept[0]!r}" + (" (or an accepted alternative)" if len(keys.accept) > 1 else "")
    return True, f"says {said[0]!r} and nothing contradicting"


class StandInJudge:
    """Offline stand-in. NOT an MT-Bench score.

    A turn with ``keywords``: rating 10 when the answer contains an accepted phrase and no rejected one, else 1
    (a person grading a one-word answer against its reference does the same). A turn without them:
    1 + round(9 * char-3-gram F1(answer, reference)), or with the question text when there is no reference
    (topicality only)."""

    def judge(self, items: list[JudgeItem], on_reply=None) -> list[str]:
        out = []
        for it in items:
            out.append(f"[{STANDIN_LABEL}] {self._verdict(it)}")
            if on_reply is not None:
                on_reply(len(out) - 1, out[-1])
        return out

    @staticmethod
    def _verdict(it: JudgeItem) -> str:
        q, answer = it.question, it.answers[it.turn]
        keys = q.keys(it.turn)
        if keys is not None:
            ok, why = keyword_verdict(answer, keys)
            return f"The answer {why}. Rating: [[{10 if ok else 1}]]"
        ref, what = (q.ref(it.turn), "reference answer") if q.reference else (q.turns[it.turn], "question")
        f1 = ngram_f1(answer, ref)
        return f"char-3-gram F1 with the {what} = {f1:.3f}. Rating: [[{1 + round(9 * f1)}]]"


def make_judge(cfg: JudgeConfig):
    """The backend named by ``cfg.backend``."""
    return {"openai": HttpJudge, "hf": LocalJudge, "standin": lambda c: StandInJudge()}[cfg.backend](cfg)


def judge_scope(cfg: JudgeConfig) -> list:
    """What a judge reply depends on besides the judge conversation itself (the reply cache's scope)."""
    if cfg.backend == "standin":
        return ["standin"]
    return [cfg.backend, cfg.base_url, cfg.model, cfg.temperature, cfg.max_new_tokens]


def judge_answers(judge, questions: tuple[Question, ...], answers: dict[str, list[str]],
                  prompts: dict[str, dict[str, str]], cache: ReplyCache | None = None) -> list[dict]:
    """Grade both turns of every answered question; FastEval's order (all turn 0, then all turn 1) and
    layout: ``[{"question_id", "turn_number", "judge_reply"}]``. With a ``cache`` replies already given are
    reused and new ones kept as they arrive (:mod:`objectives.mtbench.cache`)."""
    items = [
        JudgeItem(q, turn, tuple(answers[q.question_id]), tuple(judge_messages(prompts, q, answers[q.question_id], turn)))
        for turn in (0, 1)
        for q in questions
        if q.question_id in answers
    ]
    replies = cached_replies(cache, [list(i.messages) for i in items],
                             lambda todo, on_reply: judge.judge([items[i] for i in todo], on_reply=on_reply))
    return [{"question_id": i.question.question_id, "turn_number": i.turn, "judge_reply": r} for i, r in zip(items, replies)]
