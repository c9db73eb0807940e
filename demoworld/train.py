"""Tiny Mistral-architecture models and a minimal causal-LM training loop for the demo world, with the builders'
progress output (:func:`train` shows a bar per model, :func:`say` one line per step)."""

from __future__ import annotations

import math
import random

import torch
from objectives.progress import progress_bar
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

__all__ = ["model_config", "new_model", "say", "train", "train_lm"]


def model_config(tokenizer: PreTrainedTokenizerFast, hidden: int = 128, layers: int = 2) -> MistralConfig:
    """A ~0.5M-parameter Mistral: same architecture (GQA, RoPE, SwiGLU, RMSNorm) as Mistral-7B."""
    return MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=256,
        rope_theta=10000.0,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )


def new_model(config: MistralConfig, seed: int) -> MistralForCausalLM:
    torch.manual_seed(seed)
    return MistralForCausalLM(config)


def _batch(docs: list[list[int]], rng: random.Random, batch_size: int, seq_len: int, pad: int):
    rows = []
    for _ in range(batch_size):
        # Start every row at a document boundary (as evaluation prompts do) and fill it with the
        # following documents, so the model sees both fresh starts and long contexts.
        i = rng.randrange(len(docs))
        row: list[int] = []
        while len(row) < seq_len:
            row.extend(docs[i % len(docs)])
            i += 1
        rows.append(row[:seq_len])
    x = torch.tensor(rows, dtype=torch.long)
    return x, x.masked_fill(x == pad, -100)  # the model shifts labels itself


def train_lm(
    model: MistralForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    *,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 32,
    seq_len: int = 128,
    warmup: int = 30,
    progress=None,
) -> list[float]:
    """Train ``model`` in place with AdamW and a cosine schedule; returns the per-step losses."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    sep = tokenizer("\n\n")["input_ids"]
    docs = [tokenizer(t)["input_ids"] + sep for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    losses = []
    for _ in range(steps):
        x, y = _batch(docs, rng, batch_size, seq_len, tokenizer.pad_token_id)
        loss = model(input_ids=x, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress(loss.item())
    model.eval()
    return losses


def train(model, tok, docs, *, steps, lr, seed, warmup, desc, quiet):
    """:func:`train_lm` with a progress bar named ``desc`` (none when ``quiet``)."""
    bar = progress_bar(total=steps, desc=desc, unit="step", disable=quiet)

    def tick(loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    losses = train_lm(model, tok, docs, steps=steps, lr=lr, seed=seed, warmup=warmup, progress=tick)
    bar.close()
    return losses


def say(quiet: bool, msg: str) -> None:
    """A builder's progress line (nothing when ``quiet``)."""
    if not quiet:
        print(msg, flush=True)
