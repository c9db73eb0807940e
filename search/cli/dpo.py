"""``merge-search dpo CONFIG [--model DIR | --recipe FILE.yaml] [--out DIR]``: the DPO stage on its own."""

from __future__ import annotations

import argparse
from pathlib import Path

from objectives.errors import UserError
from search import atomic
from search.cli import types
from search.merge import Recipe, record_of
from search.preflight import local_models, raise_problems
from search.rundir import DPOOutputs
from search.stages.dpo import load_dpo_config, merge_base, run_dpo, standalone_problems
from search.writelock import writer_lock

__all__ = ["register"]


def _base(args: argparse.Namespace, cfg, out: DPOOutputs, run_seed: int, recipe: Recipe | None) -> Path:
    """The DPO base: ``--recipe`` re-merged into ``OUT/base`` (hash-checked with ``--weights-sha256``), else
    ``--model`` or ``dpo.model``."""
    if args.recipe:
        seed = args.seed if args.seed is not None else run_seed
        record = record_of(recipe, seed=seed, device=args.merge_device, threads=args.merge_threads,
                           weights_sha256=args.weights_sha256)
        res = merge_base(record, out)
        print(f"re-merged {args.recipe} (seed {seed}) weights_sha256 {res.weights_sha256}")
        return out.base
    if args.model or cfg.model:
        return Path(args.model or cfg.model)
    raise UserError("no DPO base model: pass --model DIR, --recipe FILE.yaml, or set dpo.model in the config")


def _check(args: argparse.Namespace, cfg, out: DPOOutputs) -> Recipe | None:
    """Every problem of the inputs and the output folder, before anything is merged or written; returns the
    ``--recipe`` (parsed and validated once, re-merged by :func:`_base`)."""
    if (args.weights_sha256 or args.merge_threads or args.seed is not None) and not args.recipe:
        raise UserError("--weights-sha256, --merge-threads and --seed describe the --recipe re-merge: pass --recipe "
                        "too, or drop them")
    model = args.model or (None if args.recipe else cfg.model)
    recipe = Recipe.from_file(args.recipe) if args.recipe else None
    inputs = local_models(recipe.referenced_models()) if recipe else []
    raise_problems(standalone_problems(cfg, out, model=model, inputs=inputs), "dpo")
    return recipe


def _run(args: argparse.Namespace) -> int:
    cfg, run_seed = load_dpo_config(args.config)
    out = DPOOutputs(Path(args.out or cfg.output_dir))
    recipe = _check(args, cfg, out)
    with writer_lock(out.root):
        metrics = atomic.build(out.root, lambda stage: run_dpo(
            cfg, _base(args, cfg, DPOOutputs(stage), run_seed, recipe), stage,
            base_name=str(out.base) if args.recipe else None))
    b, a = metrics["heldout_before"], metrics["heldout_after"]
    print(f"held-out preference accuracy {b['pref_accuracy']:.3f} -> {a['pref_accuracy']:.3f} "
          f"(margin {b['reward_margin']:.2f} -> {a['reward_margin']:.2f} nats, n={a['n']})")
    print(f"DPO train loss {metrics['train']['loss']:.4f}, implicit-reward accuracy "
          f"{metrics['train']['reward_accuracy']:.3f}; outputs in {out.root}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dpo",
        help="(Q)LoRA DPO of a merged model on German preference data (trl + peft)",
        description="DPO-train a base model with LoRA (QLoRA 4-bit NF4 on CUDA, unquantized LoRA on CPU) on "
                    "preference pairs (system/question/chosen/rejected or prompt/chosen/rejected; JSON, JSONL, "
                    "parquet or a Hugging Face dataset id). Writes OUT/adapter, OUT/model (merged full model + "
                    "tokenizer), OUT/metrics.json (held-out preference accuracy before/after, train loss, "
                    "implicit-reward accuracy), OUT/loss.png and OUT/config.yaml. Settings: the `dpo:` section of "
                    "CONFIG (see configs/dpo-demo.yaml; defaults are the seed's LLaMA-Factory run).",
    )
    p.add_argument("config", help="run config YAML with a `dpo:` section (or a YAML with only `dpo:`)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="base model folder (a saved Hugging Face model); default: dpo.model")
    src.add_argument("--recipe", help="mergekit YAML recipe: re-merged into OUT/base first")
    p.add_argument("--seed", type=types.seed, default=None, help="merge seed for --recipe (default: the run config's seed)")
    p.add_argument("--merge-device", type=types.device, default="cpu", help="device of the --recipe re-merge; DARE masks depend on "
                                                         "it (default cpu)")
    p.add_argument("--merge-threads", type=types.positive_int, default=None,
                   help="torch CPU threads of the --recipe re-merge: pass the trial's merge_threads so a CPU merge "
                        "reproduces its weights_sha256 (default: torch's current count)")
    p.add_argument("--weights-sha256", type=types.sha256, help="expected weights_sha256 of the --recipe re-merge (from the trial)")
    p.add_argument("--out", help="output folder (default: dpo.output_dir)")
    p.set_defaults(func=_run)
