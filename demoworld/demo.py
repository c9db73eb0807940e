"""The demo world: one shared ChatML character tokenizer, a base and three German experts, ChatML tasks.

No ``kind`` key in its manifest (worlds built before the seedlike kind have none either).
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path

import torch

from demoworld import text as T
from demoworld.chat import skill_chat_docs
from demoworld.layout import SKILLS, Recipe, manifest_paths, write_data, write_task_yamls
from demoworld.tokenizer import build_tokenizer
from demoworld.train import model_config, new_model, say, train

__all__ = ["BUILDER_VERSION", "build_demo_into"]

# 2: the skills asked as chat questions with closed answers (tasks, training, MT-Bench); 3: generative tasks, chat
# objective questions, skill preference pairs (the models are the same as version 2's); 4: 80 final MT-Bench
# questions (was 28) and 96 chat objective questions (was 32)
BUILDER_VERSION = 4


def _save_model(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def build_demo_into(tmp: Path, final: Path, seed: int, *, quiet: bool, threads: int, r: Recipe | None = None) -> None:
    """Build the demo world of ``seed`` into ``tmp`` (renamed to ``final`` by the caller,
    :func:`demoworld.build.build_world`)."""
    r = r or Recipe()
    t0 = time.time()
    torch.set_num_threads(threads)
    tok = build_tokenizer()
    tok.save_pretrained(tmp / "tokenizer")
    items = write_data(tmp, seed, r)

    # Base: generic German text, chat turns, and the three task formats with *random* answers, so the base
    # knows what the questions look like but not how to answer them. Experts then only learn the rule,
    # which keeps their task vectors small and merge-friendly.
    rng = random.Random(f"{seed}-pretrain")
    generic = T.generic_docs(seed, r.generic_docs) + T.chat_docs(seed, r.chat_docs)
    formats = [d for s in SKILLS for d in skill_chat_docs(items[s]["train"], rng, correct=False)]
    base = new_model(model_config(tok), seed)
    say(quiet, f"demo world: pretraining base ({sum(p.numel() for p in base.parameters()):,} parameters)")
    train(base, tok, generic + formats, steps=r.base_steps, lr=r.base_lr, seed=seed, warmup=30,
          desc="base", quiet=quiet)
    _save_model(base, tok, tmp / "models" / "base")

    for i, skill in enumerate(SKILLS):
        # Half skill examples (correct answers), half generic text: keeps the task vectors merge-friendly.
        skill_docs = skill_chat_docs(items[skill]["train"], random.Random(f"{seed}-{skill}-chat"), correct=True)
        mix = skill_docs + random.Random(f"{seed}-{skill}-mix").sample(generic, len(skill_docs))
        expert = copy.deepcopy(base)
        say(quiet, f"demo world: fine-tuning expert '{skill}'")
        train(expert, tok, mix, steps=r.expert_steps, lr=r.expert_lr, seed=seed + 1 + i, warmup=10,
              desc=skill, quiet=quiet)
        _save_model(expert, tok, tmp / "models" / skill)

    write_task_yamls(tmp / "tasks", final / "tasks" / "data")
    manifest = {
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        **manifest_paths(),
        "recipe": r.__dict__,
        "build_seconds": round(time.time() - t0, 1),
    }
    (tmp / "world.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    say(quiet, f"demo world: built in {time.time() - t0:.0f} s")
