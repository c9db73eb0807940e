"""What a search trial costs with generated answers: log-likelihood only vs + generation vs + chat, side by side.

    .venv/bin/python bench/trial_cost_bench.py [--config configs/demo.yaml] [--model results/demo-world/models/verben]

Scores one saved model the way a search trial does (every rung of ``objective.rungs``, each rung only the new
documents / questions; torch pinned to ``--threads`` CPU threads as a Ray worker is) under three objectives made
from the config's: its log-likelihood tasks only; plus its generative (``generate_until``) tasks; plus its chat
objective (``objective.chat``, the offline stand-in judge unless the config names another). The three run in
turn, ``--repeats`` times, and the fastest of each is kept. Prints seconds per trial, items per second and the
ratio to the log-likelihood-only trial (the merge itself, about 0.05 s on the demo world, is left out: it is
the same for all three). The chat objective's judgement cache is in memory and fresh for every repeat.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objectives.config import ObjectiveConfig  # noqa: E402
from objectives.objective import Objective  # noqa: E402
from objectives.schema import validate  # noqa: E402
from search.config import load_run_config  # noqa: E402


def _variants(objective: ObjectiveConfig) -> dict[str, ObjectiveConfig]:
    kinds = Objective(objective.model_copy(update={"chat": None})).task_kinds()
    data = objective.model_dump(mode="json")
    ll = [t for t in data["tasks"] if kinds[t["name"]] == "loglikelihood"]
    gen = [t for t in data["tasks"] if kinds[t["name"]] == "generation"]
    out = {"log-likelihood": {**data, "tasks": ll, "chat": None}}
    if gen:
        out["+ generation"] = {**data, "tasks": ll + gen, "chat": None}
    if data.get("chat"):
        out["+ generation + chat" if gen else "+ chat"] = {**data, "tasks": ll + gen}
    return {k: validate(ObjectiveConfig, v, "objective") for k, v in out.items()}


def _trial(cfg: ObjectiveConfig, model, tok) -> tuple[float, int, float]:
    """Seconds, items (documents + chat questions) and score of one trial's rungs on a fresh objective."""
    obj = Objective(cfg)
    t0 = time.perf_counter()
    with torch.inference_mode():
        last = list(obj.iter_rungs(model, tok))[-1]
    return time.perf_counter() - t0, last.items, last.score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--model", default="results/demo-world/models/verben")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_run_config(args.config)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    variants = _variants(cfg.objective)
    best: dict[str, tuple[float, int, float]] = {}
    for _ in range(args.repeats):
        for name, ocfg in variants.items():
            run = _trial(ocfg, model, tok)
            if name not in best or run[0] < best[name][0]:
                best[name] = run
    base = best["log-likelihood"][0]
    print(f"{args.config}, model {args.model}, torch threads {args.threads}, rungs {cfg.objective.rungs}, "
          f"fastest of {args.repeats}")
    print("| objective | seconds per trial | items | items/s | fitness | x log-likelihood |\n|---|---:|---:|---:|---:|---:|")
    for name, (s, items, score) in best.items():
        print(f"| {name} | {s:.2f} | {items} | {items / s:.0f} | {score:.3f} | {s / base:.2f} |")


if __name__ == "__main__":
    main()
