"""``merge-search dpo CONFIG [--model DIR | --recipe FILE.yaml] [--out DIR]``: the DPO stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from objectives.errors import UserError

__all__ = ["load_dpo_config", "register"]


def load_dpo_config(path: str | Path):
    """The ``dpo:`` section of ``path`` as a :class:`~search.dpo.DPOStageConfig` and the run seed.

    A full run config (``name``, ``space``, ``objective``, ...) is validated as a whole with
    :class:`~search.config.RunConfig`; a file holding only a ``dpo:`` section (``configs/dpo-demo.yaml``) is
    validated with :class:`~search.dpo.DPOStageConfig` alone. ``dpo.device: auto`` follows the run's ``device``.
    """
    from objectives.schema import load_yaml, validate
    from search.config import load_run_config
    from search.dpo import DPOStageConfig

    data = load_yaml(path)
    if not isinstance(data, dict) or not ({"dpo", "name", "space"} & set(data)):
        raise UserError(f"{path}: not a run config: give a YAML mapping with a `dpo:` section "
                        "(see configs/dpo-demo.yaml) or a whole run config (name, space, objective, dpo)")
    if set(data) == {"dpo"}:
        return validate(DPOStageConfig, data["dpo"] or {}, f"{path} (dpo)"), 0
    run = load_run_config(path, resolve=False)
    cfg = run.dpo
    if cfg.device == "auto" and run.device != "auto":
        cfg = cfg.model_copy(update={"device": run.device})
    return cfg, run.seed


def _base_from_recipe(args: argparse.Namespace, out: Path, seed: int) -> Path:
    """Re-merge ``--recipe`` into ``OUT/base`` (the trial's in-memory path, hash-checked against the saved
    files) and compare with ``--weights-sha256`` when given."""
    try:
        from search.merge import merge_to_dir
    except ImportError as err:  # the merge engine is an optional stage
        raise UserError(f"--recipe needs the merge engine (search.merge), which failed to import ({err}): "
                        "merge with `merge-search merge` and pass --model DIR instead") from None
    base = out / "base"
    seed = args.seed if args.seed is not None else seed
    meta = merge_to_dir(args.recipe, base, seed=seed, device=args.merge_device, expect_sha256=args.weights_sha256)
    print(f"re-merged {args.recipe} (seed {seed}) -> {base} weights_sha256 {meta['weights_sha256']}")
    return base


def _run(args: argparse.Namespace) -> int:
    from search.dpo import require_data, run_dpo

    cfg, run_seed = load_dpo_config(args.config)
    require_data(cfg)
    out = Path(args.out or cfg.output_dir)
    if (out / "metrics.json").exists():
        raise UserError(f"--out {str(out)!r} already holds a DPO run (metrics.json): give a new folder")
    if args.recipe:
        base = _base_from_recipe(args, out, run_seed)
    elif args.model or cfg.model:
        base = Path(args.model or cfg.model)
    else:
        raise UserError("no DPO base model: pass --model DIR, --recipe FILE.yaml, or set dpo.model in the config")
    metrics = run_dpo(cfg, base, out)
    b, a = metrics["heldout_before"], metrics["heldout_after"]
    print(f"held-out preference accuracy {b['pref_accuracy']:.3f} -> {a['pref_accuracy']:.3f} "
          f"(margin {b['reward_margin']:.2f} -> {a['reward_margin']:.2f} nats, n={a['n']})")
    print(f"DPO train loss {metrics['train']['loss']:.4f}, implicit-reward accuracy "
          f"{metrics['train']['reward_accuracy']:.3f}; outputs in {out}")
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
    p.add_argument("--seed", type=int, default=None, help="merge seed for --recipe (default: the run config's seed)")
    p.add_argument("--merge-device", default="cpu", help="device of the --recipe re-merge; DARE masks depend on "
                                                         "it (default cpu)")
    p.add_argument("--weights-sha256", help="expected weights_sha256 of the --recipe re-merge (from the trial)")
    p.add_argument("--out", help="output folder (default: dpo.output_dir)")
    p.set_defaults(func=_run)
