"""Items/s of objective scoring at batch size 1 vs the configured batch size, on the demo world.

    .venv/bin/python bench/eval_bench.py [--config configs/demo.yaml] [--items 100]
    .venv/bin/python bench/eval_bench.py --device cuda      # on a GPU host (bfloat16 there)

Both runs score the same resident model on the same fixed documents (the first ``--items`` of each task's
search subset), one after the other in this process; goal: configured batch >= 4x the items/s of batch 1.

``--width W --layers L`` scores a randomly initialised Mistral of that shape (demo tokenizer, same tasks)
instead of the 0.4M-parameter demo base: its accuracy is meaningless, but its compute per item is closer to
a real model's, where batching pays (on the tiny base lm-eval's per-call overhead dominates).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    from objectives.objective import Objective
    from search.config import load_run_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--items", type=int, default=100, help="documents per task")
    ap.add_argument("--repeats", type=int, default=3, help="alternating timed runs per batch size (best kept)")
    ap.add_argument("--width", type=int, default=0, help="hidden size of a random Mistral (0: the demo base)")
    ap.add_argument("--layers", type=int, default=8, help="layers of the random Mistral (with --width)")
    ap.add_argument("--device", default="cpu", help="cpu (float32) or cuda[:N] (bfloat16)")
    args = ap.parse_args()
    cfg = load_run_config(args.config)  # its demo world must exist: make demo (or merge-search demo-world build)
    tok = AutoTokenizer.from_pretrained(cfg.space.base_model)
    if args.width:
        from demoworld.train import model_config, new_model

        model = new_model(model_config(tok, hidden=args.width, layers=args.layers), seed=0).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(cfg.space.base_model, dtype=torch.float32).eval()
    if args.device.startswith("cuda"):
        model = model.to(device=args.device, dtype=torch.bfloat16)
    kind = f"random, width {args.width}, {args.layers} layers" if args.width else "demo base"
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters ({kind}) on "
          f"{args.device}, {model.dtype}")
    sizes = (1, cfg.objective.batch_size)
    objs = {bs: Objective(cfg.objective.model_copy(update={"batch_size": bs, "rungs": [args.items]}))
            for bs in sizes}
    for bs in sizes:
        objs[bs].score(model, tok, rung=0)  # warm-up (tokenizer caches, first-call allocations)
    best: dict[int, float] = {}
    for _ in range(args.repeats):  # alternate, so load from other processes hits both sizes alike
        for bs in sizes:
            t0 = time.perf_counter()
            res = objs[bs].score(model, tok, rung=0)
            best[bs] = min(best.get(bs, float("inf")), time.perf_counter() - t0)
    figures = {}
    for bs in sizes:
        figures[bs] = res.items / best[bs]
        print(f"batch {bs:>3}: {res.items} items, best of {args.repeats}: {best[bs]:6.2f} s = "
              f"{figures[bs]:7.1f} items/s", flush=True)
    ratio = figures[cfg.objective.batch_size] / figures[1]
    print(f"speed-up batch {cfg.objective.batch_size} vs 1: {ratio:.1f}x (goal >= 4x)")


if __name__ == "__main__":
    main()
