"""``merge-search demo-world build|report``: a plugin sub-command of ``merge-search``.

The product does not import the demo: ``search.cli`` finds this command through the ``merge_search.commands``
entry point (pyproject.toml: ``demo-world = "demoworld.cli:register"``).
"""

from __future__ import annotations

import argparse
import json

from search.cli import types

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser("demo-world", help="build or report the offline German demo world",
                       description="The offline demo world: a tiny Mistral base, three German experts, lm-eval "
                                   "tasks, preference data and MT-Bench-style questions, all generated locally.")
    dsub = p.add_subparsers(dest="demo_command", metavar="ACTION", required=True)
    b = dsub.add_parser("build", help="build a world (a quick no-op if it is already complete)",
                        description="Build the demo world into --out (about 5 minutes on 2 CPU cores).")
    b.add_argument("--out", required=True, help="folder to build the world in (new or empty)")
    b.add_argument("--seed", type=types.seed, default=0, help="seed that fully determines the world (default 0)")
    b.add_argument("--threads", type=types.positive_int, default=None,
                   help="torch CPU threads for training (default min(4, CPU cores)); the weights depend on it")
    b.add_argument("--kind", choices=["demo", "seedlike"], default="demo",
                   help="demo (default): one shared ChatML tokenizer, ChatML tasks; seedlike: the seed merge's "
                        "heterogeneous sources (added ChatML tokens, another template, sharded bf16) and "
                        "plain-text tasks")
    b.add_argument("--quiet", action="store_true", help="no progress output")
    b.set_defaults(func=_build)
    r = dsub.add_parser("report", help="evaluate base and experts on the test split with lm-eval",
                        description="Evaluate the world's base and experts on the held-out test split.")
    r.add_argument("world", help="the world folder (holds world.json)")
    r.add_argument("--json", action="store_true", help="print {chance, accuracy} as JSON")
    r.add_argument("--split", choices=["search", "test"], default="test", help="task split (default test)")
    r.set_defaults(func=_report)


# demoworld's builder imports torch and transformers: imported when a world command runs, so that
# `merge-search --help` and the other commands do not pay for it.


def _build(args: argparse.Namespace) -> int:
    from demoworld.build import build_world

    world = build_world(args.out, seed=args.seed, quiet=args.quiet, threads=args.threads, kind=args.kind)
    print(f"{world.kind} world ready: {world.root}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from demoworld.build import load_manifest
    from demoworld.report import format_report, world_report

    report = world_report(load_manifest(args.world), args.split)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
