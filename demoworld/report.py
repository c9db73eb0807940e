"""Evaluate the demo world's base and experts on the test split with lm-eval."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from demoworld.build import World
from demoworld.layout import SKILLS
from objectives.lmeval import evaluate_tasks

__all__ = ["chance_levels", "evaluate_model_dir", "format_report", "world_report"]


def chance_levels(world: World, split: str = "test") -> dict[str, float]:
    """Expected accuracy of uniform guessing: mean over documents of 1 / number of choices."""
    out = {}
    for skill in SKILLS:
        rows = [json.loads(line) for line in
                (world.include_path / "data" / f"{skill}_{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        out[skill] = sum(1 / len(r["choices"]) for r in rows) / len(rows)
    return out


def evaluate_model_dir(path: str | Path, world: World, split: str = "test", batch_size: int = 64) -> dict[str, float]:
    """Accuracy per skill of the saved model at ``path`` on the world's ``split`` tasks."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(path)
    names = world.tasks[split]
    scores = evaluate_tasks(model, tok, list(names.values()), include_path=world.include_path,
                            batch_size=batch_size, device="cpu", include_defaults=False)
    return {skill: scores[task]["score"] for skill, task in names.items()}


def world_report(world: World, split: str = "test") -> dict:
    """``{"chance": {skill: p}, "accuracy": {model: {skill: acc}}}`` with model ``base`` or an expert's skill."""
    acc = {"base": evaluate_model_dir(world.base, world, split)}
    for skill, path in world.experts.items():
        acc[skill] = evaluate_model_dir(path, world, split)
    return {"chance": chance_levels(world, split), "accuracy": acc}


def format_report(report: dict) -> str:
    """A plain-text model x skill table with the average column."""
    skills = list(report["chance"])
    head = f"{'model':<12}" + "".join(f"{s:>10}" for s in skills) + f"{'average':>10}"
    lines = [head, "-" * len(head)]
    rows = {"chance": report["chance"], **report["accuracy"]}
    for name, acc in rows.items():
        avg = sum(acc[s] for s in skills) / len(skills)
        lines.append(f"{name:<12}" + "".join(f"{acc[s]:>10.3f}" for s in skills) + f"{avg:>10.3f}")
    return "\n".join(lines)
