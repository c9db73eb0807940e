"""Two-turn answers: each question through the chat template, the second turn seeing the first answer.

Models are chat models with ``reply_all(conversations, temperatures, max_new_tokens, desc, on_reply)`` and a
``fingerprint`` (what the answers depend on; ``None``: answers are not kept for a resume): a local
Hugging Face folder (:class:`LocalChatModel`: batched, left-padded, stops at the tokenizer's eos, e.g.
``<|im_end|>``) or an OpenAI-compatible endpoint (:class:`EndpointChatModel`). Answers are written as
FastChat ``model_answer`` JSONL (``question_id``, ``answer_id``, ``model_id``, ``choices[0].turns``, ``tstamp``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Protocol

from objectives.progress import progress_bar

from objectives.errors import UserError
from objectives.mtbench.cache import ReplyCache, cached_replies
from objectives.mtbench.client import HttpSettings, chat_all
from objectives.mtbench.config import MTBenchConfig
from objectives.mtbench.questions import Question
from objectives.templates import end_of_turn

__all__ = ["ChatModel", "EndpointChatModel", "LocalChatModel", "generate_answers", "read_answers", "write_answers"]


class ChatModel(Protocol):
    fingerprint: str | None  # identifies the weights/endpoint: finished answers are kept under it for a resume

    def reply_all(self, conversations: list[list[dict]], temperatures: list[float], max_new_tokens: int,
                  desc: str = "", on_reply=None) -> list[str]: ...


def _use_template(tokenizer, chat_template: str | None) -> bool:
    """Whether ``chat_template`` is to replace the tokenizer's (it has none); a tokenizer left without any is a
    :class:`UserError` naming the setting."""
    if tokenizer.chat_template:
        return False
    if chat_template is None:
        raise UserError("the model's tokenizer has no chat template: set mtbench.chat_template (chatml, a Jinja "
                        "template or a .jinja file)")
    return True


class LocalChatModel:
    """A Hugging Face causal LM folder answering chats in batches (same temperature per batch)."""

    def __init__(self, model, tokenizer, *, device: str = "cpu", batch_size: int = 8, seed: int = 0,
                 fingerprint: str | None = None, chat_template: str | None = None, progress: bool = True):
        """``chat_template``: the Jinja template for a tokenizer that has none (``mtbench.chat_template`` resolved
        by :func:`objectives.templates.resolve_chat_template`); a model with its own template is asked in it.
        ``progress``: a progress bar per batch of replies."""
        import torch

        if _use_template(tokenizer, chat_template):
            tokenizer = copy.copy(tokenizer)  # the caller's tokenizer keeps its (missing) template
            tokenizer.chat_template = chat_template
            fingerprint = json.dumps([fingerprint, chat_template]) if fingerprint else None
        self.model, self.tok = model.to(device).eval(), tokenizer
        self.device, self.batch_size, self.progress = device, batch_size, progress
        torch.manual_seed(seed)
        self.end_of_turn = end_of_turn(self.tok)
        self.eos = self._eos_ids()
        # The end-of-turn marker stops as text too: it may be no single token (ChatML spelled in characters), and
        # a merge whose vocabulary has it as a token may still write it in characters (a source learned it so).
        self.stop_strings = [self.end_of_turn] if self.end_of_turn else []
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos[0]
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        # where a turn stops is part of what an answer is: a change of stops does not reuse kept answers
        self.fingerprint = json.dumps([fingerprint, self.eos, self.stop_strings]) if fingerprint else None

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> LocalChatModel:
        """Load a saved Hugging Face model folder (weights + tokenizer with a chat template)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"model {str(path)!r} is not a Hugging Face model folder (no config.json); pass a saved model dir")
        stats = [(f.name, f.stat()) for f in sorted(path.iterdir()) if f.is_file()]
        stamp = [[name, st.st_size, st.st_mtime_ns] for name, st in stats]
        kwargs.setdefault("fingerprint", json.dumps(["dir", str(path.resolve()), stamp]))
        tokenizer = AutoTokenizer.from_pretrained(path)
        _use_template(tokenizer, kwargs.get("chat_template"))  # refuse before the weights are loaded
        return cls(AutoModelForCausalLM.from_pretrained(path), tokenizer, **kwargs)

    def _token_id(self, text: str) -> int | None:
        """The id of ``text`` when it is one token of the vocabulary."""
        return self.tok.get_vocab().get(text)

    def _eos_ids(self) -> list[int]:
        """Every id that ends a turn: the tokenizer's eos, the generation config's, the template's end-of-turn
        token and ChatML's ``<|im_end|>`` when the vocabulary has it."""
        ids = {self.tok.eos_token_id, *(_as_list(self.model.generation_config.eos_token_id))}
        ids |= {self._token_id("<|im_end|>"), self._token_id(self.end_of_turn) if self.end_of_turn else None}
        return sorted(i for i in ids if i is not None)

    def render(self, conv: list[dict]) -> str:
        """The prompt text the model is given for ``conv`` (its chat template, generation prompt added)."""
        return self.tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)

    def _encode(self, conv: list[dict], max_new_tokens: int) -> list[int]:
        ids = self.tok(self.render(conv), add_special_tokens=False)["input_ids"]
        if self.max_positions and len(ids) > self.max_positions - min(max_new_tokens, self.max_positions // 2):
            ids = ids[-(self.max_positions - min(max_new_tokens, self.max_positions // 2)):]  # keep the latest turns
        return ids

    def reply_all(self, conversations, temperatures, max_new_tokens, desc="", on_reply=None):
        import torch

        encoded = [self._encode(c, max_new_tokens) for c in conversations]
        order = sorted(range(len(encoded)), key=lambda i: (temperatures[i], len(encoded[i])))
        batches, cur = [], []
        for i in order:
            if cur and (len(cur) == self.batch_size or temperatures[cur[0]] != temperatures[i]):
                batches.append(cur)
                cur = []
            cur.append(i)
        batches += [cur] if cur else []
        out: list[str] = [""] * len(encoded)
        with progress_bar(total=len(encoded), desc=desc, unit="prompt", disable=not self.progress) as bar, torch.no_grad():
            for batch in batches:
                for i, text in zip(batch, self._generate([encoded[i] for i in batch], temperatures[batch[0]], max_new_tokens)):
                    out[i] = text
                    if on_reply is not None:
                        on_reply(i, text)
                bar.update(len(batch))
        return out

    def _generate(self, ids: list[list[int]], temperature: float, max_new_tokens: int) -> list[str]:
        import torch

        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[self.pad] * (width - len(x)) + x for x in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        new = max_new_tokens if not self.max_positions else max(1, min(max_new_tokens, self.max_positions - width))
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else {"do_sample": False}
        stops = {"stop_strings": self.stop_strings, "tokenizer": self.tok} if self.stop_strings else {}
        gen = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new,
                                  eos_token_id=self.eos, pad_token_id=self.pad, **sampling, **stops)
        return [self._cut(self.tok.decode(row[width:], skip_special_tokens=True)) for row in gen]

    def _cut(self, text: str) -> str:
        """A reply up to its end-of-turn marker (a string stop leaves the marker in the text)."""
        for stop in self.stop_strings:
            text = text.split(stop, 1)[0]
        return text.strip()


def _as_list(x) -> list:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


class EndpointChatModel:
    """A model behind an OpenAI-compatible chat-completions endpoint."""

    def __init__(self, settings: HttpSettings):
        self.settings = settings
        self.fingerprint = json.dumps(["endpoint", settings.base_url, settings.model])

    def reply_all(self, conversations, temperatures, max_new_tokens, desc="", on_reply=None):
        s = HttpSettings(**{**self.settings.__dict__, "max_tokens": max_new_tokens})
        return chat_all(s, list(zip(conversations, temperatures)), desc=desc, on_reply=on_reply)


def generate_answers(model: ChatModel, questions: tuple[Question, ...], cfg: MTBenchConfig,
                     desc: str = "MT-Bench answers", cache: ReplyCache | None = None) -> dict[str, list[str]]:
    """``{question_id: [answer_1, answer_2]}``; turn 2 is asked with turn 1's question and answer in context.

    With a ``cache`` (:mod:`objectives.mtbench.cache`) answers already given are reused and new ones kept as
    they are generated, so an interrupted run resumes.
    """
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    temps = [cfg.temperature(q.category) for q in questions]

    def answer(convs: list[list[dict]], turn: str) -> list[str]:
        requests = [{"messages": c, "temperature": t, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}
                    for c, t in zip(convs, temps)]
        return cached_replies(cache, requests, lambda todo, on_reply: model.reply_all(
            [convs[i] for i in todo], [temps[i] for i in todo], cfg.max_new_tokens,
            desc=f"{desc} ({turn}, {len(todo)} to answer)", on_reply=on_reply))

    first_convs = [system + [{"role": "user", "content": q.turns[0]}] for q in questions]
    first = answer(first_convs, "turn 1")
    second_convs = [
        conv + [{"role": "assistant", "content": a}, {"role": "user", "content": q.turns[1]}]
        for conv, a, q in zip(first_convs, first, questions)
    ]
    second = answer(second_convs, "turn 2")
    return {q.question_id: [a, b] for q, a, b in zip(questions, first, second)}


def _fastchat_id(qid: str) -> int | str:
    return int(qid) if qid.isdigit() else qid


def write_answers(path: str | Path, answers: dict[str, list[str]], model_id: str) -> None:
    """FastChat ``model_answer/<model>.jsonl`` layout, one line per question."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for qid, turns in answers.items():
            answer_id = hashlib.sha1(json.dumps([model_id, qid, turns]).encode()).hexdigest()[:22]
            rec = {"question_id": _fastchat_id(qid), "answer_id": answer_id, "model_id": model_id,
                   "choices": [{"index": 0, "turns": list(turns)}], "tstamp": time.time()}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def read_answers(path: str | Path) -> dict[str, list[str]]:
    """Read FastChat model_answer JSONL back into ``{question_id: [answer_1, answer_2]}``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"answers file {str(path)!r} does not exist: pass a FastChat model_answer .jsonl")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[str(rec["question_id"])] = list(rec["choices"][0]["turns"])
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise UserError(f"{path}:{n}: not a FastChat model_answer line (needs question_id, choices[0].turns)") from None
    return out
