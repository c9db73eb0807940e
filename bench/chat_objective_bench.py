"""What the chat objective costs next to the log-likelihood tasks: one candidate, rung by rung.

    .venv/bin/python bench/chat_objective_bench.py [--config configs/demo.yaml] [--model results/demo-world/models/verben]

Scores one saved model the way a search trial does (torch pinned to ``--threads`` CPU threads, as a Ray worker
is): first the config's lm-eval tasks rung by rung (``objective.rungs``; each rung evaluates only the new
documents), then the chat objective alone on ``--chat-rungs`` questions of ``--questions`` (answers of
``--max-new-tokens`` at most, greedy; each rung answers only the new questions) rated by the offline stand-in
judge. Prints seconds per rung and in total for both, and the chat score at each rung.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    from objectives.config import CHAT, ObjectiveConfig
    from objectives.objective import Objective
    from objectives.schema import validate
    from search.config import load_run_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--model", default="results/demo-world/models/verben")
    ap.add_argument("--questions", default="results/demo-world/mtbench/search_question.jsonl")
    ap.add_argument("--chat-rungs", default="8,16,32")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16, help="questions answered at once")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_run_config(args.config)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    chat_rungs = [int(k) for k in args.chat_rungs.split(",")]

    tasks = Objective(cfg.objective)
    t_tasks, prev = [], None
    for i in range(len(cfg.objective.rungs)):
        t0 = time.perf_counter()
        prev = tasks.score(model, tok, rung=i, previous=prev)
        t_tasks.append((prev.items, time.perf_counter() - t0))

    chat_cfg = {"questions": args.questions, "rungs": chat_rungs, "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size, "judge": {"backend": "standin"}}
    data = {**cfg.objective.model_dump(mode="json"), "rungs": chat_rungs, "chat": chat_cfg}
    chat = Objective(validate(ObjectiveConfig, data, "objective")).chat
    t_chat, values = [], None
    for i in range(len(chat_rungs)):
        t0 = time.perf_counter()
        res = chat.score(model, tok, rung=i, rungs=len(chat_rungs), previous=values)
        values = res.values
        t_chat.append((res.n, time.perf_counter() - t0, res.score))

    print(f"model {args.model}, torch threads {args.threads}")
    print("log-likelihood tasks of", args.config, "(items = documents of all tasks so far):")
    for i, (items, s) in enumerate(t_tasks):
        print(f"  rung {i}: {items:4d} items  {s:6.2f} s")
    print(f"  total {sum(s for _, s in t_tasks):.2f} s")
    print(f"chat objective, stand-in judge, max_new_tokens {args.max_new_tokens} ({CHAT} = (rating - 1) / 9):")
    for i, (n, s, score) in enumerate(t_chat):
        print(f"  rung {i}: {n:4d} questions  {s:6.2f} s  chat {score:.3f} (rating {1 + 9 * score:.2f})")
    print(f"  total {sum(s for _, s, _ in t_chat):.2f} s")


if __name__ == "__main__":
    main()
