"""Held-out preference accuracy: does the model give the chosen response a higher likelihood than the rejected?

A pair is ``{"prompt": ..., "chosen": ..., "rejected": ...}`` in either of trl's layouts:

- conversational: ``prompt`` is a list of ``{"role", "content"}`` messages, ``chosen``/``rejected`` are lists
  holding the assistant message(s); the tokenizer's chat template renders them (the prompt with the generation
  prompt, the prompt + response without), exactly as trl's ``DPOTrainer`` tokenizes them;
- standard: three strings, concatenated as they are (the caller has already applied any template).

The response tokens are those after the longest common prefix of the tokenized prompt and the tokenized
prompt + response (trl's rule, robust to templates that render the prompt alone differently). For each pair the
summed log-likelihood of the response tokens is computed for chosen and rejected; the score is

- ``pref_accuracy``: share of pairs with ``logp(chosen) > logp(rejected)`` (ties count as wrong),
- ``reward_margin``: mean of ``logp(chosen) - logp(rejected)`` in nats,
- ``n``: number of pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from objectives.progress import progress_bar

from objectives.objective import cpu_threads

__all__ = ["PreferenceScore", "encode_pair", "preference_scores", "sequence_logps"]

PreferenceScore = dict[str, float | int]  # {"pref_accuracy": float, "reward_margin": float, "n": int}


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_pair(tokenizer, pair: dict[str, Any], max_length: int | None = None) -> tuple[list[int], int, list[int], int]:
    """Token ids and response start of ``prompt + chosen`` and ``prompt + rejected``: ``(ids_c, start_c, ids_r, start_r)``.

    Sequences longer than ``max_length`` keep their start (trl's ``keep_start``)."""
    prompt = pair["prompt"]
    out = []
    for key in ("chosen", "rejected"):
        if isinstance(prompt, list):
            p_ids = _ids(tokenizer, _render(tokenizer, prompt, True))
            full = _ids(tokenizer, _render(tokenizer, list(prompt) + list(pair[key]), False))
        else:
            p_ids = _ids(tokenizer, prompt)
            full = _ids(tokenizer, prompt + pair[key])
        start = _prefix_len(p_ids, full)
        if max_length is not None:
            full = full[:max_length]
        out += [full, start]
    return tuple(out)  # type: ignore[return-value]


def sequence_logps(model, sequences: Sequence[tuple[list[int], int]], *, batch_size: int = 8,
                   pad_id: int = 0, desc: str | None = None) -> list[float]:
    """Summed log-likelihood of the tokens ``ids[start:]`` of each ``(ids, start)`` under ``model`` (eval mode,
    right padding, float32 log-softmax)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    batches = range(0, len(sequences), batch_size)
    for i in progress_bar(batches, desc=desc or "", unit="batch", disable=desc is None):
        chunk = sequences[i:i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, (seq, start) in enumerate(chunk):
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            attn[row, :len(seq)] = 1
            mask[row, start:len(seq)] = True
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tok = torch.gather(logp, 2, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        out += (tok * mask[:, 1:].to(device)).sum(-1).tolist()
    if was_training:
        model.train()
    return out


def preference_scores(model, tokenizer, pairs: Sequence[dict[str, Any]], *, batch_size: int = 8,
                      max_length: int | None = None, desc: str | None = None,
                      threads: int | None = None) -> PreferenceScore:
    """Score ``model`` on preference ``pairs`` (see the module docstring): ``{"pref_accuracy", "reward_margin", "n"}``.

    ``desc`` shows a progress bar with that label; ``threads`` pins torch's CPU threads while a CPU model is
    scored (:func:`objectives.objective.cpu_threads`; None: as they are). An empty ``pairs`` is a ``ValueError``
    (a score of nothing)."""
    if not pairs:
        raise ValueError("preference_scores needs at least one pair")
    seqs: list[tuple[list[int], int]] = []
    for pair in pairs:
        ids_c, start_c, ids_r, start_r = encode_pair(tokenizer, pair, max_length)
        seqs += [(ids_c, start_c), (ids_r, start_r)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with cpu_threads(threads, next(model.parameters()).device):
        logps = sequence_logps(model, seqs, batch_size=2 * batch_size, pad_id=pad, desc=desc)
    diffs = [c - r for c, r in zip(logps[0::2], logps[1::2])]
    return {
        "pref_accuracy": sum(d > 0 for d in diffs) / len(diffs),
        "reward_margin": sum(diffs) / len(diffs),
        "n": len(diffs),
    }
