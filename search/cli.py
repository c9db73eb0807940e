"""The ``merge-search`` command line: one entry point, one sub-command per stage.

Each stage module exposes ``register(subparsers)`` which adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning an exit code. A :class:`~objectives.errors.UserError` becomes one
``merge-search: error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from objectives.errors import UserError

__all__ = ["build_parser", "main"]

# Sub-command modules, imported lazily so ``--help`` stays fast and a broken optional stage does not
# break the others. Order is the order shown in ``--help``.
COMMAND_MODULES = [
    "search.pipeline",  # run: every stage in order
    "demoworld.cli",
    "search.search_cli",  # search, dashboard, export
    "search.merge_cli",  # merge, hash
    "search.evaluate",
    "search.dpo_cli",
    "search.mtbench_cli",
    "search.configref",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merge-search",
        description="Evolutionary merge-search for German LLMs (mergekit + Optuna + Ray + lm-eval).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"merge-search: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("merge-search: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
