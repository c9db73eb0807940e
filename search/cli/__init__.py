"""The ``merge-search`` command line: one entry point, one sub-command per stage.

Each module of this package exposes ``register(subparsers)`` which adds its parser and sets ``func`` to a
callable taking the parsed namespace and returning an exit code; the callable parses, validates and calls the
library (:mod:`search`), nothing more. Nothing outside this package imports it, except a plugin. Other packages
add sub-commands as plugins: an entry point in the group :data:`PLUGIN_GROUP` naming their ``register`` function
(``demo-world`` is :mod:`demoworld.cli`'s, which uses :mod:`search.cli.types`); a plugin that fails to load is
left out with one warning line on stderr. A
:class:`~objectives.errors.UserError` becomes one ``merge-search: error: ...`` line on stderr and exit code 2
(``--debug``: the traceback too).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import signal
import sys
import traceback
import warnings

from objectives.errors import UserError

__all__ = ["build_parser", "main"]

# Sub-command modules, imported lazily so ``--help`` stays fast and a broken optional stage does not
# break the others. Order is the order shown in ``--help``.
COMMAND_MODULES = [
    "search.cli.run",  # run: every stage in order
    "search.cli.check",  # check: what can be verified before a run
    "search.cli.study",  # search, dashboard, export
    "search.cli.merge",  # merge, hash
    "search.cli.evaluate",
    "search.cli.dpo",
    "search.cli.mtbench",
    "search.cli.configref",
]
PLUGIN_GROUP = "merge_search.commands"  # entry points: name = "package.module:register", shown after the above


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
    parser.add_argument("--verbose", action="store_true",
                        help="keep the libraries' own progress bars and info logs (lm-eval, transformers, datasets)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _register_plugins(sub)
    return parser


def _register_plugins(sub) -> None:
    """Each installed entry point of :data:`PLUGIN_GROUP`, by name; one that fails is skipped with a warning."""
    seen = set()
    for ep in sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: (e.name, e.value)):
        if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        try:
            ep.load()(sub)
        except Exception as err:  # a broken plugin must not break the other commands
            reason = " ".join(str(err).split())  # one line
            print(f"merge-search: warning: command plugin {ep.name!r} ({ep.value}) not loaded: "
                  f"{type(err).__name__}: {reason}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _warnings_to_stderr()
    _library_chatter(args.verbose)
    _offline_when_unreachable(args.verbose)
    signal.signal(signal.SIGTERM, _terminated)  # as Ctrl-C: stages stop where they can resume
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
    except Exception as err:  # a disk that filled up while writing: the user's to fix, in one line
        from search.preflight import disk_full

        full = disk_full(err)
        if full is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"merge-search: error: a disk filled up while writing ({full}): free some space where the command "
              "writes (its output or run folder, the search.storage database, the temp folder), then run the same "
              "command again (it resumes; what finished is kept)", file=sys.stderr)
        return 2


def _offline_when_unreachable(verbose: bool) -> None:
    """When the Hugging Face Hub cannot be reached (and nobody said whether to be offline), work offline: the
    libraries then answer "not in the cache" at once instead of after minutes of retries per file. Set before
    they are imported (the sub-commands import them lazily)."""
    from search.merge.sources import hub_reachable

    if "HF_HUB_OFFLINE" in os.environ or "huggingface_hub" in sys.modules or hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if verbose:
        print("merge-search: huggingface.co cannot be reached: working offline (HF_HUB_OFFLINE=1)", file=sys.stderr)


def _terminated(*_) -> None:
    raise KeyboardInterrupt


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (not the stream of the first call)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _library_chatter(verbose: bool) -> None:
    """Unless ``--verbose``: no progress bars or info logs from the libraries (their documented environment
    switches, read when they are first imported, here and in Ray workers), only merge-search's own."""
    import optuna

    if verbose:
        os.environ["MERGE_SEARCH_VERBOSE"] = "1"
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # bitsandbytes: optional CPU kernels missing; kernels (loaded by bitsandbytes' CPU backend): "skipping
    # publisher trust check" when offline; ray: start-up notices
    for name in ("bitsandbytes", "kernels", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("transformers", "trl", "peft"):  # deprecations inside the libraries, not in our calls
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    for name, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
        os.environ.setdefault(name, value)


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
