"""The seedlike world: the demo world's skills and data, with the seed merge's heterogeneous sources.

The seed merge (DiscoPhoenix-7B) combines Mistral-7B-v0.1 with three fine-tunes that differ in more than their
weights: DiscoLM German adds ChatML tokens (and a padded, larger embedding matrix), Phoenix chats in another
template, mistral-ft-optimized is stored in sharded bfloat16. This world has the same heterogeneity at demo size,
so the pipeline's handling of it can be tested offline:

* ``base`` (like Mistral-7B-v0.1): a plain character tokenizer (:func:`demoworld.tokenizer.build_plain_tokenizer`:
  the demo characters plus ``<>|_``, specials ``<unk> <s> </s> <pad>``), no chat template, eos ``</s>``, float32
  in one ``model.safetensors``;
* ``zahlen`` (like DiscoLM German): the base tokenizer plus the *added* special tokens ``<|im_start|>`` and
  ``<|im_end|>``, embeddings and lm_head resized with ``resize_token_embeddings(len(tokenizer),
  pad_to_multiple_of=64)`` (so ``vocab_size`` > ``len(tokenizer)``), ChatML template, eos ``<|im_end|>``;
* ``artikel`` (like a Zephyr-style model such as Phoenix): the base vocabulary, the Zephyr-style template
  :data:`ZEPHYR_TEMPLATE`, eos ``</s>``;
* ``verben`` (like mistral-ft-optimized): the base vocabulary, no chat template, saved as bfloat16 in several
  ``model-0000k-of-0000n.safetensors`` shards with ``model.safetensors.index.json``; it was trained on ChatML
  conversations spelled out in characters (no added tokens).

The lm-eval tasks are plain text without a chat template, as German lm-eval tasks are (``Frage: ...\\nAntwort:``
+ ``" "`` + option, :func:`demoworld.layout.task_yaml` with ``kind="seedlike"``). Every model is trained on that
format (the base with random answers, each expert with the right answers of its skill) and each expert also on
its skill as conversations in its own chat format; items, generic text, preference pairs and questions are the
demo world's for the same seed. The manifest adds ``"kind": "seedlike"`` and a ``models`` section with each
model's tokenizer, template and file facts.
"""

from __future__ import annotations

import copy
import json
import random
import re
import time
from pathlib import Path

import torch
from transformers import GenerationConfig
from transformers.utils import logging as hf_logging

from demoworld import text as T
from demoworld.chat import skill_chat_docs
from demoworld.layout import SKILLS, Recipe, manifest_paths, write_data, write_task_yamls
from demoworld.tokenizer import build_plain_tokenizer
from demoworld.train import model_config, new_model, say, train
from objectives.templates import CHATML_TEMPLATE

__all__ = ["CHATML_TOKENS", "LIKE", "RECIPE", "SEEDLIKE_BUILDER_VERSION", "ZEPHYR_TEMPLATE", "build_seedlike_into",
           "chatml_to_zephyr", "expert_tokenizer", "plain_doc"]

# 2: generative tasks, chat objective questions, skill preference pairs; 3: 80 final and 96 chat objective questions
SEEDLIKE_BUILDER_VERSION = 3
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
PAD_TO_MULTIPLE_OF = 64  # 96 tokens (94 + 2 added) is already a multiple of 8: 64 gives the padded rows the seed's
# DiscoLM-style model has (vocab_size > len(tokenizer))
VERBEN_SHARD_SIZE = "300KB"  # about 0.84 MB in bfloat16 -> 3 or more shards
# Experts learn their rule in two formats here (plain text and their chat format): at the demo's 250 steps the
# artikel expert had not yet picked up the suffix rule (0.55 on its test split, 0.985 at 400 steps).
RECIPE = Recipe(expert_steps=400)
LIKE = {"base": "Mistral-7B-v0.1", "zahlen": "DiscoLM_German_7b_v1", "artikel": "Phoenix (Zephyr-style template)",
        "verben": "mistral-ft-optimized-1227"}
CHAT_FORMAT = {"base": None, "zahlen": "chatml", "artikel": "zephyr", "verben": "chatml-in-characters"}

# <|role|>\ncontent</s>\n per message; a generation prompt opens the assistant's turn.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '</s>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
_CHATML_MESSAGE = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)<\|im_end\|>\n", re.S)


def chatml_to_zephyr(text: str) -> str:
    """A ChatML conversation (:func:`demoworld.text.conversation`) as :data:`ZEPHYR_TEMPLATE` renders it."""
    return _CHATML_MESSAGE.sub(lambda m: f"<|{m[1]}|>\n{m[2]}</s>\n", text)


def plain_doc(item: T.Item, answer: str) -> str:
    """One item in the tasks' plain format (``PLAIN_PROMPT`` + ``" "`` + answer)."""
    return f"Frage: {item.text}\nAntwort: {answer}"


def expert_tokenizer(skill: str | None):
    """The tokenizer of ``skill``'s expert (``None``: the base's): see the module docstring."""
    tok = build_plain_tokenizer()
    if skill == "zahlen":
        tok.add_special_tokens({"additional_special_tokens": CHATML_TOKENS})
        tok.eos_token = "<|im_end|>"
        tok.chat_template = CHATML_TEMPLATE
    elif skill == "artikel":
        tok.chat_template = ZEPHYR_TEMPLATE
    return tok


def _render(skill: str, chatml_docs: list[str]) -> list[str]:
    """Conversations in the expert's own chat format (ChatML text is tokenised per the expert's vocabulary: one
    token per marker for zahlen, character by character for verben)."""
    return [chatml_to_zephyr(d) for d in chatml_docs] if skill == "artikel" else chatml_docs


