"""``merge-search evaluate``: the held-out stage on its own (:func:`search.stages.heldout.evaluate`)."""

from __future__ import annotations

import argparse

from objectives.errors import UserError
from search.config import load_run_config
from search.pipeline import owner_problems
from search.preflight import raise_problems
from search.rundir import RunDir
from search.stages.heldout import evaluate, standalone_problems

__all__ = ["register"]


def _cmd(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config)
    if args.top_k and not args.run:
        raise UserError("--top-k needs --run RUN (the run folder of `merge-search search`)")
    if args.run and args.top_k < 1:
        raise UserError(f"--top-k must be >= 1 with --run, but got {args.top_k}")
    out = RunDir.of(args.out or args.run, cfg.name).root
    problems = standalone_problems(cfg, out, recipes=args.recipe, study_run=args.run, top_k=args.top_k)
    raise_problems(problems + owner_problems(cfg, RunDir(out)), "evaluate")
    evaluate(cfg, out, recipes=args.recipe, study_run=args.run, top_k=args.top_k)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score sources, hand recipes and top trials on the search subsets and the held-out documents",
        description="Evaluate every source model, the config's hand recipes (default: the seed recipe), "
                    "recipes given with --recipe and the top K trials of a run (re-merged from their recorded "
                    "recipe and seed, hash-checked) on the search subsets and the held-out documents. "
                    "Writes heldout.json and heldout.md to --out (default: the --run folder, else "
                    "results/<name>).",
    )
    p.add_argument("config", help="run config YAML (configs/demo.yaml, configs/german-7b.yaml, ...)")
    p.add_argument("--out", help="output folder (default: the --run folder, else results/<name>)")
    p.add_argument("--recipe", action="append", default=[], metavar="FILE.yaml",
                   help="an extra mergekit recipe to evaluate (repeatable)")
    p.add_argument("--run", help="run folder (or storage URL) of `merge-search search` for --top-k")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="evaluate the K best trials of --run")
    p.set_defaults(func=_cmd)
