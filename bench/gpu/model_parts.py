"""Parts 2-4 of the GPU check, on a random ~1B Mistral over the demo world's tokenizer (nothing downloaded).

* ``eval``: lm-eval items/s through the project's ``Objective`` at batch 32 vs batch 1, on the demo world's
  three multiple-choice skills generated on the fly (``demoworld.text``; no trained world needed). Goal >= 4x.
* ``dpo``: QLoRA DPO steps/s: the project's DPO stage functions (``search.stages.dpo``: 4-bit NF4 base with
  bf16 compute on CUDA, peft LoRA, trl ``DPOTrainer``) on the demo world's German preference pairs.
* ``gen``: MT-Bench-style generation tokens/s: ``objectives.mtbench.generate.LocalChatModel``, a batch of
  chat prompts, greedy, bf16.

Accuracies of a random model are meaningless; its compute per item, step and token is what is measured.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from common import Results, describe, random_model, say, small_config, timed

SKILL_TASK = "gpu_check_{}"
EVAL_GOAL = 4.0


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_tasks(root: Path, items: int) -> list[str]:
    """One lm-eval multiple-choice task per demo skill (its first ``items`` search items) under ``root``."""
    from demoworld import text

    skills = text.skill_items(0, n_eval=max(items, 10))
    names = []
    for skill in text.SKILLS:
        name = SKILL_TASK.format(skill)
        data = (root / "data" / f"{skill}.jsonl").absolute()
        _write_jsonl(data, [it.as_row() for it in skills[skill]["search"][:items]])
        task = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "text",
                "doc_to_choice": "choices", "doc_to_target": "gold",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")
        names.append(name)
    return names


def objective(include: Path, names: list[str], batch_size: int):
    """The project's ``Objective`` over the generated tasks, every item in one rung."""
    from objectives.config import ObjectiveConfig
    from objectives.objective import Objective

    cfg = ObjectiveConfig.model_validate({
        "include_paths": [str(include)], "include_defaults": False, "batch_size": batch_size,
        "tasks": [{"name": n, "subset": "all"} for n in names]})
    return Objective(cfg)


def run_eval(args, res: Results, tmp: Path) -> None:
    """Items/s at batch 1 and at ``--batch`` on the same model and documents, alternating timed runs."""
    from demoworld.tokenizer import build_tokenizer

    tok = build_tokenizer()
    model = random_model(small_config(tok, args.shape), args.device)
    names = write_tasks(tmp / "tasks", args.items)
    sizes = (1, args.batch)
    objs = {bs: objective(tmp / "tasks", names, bs) for bs in sizes}
    n_items = objs[1].score(model, tok).items  # warm-up of both sizes (caches, first allocations)
    objs[args.batch].score(model, tok)
    say("eval", f"{describe(model)}; {n_items} items on {args.device}")
    deadline = time.monotonic() + 0.8 * args.budget
    best: dict[int, float] = {}
    for _ in range(args.repeats):  # alternate, so other load hits both sizes alike
        for bs in sizes:
            _, secs = timed(lambda bs=bs: objs[bs].score(model, tok), args.device)
            best[bs] = min(best.get(bs, float("inf")), secs)
        if time.monotonic() + 1.5 * sum(best.values()) > deadline:
            break
    rate = {bs: n_items / best[bs] for bs in sizes}
    shape = describe(model).split(" (")[0]
    res.add("lm-eval items/s, batch 1", rate[1], "items/s", note=f"{n_items} items, 3 tasks, {shape}")
    res.add(f"lm-eval items/s, batch {args.batch}", rate[args.batch], "items/s")
    ratio = rate[args.batch] / rate[1]
    res.add(f"batch {args.batch} vs batch 1", ratio, "x", f">= {EVAL_GOAL:g}x",
            "met" if ratio >= EVAL_GOAL else "not met", "best of alternating runs")


def save_random_model(folder: Path, tok, shape: str, device: str) -> str:
    """A random model of ``shape`` saved with the demo tokenizer (the DPO stage loads from a folder)."""
    model = random_model(small_config(tok, shape), device)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return describe(model)


def dpo_config(train: Path, heldout: Path, device: str, quick: bool, steps: int):
    """The project's ``dpo:`` section: its defaults (QLoRA NF4 on CUDA, LoRA q/v, batch 8 x grad-accum 4),
    ``steps`` optimizer steps, no held-out evaluation during training (``best_checkpoint: last``: the timed
    steps are training steps only); --quick: batch 2 x 1."""
    from search.dpo_config import DPOStageConfig

    t = {"max_steps": steps, "logging_steps": 1, "best_checkpoint": "last"}
    if quick:
        t.update(batch_size=2, grad_accum=1, gradient_checkpointing=False)
    return DPOStageConfig.model_validate({"device": "cuda" if device.startswith("cuda") else "cpu",
                                          "data": {"train": str(train), "heldout": str(heldout)}, "train": t})


