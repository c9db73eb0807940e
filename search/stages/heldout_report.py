"""The held-out stage's result, :class:`HeldoutReport` (``RUN/heldout.json`` + ``heldout.md``): what the held-out
stage writes and the report and later stages read."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from objectives.schema import load_json
from search import atomic
from search.rundir import RunDir

__all__ = ["HeldoutReport", "ModelScores", "fmt_score", "format_table"]


@dataclass(frozen=True)
class ModelScores:
    """One model's row of ``heldout.json``."""

    kind: str
    trial: int | None
    search: dict[str, float]
    test: dict[str, float]
    search_avg: float
    test_avg: float | None
    stderr: dict[str, float]
    stderr_test: dict[str, float]
    n: dict[str, int]
    n_test: dict[str, int]
    secondary_avg: float | None = None
    secondary_test_avg: float | None = None
    has_secondary: bool = False


@dataclass(frozen=True)
class HeldoutReport:
    """``heldout.json``: every evaluated model and the subsets they were scored on."""

    models: dict[str, ModelScores]
    subsets: dict[str, Any]
    # task -> "loglikelihood" | "generation" | "chat": what kind of answer a task scores (reports split by it)
    task_kinds: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        models = {}
        for name, m in self.models.items():
            row = {k: v for k, v in asdict(m).items() if k != "has_secondary"}
            if not m.has_secondary:
                row.pop("secondary_avg"), row.pop("secondary_test_avg")
            models[name] = row
        return {"models": models, "subsets": self.subsets, "task_kinds": self.task_kinds}

    def save(self, run: RunDir) -> None:
        run.root.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run.heldout_json, self.to_json())
        atomic.write_text(run.heldout_md, format_table(self))

    @classmethod
    def load(cls, path: str | Path) -> HeldoutReport:
        data = load_json(path, "run the held-out stage first (merge-search evaluate)")
        models = {name: ModelScores(**m, has_secondary="secondary_avg" in m) for name, m in data["models"].items()}
        return cls(models=models, subsets=data.get("subsets", {}), task_kinds=data.get("task_kinds", {}))


def fmt_score(x: float | None, err: float | None = None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4f}" + (f" ± {err:.4f}" if err is not None else "")


def format_table(report: HeldoutReport) -> str:
    """Markdown: one row per model and task (search vs held-out score with stderr), then the averages."""
    lines = ["| model | kind | task | search | held-out |", "|---|---|---|---|---|"]
    for name, m in report.models.items():
        for task, score in m.search.items():
            lines.append(f"| {name} | {m.kind} | {task} | {fmt_score(score, m.stderr.get(task))} | "
                         f"{fmt_score(m.test.get(task), m.stderr_test.get(task))} |")
        lines.append(f"| {name} | {m.kind} | **average** | **{fmt_score(m.search_avg)}** | **{fmt_score(m.test_avg)}** |")
        if m.has_secondary:
            lines.append(f"| {name} | {m.kind} | **secondary average** | **{fmt_score(m.secondary_avg)}** | "
                         f"**{fmt_score(m.secondary_test_avg)}** |")
    return "\n".join(lines) + "\n"
