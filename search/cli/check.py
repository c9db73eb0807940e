"""``merge-search check CONFIG [--address ADDR]``: what can be verified before a GPU hour is spent
(:func:`search.check.check_config`), as a table; exit 2 when a row is not ok."""

from __future__ import annotations

import argparse

from search.check import OK, check_config, format_rows
from search.config import load_run_config
from search.rundir import RunDir

__all__ = ["register"]


def _cmd(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config)
    rows = check_config(cfg, RunDir.of(args.out, cfg.name), address=args.address)
    print(format_rows(rows))
    bad = [r for r in rows if r.status != OK]
    if bad:
        print(f"\n{len(bad)} of {len(rows)} checks not ok: fix the failed and missing ones; rows 'not checked "
              "offline' need the network or a cluster to verify")
        return 2
    print(f"\nall {len(rows)} checks ok")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="check a run config, its sources and the machines that would run it; creates nothing",
        description="Everything that can be verified before a run: the checks of every stage, each source (local, "
                    "cached or not checked offline), the memory plan of a search worker and, with --address, "
                    "every Ray node (torch build, CUDA, GPU memory, disk, local sources). Exit 2 unless all ok.")
    p.add_argument("config", help="run config YAML")
    p.add_argument("--out", help="run folder it would use (default: results/<name>)")
    p.add_argument("--address", help="Ray cluster address: check every node of it")
    p.set_defaults(func=_cmd)
