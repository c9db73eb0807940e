"""The report's search plots, drawn from the study alone (matplotlib, Agg).

* :func:`history_figure`: every finished trial, pruned ones at the value and fidelity they stopped at (marker
  per state, colour per number of items evaluated), with the best-so-far line of the complete trials; Optuna's
  own history plot draws complete trials only, so a search that pruned most candidates looked empty.
* :func:`parameter_figure`: one small panel per searched parameter (value vs objective), so every axis keeps
  its own readable label instead of the crowded shared axes of a parallel-coordinate plot.
* :func:`plot_loss`: the DPO stage's training loss per step.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState
from pathlib import Path

from search.rundir import TrialAttr

__all__ = ["history_figure", "parameter_figure", "plot_loss", "stopped_value"]

_STATE_STYLE = {TrialState.COMPLETE: ("o", "complete"), TrialState.PRUNED: ("x", "pruned")}


def stopped_value(trial: FrozenTrial) -> float | None:
    """The primary value a trial ended with: its final value, or (pruned) its last reported stage value."""
    if trial.state == TrialState.COMPLETE:
        return trial.values[0]
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def _items(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(TrialAttr.ITEMS) or (max(trial.intermediate_values)
                                                          if trial.intermediate_values else 0))


def history_figure(study: optuna.Study, title: str = "Optimization history"):
    """Objective value per trial number; see the module docstring."""
    import matplotlib.pyplot as plt

    finished = [t for t in study.trials if stopped_value(t) is not None]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    items = [_items(t) for t in finished] or [0]
    norm = plt.Normalize(min(items), max(max(items), min(items) + 1))
    for state, (marker, label) in _STATE_STYLE.items():
        trials = [t for t in finished if t.state == state]
        if trials:
            ax.scatter([t.number for t in trials], [stopped_value(t) for t in trials], c=[_items(t) for t in trials],
                       cmap="viridis", norm=norm, marker=marker, s=36 if marker == "o" else 30,
                       label=f"{label} ({len(trials)})")
    best, xs, ys = -math.inf, [], []
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    for t in sorted((t for t in finished if t.state == TrialState.COMPLETE), key=lambda t: t.number):
        best = max(best, sign * t.values[0])
        xs.append(t.number)
        ys.append(sign * best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best so far (complete trials)")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="items evaluated (fidelity)")
    ax.set_xlabel("trial number")
    ax.set_ylabel("objective (pruned: value at the stage it stopped)")
    ax.set_title(f"{title}: {len(finished)} finished trials")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def parameter_figure(study: optuna.Study, title: str = "Searched parameters"):
    """One panel per searched parameter: its value (x) against the objective (y), complete and pruned trials."""
    import matplotlib.pyplot as plt

    finished = [t for t in study.trials if stopped_value(t) is not None and t.params]
    names = sorted({n for t in finished for n in t.params})
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        for state, (marker, label) in _STATE_STYLE.items():
            trials = [t for t in finished if t.state == state and name in t.params]
            values = [t.params[name] for t in trials]
            if values and not all(isinstance(v, (int, float)) for v in values):
                values = [str(v) for v in values]
            ax.scatter(values, [stopped_value(t) for t in trials], marker=marker, s=18, alpha=0.8,
                       color="tab:blue" if state == TrialState.COMPLETE else "tab:gray", label=label)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    for row in axes:
        row[0].set_ylabel("objective", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_loss(history: list[dict], path: Path) -> None:
    """Training loss per step as a PNG (like the seed's ``--plot_loss``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if points:
        ax.plot(*zip(*points), marker="o", markersize=2)
    ax.set(xlabel="step", ylabel="DPO loss", title="DPO training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
