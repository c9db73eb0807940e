"""The report's search plots show every finished trial, pruned ones at the stage they stopped at."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.stages.plots import history_figure, parameter_figure, stopped_value


def study_with(pruned: int, complete: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    dist = {"a.weight": FloatDistribution(0, 1), "b.density": FloatDistribution(0, 1)}
    for i in range(pruned):
        study.add_trial(create_trial(state=TrialState.PRUNED, params={"a.weight": i / 10, "b.density": 0.5},
                                     distributions=dist, intermediate_values={150: 0.4 + i / 100, 300: 0.5},
                                     user_attrs={"items_evaluated": 300}))
    for i in range(complete):
        study.add_trial(create_trial(value=0.6 + i / 100, params={"a.weight": 0.3, "b.density": i / 10},
                                     distributions=dist, user_attrs={"items_evaluated": 600}))
    return study


def test_history_draws_pruned_trials_at_the_value_they_stopped_with():
    study = study_with(pruned=7, complete=2)
    assert [stopped_value(t) for t in study.trials[:2]] == [0.5, 0.5]  # the last stage reported
    fig = history_figure(study)
    ax = fig.axes[0]
    points = sum(len(c.get_offsets()) for c in ax.collections)
    assert points == 9  # Optuna's own history would show the 2 complete ones only
    assert "9 finished trials" in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "pruned (7)" in labels and "complete (2)" in labels
    best = [line for line in ax.get_lines() if line.get_label().startswith("best so far")]
    assert list(best[0].get_ydata()) == [0.6, 0.61]


def test_parameter_view_has_one_titled_panel_per_parameter():
    fig = parameter_figure(study_with(pruned=3, complete=3))
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_visible())
    assert titles == ["a.weight", "b.density"]
