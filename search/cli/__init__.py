"""The ``merge-search`` command line: one entry point, one sub-command per stage.

Each module of this package exposes ``register(subparsers)`` which adds its parser and sets ``func`` to a
callable taking the parsed namespace and returning an exit code; the callable parses, validates and calls the
library (:mod:`search`), nothing more. Nothing outside this package imports it. A
:class:`~objectives.errors.UserError` becomes one ``merge-search: error: ...`` line on stderr and exit code 2
(``--debug``: the traceback too).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from objectives.errors import UserError

__all__ = ["build_parser", "main"]

# Sub-command modules, imported lazily so ``--help`` stays fast and a broken optional stage does not
# break the others. Order is the order shown in ``--help``.
COMMAND_MODULES = [
    "search.cli.run",  # run: every stage in order
    "search.cli.world",  # demo-world build | report
    "search.cli.search",  # search, dashboard, export
    "search.cli.merge",  # merge, hash
    "search.cli.evaluate",
    "search.cli.dpo",
    "search.cli.mtbench",
    "search.cli.configref",
]


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line like every other refused input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="merge-search",
        description="Evolutionary merge-search for German LLMs (mergekit + Optuna + Ray + lm-eval).",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of a refused input too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _warnings_to_stderr()
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        if args.debug:
            traceback.print_exc()
        print(f"merge-search: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("merge-search: interrupted", file=sys.stderr)
        return 130


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (not the stream of the first call)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _warnings_to_stderr() -> None:
    """The library's warnings (the ``merge_search`` logger) as ``merge-search: warning: ...`` lines."""
    log = logging.getLogger("merge_search")
    if not any(getattr(h, "merge_search_cli", False) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("merge-search: warning: %(message)s"))
        handler.merge_search_cli = True
        log.addHandler(handler)
        log.setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
