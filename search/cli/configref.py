"""``merge-search config-reference``: print the run-config reference generated from the schema."""

from __future__ import annotations

import argparse

from search.configref import config_reference

__all__ = ["register"]


def _cmd(args: argparse.Namespace) -> int:
    print(config_reference(), end="")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("config-reference", help="print every run-config key with type and default",
                              description="Print the run-config reference (Markdown), generated from the schema.")
    p.set_defaults(func=_cmd)
