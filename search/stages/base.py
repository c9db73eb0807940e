"""The stage contract: what every stage module of :mod:`search.stages` exposes, and what its ``run`` gets.

A stage is a module with four names, the same in every stage::

    NAME = "dpo"                      # its name: completion marker RUN/stages/dpo.json, --from/--only value
    SECTIONS = ("dpo",)               # the run-config sections it is the first stage to read
    def problems(cfg, run) -> list[str]       # its own checks, made before anything is created
    def run(cfg, run, ctx) -> result          # the work: reads earlier outputs through the RunDir, writes its own

``problems`` sees only the config and the run folder's paths (earlier stages may not have run yet): it checks
the stage's own inputs (data files, question sets, templates, sources) and returns one readable line per
problem; :func:`search.pipeline.check_run` gathers every selected stage's lines into one error before the run
folder is created. ``run`` gets a :class:`StageContext` (Ray address, live view, log) and returns a typed
result; it raises :class:`StageInterrupted` when stopped early (the marker is then not written and the next
run resumes it). :mod:`search.pipeline` holds the one ordered table of stages (``STAGES``); adding a stage is a
module with these names plus one line there (docs/architecture.md).

``SECTIONS`` decides what a changed config means for a run folder: a section of the first stage changes what
the study holds (refused: another run folder); a later stage's section makes that stage and every later one
need re-running (``merge-search run CONFIG --from STAGE``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Stage", "StageContext", "StageInterrupted"]


def _stderr(msg: str) -> None:
    print(f"[merge-search run] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StageContext:
    """What a stage's ``run`` gets besides the config and the run folder."""

    address: str | None = None  # Ray cluster to join (None: a private local Ray)
    progress: bool = False  # progress views: live on a terminal, periodic lines in a log (objectives.progress)
    log: Callable[[str], None] = field(default=_stderr)  # one-line progress messages
    redo: bool = False  # the stage is re-run on purpose (from_stage/only): earlier results of it are replaced


class StageInterrupted(KeyboardInterrupt):
    """A stage stopped early (Ctrl-C): its marker is not written, the next run resumes it."""


class Stage(Protocol):
    """The shape of a stage module (checked by tests/test_layout.py)."""

    NAME: str
    SECTIONS: tuple[str, ...]

    def problems(self, cfg: Any, run: Any) -> list[str]: ...

    def run(self, cfg: Any, run: Any, ctx: StageContext) -> Any: ...
