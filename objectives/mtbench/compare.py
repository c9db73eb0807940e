"""Side-by-side MT-Bench tables (per-category deltas in percent against a baseline) and a bar chart."""

from __future__ import annotations

import textwrap
from pathlib import Path

from objectives.errors import UserError
from objectives.mtbench.config import DEFAULT_TEMPERATURES
from objectives.mtbench.scores import FASTEVAL_KEYS, STANDIN_LABEL
from objectives.schema import load_json

__all__ = ["bar_chart", "comparison_table", "load_scores"]

SUMMARY_ROWS = ("first_turn", "second_turn", "average")


def load_scores(path: str | Path) -> dict:
    p = Path(path)
    data = load_json(p, "pass scores.json files written by `mtbench run`/`rescore`")
    missing = [k for k in FASTEVAL_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise UserError(f"{p}: not an MT-Bench scores.json, missing {missing}")
    return data


def _categories(all_scores: list[dict]) -> list[str]:
    seen = [c for s in all_scores for c in s["categories"]]
    known = [c for c in DEFAULT_TEMPERATURES if c in seen]
    return known + sorted(set(seen) - set(known))


def _value(scores: dict, row: str) -> float | None:
    return scores.get(row) if row in SUMMARY_ROWS else scores["categories"].get(row)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _delta(x: float | None, base: float | None) -> str:
    return "–" if x is None or not base else f"{100 * (x - base) / base:+.1f}%"


def comparison_table(all_scores: list[dict], names: list[str], baseline: int = 0) -> str:
    """A Markdown table: one score column per model, a ``Δ%`` column per non-baseline model."""
    header = ["", *(h for i, n in enumerate(names) for h in ([n] if i == baseline else [n, f"Δ% vs {names[baseline]}"]))]
    rows = []
    for row in [*_categories(all_scores), *SUMMARY_ROWS]:
        base = _value(all_scores[baseline], row)
        cells = [f"**{row}**" if row in SUMMARY_ROWS else row]
        for i, s in enumerate(all_scores):
            cells.append(_fmt(_value(s, row)))
            if i != baseline:
                cells.append(_delta(_value(s, row), base))
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    counts = {n: (s.get("counts") or {}).get("first_turn") for n, s in zip(names, all_scores)}
    if len(set(counts.values())) > 1:
        told = ", ".join(f"{n} {c if c is not None else '?'}" for n, c in counts.items())
        lines.append(f"\n**The models were rated on different numbers of questions ({told}): their averages and "
                     "deltas are not comparable; rate them on the same question file.**")
    lines += _measured_with_notes(all_scores, names, questions=len(set(counts.values())) == 1)
    if any(s.get("label") == STANDIN_LABEL for s in all_scores):
        lines.append(f"\n*{STANDIN_LABEL}.*")
    return "\n".join(lines) + "\n"


def _measured_with_notes(all_scores: list[dict], names: list[str], questions: bool = True) -> list[str]:
    """A bold note per part of ``measured_with`` (judge, judge prompts, and with ``questions`` the question set)
    that differs between the models, naming each model's; scores without the record (older runs) are named as
    unknown."""
    notes = []
    parts = (("judge", "judges"), ("prompts", "judge prompt sets")) + ((("questions", "question sets"),)
                                                                       if questions else ())
    for key, what in parts:
        seen = {n: (s.get("measured_with") or {}).get(key) for n, s in zip(names, all_scores)}
        if len(set(seen.values())) > 1:
            told = "; ".join(f"{n}: {v or 'unknown'}" for n, v in seen.items())
            notes.append(f"\n**The models were rated with different {what} ({told}): their scores are not "
                         "comparable.**")
    return notes


def bar_chart(all_scores: list[dict], names: list[str], path: str | Path, title: str = "MT-Bench") -> Path:
    """Grouped bars per category (plus the average), one colour per model; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = _categories(all_scores) + ["average"]
    width = 0.8 / len(all_scores)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cats)) + 1.5, 4.3))
    for i, (s, n) in enumerate(zip(all_scores, names)):
        vals = [_value(s, c) or 0.0 for c in cats]
        ax.bar([k + (i - (len(all_scores) - 1) / 2) * width for k in range(len(cats))], vals, width, label=n)
    ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
    ax.set_ylim(0, 10)
    ax.set_ylabel("score (1-10)")
    if any(s.get("label") == STANDIN_LABEL for s in all_scores):
        title += "\n" + "\n".join(textwrap.wrap(STANDIN_LABEL, 70))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
