"""Judge backends and the judging stage (FastEval ``judge-replies.json`` layout).

Every backend maps a list of :class:`JudgeItem` to reply strings, in order:

- :class:`HttpJudge`: any OpenAI-compatible chat-completions endpoint (concurrent, retried; see
  :mod:`objectives.mtbench.client`);
- :class:`LocalJudge`: a local Hugging Face model folder, greedy;
- :class:`StandInJudge`: offline, for the demo world only: character n-gram overlap between the graded
  answer and the reference answer, mapped to 1-10. Each of its replies carries
  :data:`~objectives.mtbench.scores.STANDIN_LABEL`, which every derived output repeats.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from objectives.errors import UserError
from objectives.mtbench.cache import ReplyCache, cached_replies
from objectives.mtbench.client import ERROR_REPLY, HttpSettings, chat_all
from objectives.mtbench.config import JudgeConfig
from objectives.mtbench.prompts import judge_messages
from objectives.mtbench.questions import Question
from objectives.mtbench.scores import STANDIN_LABEL

__all__ = ["HttpJudge", "JudgeItem", "LocalJudge", "StandInJudge", "judge_answers", "judge_scope", "make_judge",
           "ngram_f1"]


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
                            "or pass --no-judge-probe")


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


class StandInJudge:
    """Offline stand-in: rating = 1 + round(9 * char-3-gram F1(answer, reference)). NOT an MT-Bench score.

    Without a reference answer the question text of that turn stands in for it (topicality only)."""

    def judge(self, items: list[JudgeItem], on_reply=None) -> list[str]:
        out = []
        for it in items:
            q = it.question
            ref, what = (q.ref(it.turn), "reference answer") if q.reference else (q.turns[it.turn], "question")
            f1 = ngram_f1(it.answers[it.turn], ref)
            out.append(f"[{STANDIN_LABEL}] char-3-gram F1 with the {what} = {f1:.3f}. Rating: [[{1 + round(9 * f1)}]]")
            if on_reply is not None:
                on_reply(len(out) - 1, out[-1])
        return out


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