def _set_eos(model, tok, eos: list[int]) -> None:
    model.config.eos_token_id = eos[0]
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                                               eos_token_id=eos if len(eos) > 1 else eos[0])


def _facts(name: str, folder: Path, tok, root: Path) -> dict:
    """What a consumer of the world needs to know about one saved model folder."""
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    gen = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    added = [t for t in CHATML_TOKENS if t in tok.get_vocab()]
    return {
        "path": str(folder.relative_to(root)),
        "like": LIKE[name],
        "tokenizer_size": len(tok),
        "vocab_size": int(cfg["vocab_size"]),
        "added_tokens": {t: tok.convert_tokens_to_ids(t) for t in added},
        "eos_token": tok.eos_token,
        "eos_token_id": gen["eos_token_id"],
        "chat_template": CHAT_FORMAT[name] if tok.chat_template else None,
        "chat_format": CHAT_FORMAT[name],
        "task_format": "plain",
        "dtype": cfg.get("dtype") or cfg.get("torch_dtype"),
        "files": files,
        "sharded": (folder / "model.safetensors.index.json").is_file(),
    }


def build_seedlike_into(tmp: Path, final: Path, seed: int, *, quiet: bool, threads: int,
                        r: Recipe | None = None) -> None:
    """Build the seedlike world of ``seed`` into ``tmp`` (renamed to ``final`` by the caller,
    :func:`demoworld.build.build_world`)."""
    r = r or RECIPE
    t0 = time.time()
    torch.set_num_threads(threads)
    base_tok = expert_tokenizer(None)
    base_tok.save_pretrained(tmp / "tokenizer")
    items = write_data(tmp, seed, r)
    generic, chats = T.generic_docs(seed, r.generic_docs), T.chat_docs(seed, r.chat_docs)
    base = _build_base(tmp, seed, r, items, base_tok, generic + chats, quiet)
    facts = {"base": _facts("base", tmp / "models" / "base", base_tok, tmp)}
    for i, skill in enumerate(SKILLS):
        folder, tok = _build_expert(tmp, seed, r, i, skill, base, items, (generic, chats), base_tok, quiet)
        facts[skill] = _facts(skill, folder, tok, tmp)
    write_task_yamls(tmp / "tasks", final / "tasks" / "data", "seedlike")
    manifest = {"builder_version": SEEDLIKE_BUILDER_VERSION, "kind": "seedlike", "seed": seed, **manifest_paths(),
                "models": facts, "recipe": r.__dict__, "build_seconds": round(time.time() - t0, 1)}
    (tmp / "world.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    say(quiet, f"seedlike world: built in {time.time() - t0:.0f} s")


def _build_base(tmp: Path, seed: int, r: Recipe, items: dict, tok, texts: list[str], quiet: bool):
    """The base: generic text, everyday chats (ChatML spelled in characters: text the base has seen, not a
    format it knows) and the tasks' plain format with *random* answers; saved to ``tmp/models/base``."""
    rng = random.Random(f"{seed}-pretrain")
    formats = [plain_doc(it, rng.choice(it.choices)) for s in SKILLS for it in items[s]["train"]]
    base = new_model(model_config(tok), seed)
    _set_eos(base, tok, [tok.eos_token_id])
    say(quiet, f"seedlike world: pretraining base ({sum(p.numel() for p in base.parameters()):,} parameters)")
    train(base, tok, texts + formats, steps=r.base_steps, lr=r.base_lr, seed=seed, warmup=30, desc="base",
          quiet=quiet)
    base.save_pretrained(tmp / "models" / "base")
    tok.save_pretrained(tmp / "models" / "base")
    return base


def _build_expert(tmp: Path, seed: int, r: Recipe, i: int, skill: str, base, items: dict,
                  texts: tuple[list[str], list[str]], base_tok, quiet: bool) -> tuple[Path, object]:
    """Expert ``skill`` (the ``i``-th) fine-tuned from ``base``: half skill examples (the plain task format and
    conversations in its own chat format, right answers), half generic text and everyday chats in that
    format; zahlen gets the added ChatML rows, verben is saved sharded in bfloat16. Returns its folder and
    tokenizer."""
    tok = expert_tokenizer(skill)
    expert = copy.deepcopy(base)
    if skill == "zahlen":
        torch.manual_seed(seed + 101)  # mean-resizing samples the new rows
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its note on how the new rows are initialised
        try:
            expert.resize_token_embeddings(len(tok), pad_to_multiple_of=PAD_TO_MULTIPLE_OF)
        finally:
            hf_logging.set_verbosity(level)
        _set_eos(expert, tok, [tok.eos_token_id, base_tok.eos_token_id])
    generic, chats = texts
    plain = [plain_doc(it, it.choices[it.gold]) for it in items[skill]["train"]]
    chat = _render(skill, skill_chat_docs(items[skill]["train"], random.Random(f"{seed}-{skill}-chat"),
                                          correct=True))
    mix = plain + chat
    mix += random.Random(f"{seed}-{skill}-mix").sample(generic + _render(skill, chats), len(mix))
    say(quiet, f"seedlike world: fine-tuning expert '{skill}' ({CHAT_FORMAT[skill]}, like {LIKE[skill]})")
    train(expert, tok, mix, steps=r.expert_steps, lr=r.expert_lr, seed=seed + 1 + i, warmup=10, desc=skill,
          quiet=quiet)
    folder = tmp / "models" / skill
    if skill == "verben":
        expert.to(torch.bfloat16).save_pretrained(folder, max_shard_size=VERBEN_SHARD_SIZE)
    else:
        expert.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, tok