def dpo_steps(cfg, base: Path, out: Path):
    """One DPO training run with the project's stage functions; returns the trainer."""
    from search.rundir import DPOOutputs
    from search.stages.dpo import load_base, load_data, resolve_runtime, train

    rt = resolve_runtime(cfg)
    model, tok = load_base(cfg, base, rt)
    data = load_data(cfg, tok)
    return train(cfg, model, tok, data, rt, DPOOutputs(out)), rt


def run_dpo(args, res: Results, tmp: Path) -> None:
    """A 1-step warm-up run, then a timed run of ``--dpo-steps`` steps (the Trainer's own train_runtime)."""
    from demoworld import text
    from demoworld.tokenizer import build_tokenizer

    shape = save_random_model(tmp / "base", build_tokenizer(), args.shape, args.device)
    rows = text.preference_rows(0, 400)
    _write_jsonl(tmp / "train.jsonl", rows[:360])
    _write_jsonl(tmp / "heldout.jsonl", rows[360:])
    warm = dpo_config(tmp / "train.jsonl", tmp / "heldout.jsonl", args.device, args.quick, 1)
    _, t_warm = timed(lambda: dpo_steps(warm, tmp / "base", tmp / "warm"), args.device)
    say("dpo", f"warm-up run (load, 1 step): {t_warm:.1f} s")
    cfg = warm.model_copy(update={"train": warm.train.model_copy(update={"max_steps": args.dpo_steps})})
    trainer, rt = dpo_steps(cfg, tmp / "base", tmp / "timed")
    runtime = next(h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h)
    steps = trainer.state.global_step
    pairs = cfg.train.batch_size * cfg.train.grad_accum
    kind = f"QLoRA 4-bit {cfg.quant.quant_type}" if rt.quantized else "LoRA, unquantized (no 4-bit on CPU)"
    res.add("DPO steps/s", steps / runtime, "steps/s",
            note=f"{kind}, {rt.precision}; {pairs} pairs/step ({cfg.train.batch_size} x {cfg.train.grad_accum}); "
                 f"{steps} steps in {runtime:.1f} s; {shape}")
    res.add("DPO pairs/s", steps * pairs / runtime, "pairs/s")


def count_tokens(model, eos_ids: list[int]) -> list[int]:
    """Wrap ``model.generate`` so that the tokens each row generated (up to and including its first eos; the
    rest is padding) are added to the returned counter."""
    import torch

    counter = [0]
    generate = model.generate

    def counting(*a, **kw):
        out = generate(*a, **kw)
        new = out[:, kw["input_ids"].shape[1]:]
        eos = torch.isin(new, torch.tensor(eos_ids, device=new.device))
        ends = torch.where(eos.any(dim=1), eos.int().argmax(dim=1) + 1, new.shape[1])
        counter[0] += int(ends.sum())
        return out

    model.generate = counting
    return counter


def run_gen(args, res: Results, tmp: Path) -> None:
    """Greedy answers to ``--prompts`` chat prompts in batches of ``--gen-batch``, bf16 on the GPU."""
    from demoworld import text
    from demoworld.tokenizer import build_tokenizer
    from objectives.mtbench.generate import LocalChatModel

    tok = build_tokenizer()
    model = random_model(small_config(tok, args.shape), args.device)
    chat = LocalChatModel(model, tok, device=args.device, batch_size=args.gen_batch)
    counter = count_tokens(model, chat.eos)
    convs = [[{"role": "user", "content": q}] for q in text.generic_docs(0, args.prompts)]
    chat.reply_all(convs[:args.gen_batch], [0.0] * args.gen_batch, 8)  # warm-up
    counter[0] = 0
    _, secs = timed(lambda: chat.reply_all(convs, [0.0] * len(convs), args.new_tokens), args.device)
    res.add("generation tokens/s", counter[0] / secs, "tokens/s",
            note=f"LocalChatModel, {len(convs)} prompts in batches of {args.gen_batch}, greedy, "
                 f"<= {args.new_tokens} new tokens, {counter[0]} generated in {secs:.1f} s; {describe(model)}")


PARTS = {"eval": run_eval, "dpo": run_dpo, "gen": run_gen}
