"""``merge-search run CONFIG``: every stage in order, resumable (:func:`search.pipeline.run_pipeline`)."""

from __future__ import annotations

import argparse

from objectives.errors import UserError
from search.cli import types
from search.config import load_run_config
from search.pipeline import run_pipeline, stage_names
from search.stages.report import headline

__all__ = ["register"]


def _cmd(args: argparse.Namespace) -> int:
    if args.from_stage and args.only:
        raise UserError("--from and --only exclude each other: pass one of them")
    types.refuse_other_writer(args.config, args.out)
    run = run_pipeline(load_run_config(args.config), args.out, from_stage=args.from_stage, only=args.only,
                       address=args.address, progress=not args.no_progress)
    print(f"\nreport: {run.report}")
    print(headline(run.root))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="the whole pipeline: search, held-out, export, DPO, MT-Bench, report (resumable)",
        description="Run every stage in order on CONFIG; re-running skips finished stages and resumes an "
                    "interrupted one. Outputs in --out (default results/<name>).")
    p.add_argument("config", help="run config YAML (configs/demo.yaml, configs/german-7b.yaml, ...)")
    p.add_argument("--out", help="run folder (default: results/<name>)")
    p.add_argument("--from", dest="from_stage", choices=stage_names(), help="re-run this stage and every later one")
    p.add_argument("--only", choices=stage_names(), help="re-run just this stage (earlier ones must be done)")
    p.add_argument("--address", help="Ray cluster address to join (default: a local Ray)")
    p.add_argument("--no-progress", action="store_true",
                   help="no search progress display (default: a live view on a terminal, a line per finished trial "
                        "in a log; other stages' bars write a line every 30 s in a log)")
    p.set_defaults(func=_cmd)
