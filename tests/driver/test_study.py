"""Constraints and the choice of the best trial (no models: trials are asked and told by hand)."""

from __future__ import annotations

import pytest

from objectives.errors import UserError
from objectives.schema import validate
from search.config import RunConfig
from search.driver.study import SearchConfig, feasible_front, is_feasible, load_study, open_study, ranked_trials
from search.stages.export import export_trial, pick_trial, winner


def tell(study, values, constraints):
    trial = study.ask()
    trial.suggest_float("a", 0, 1)
    for i, c in enumerate(constraints):
        trial.set_constraint(f"{i}:c", c)
    recipe = f"# trial {trial.number}\nmerge_method: linear\nmodels:\n- model: a\n  parameters: {{weight: 1.0}}\n"
    trial.set_user_attr("recipe", recipe)  # what export writes
    trial.set_user_attr("seed", 7)
    trial.set_user_attr("weights_sha256", f"{trial.number:064d}")  # a scored trial
    study.tell(trial, values)


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsgaii", "random"])
def test_constrained_samplers_never_pick_an_infeasible_best(sampler, tmp_path):
    study = open_study(SearchConfig(sampler=sampler), name="t", run_dir=tmp_path, seed=0, constrained=True)
    tell(study, 0.9, [0.2])  # the highest value breaks its constraint
    tell(study, 0.5, [-0.1])
    tell(study, 0.7, [0.0])  # exactly on the bound is feasible
    tell(study, 0.3, [-0.3])
    # Optuna's own view (and so optuna-dashboard's): the sampler recorded the constraints
    assert study.best_trial.number == 2
    assert [t.number for t in ranked_trials(study)] == [2, 1, 3, 0]
    assert pick_trial(study, "best").number == 2


def test_export_refuses_best_when_no_trial_is_feasible(tmp_path):
    study = open_study(SearchConfig(), name="t", run_dir=tmp_path, seed=0, constrained=True)
    tell(study, 0.9, [0.2])
    tell(study, 0.5, [0.1, -1.0])
    assert not any(is_feasible(t) for t in study.trials)
    with pytest.raises(UserError, match="no COMPLETE trial meets objective.constraints"):
        pick_trial(study, "best")
    assert pick_trial(study, "0").number == 0  # an explicit number is still exported


def test_multi_objective_ranks_by_primary_among_feasible_and_lists_the_front(tmp_path):
    study = open_study(SearchConfig(sampler="nsgaii"), name="t", run_dir=tmp_path, seed=0,
                       directions=["maximize", "maximize"], constrained=True)
    tell(study, [0.9, 0.1], [0.4])   # best primary, infeasible
    tell(study, [0.6, 0.6], [-0.1])
    tell(study, [0.5, 0.7], [-0.2])
    tell(study, [0.4, 0.5], [-0.1])  # dominated by trial 1
    tell(study, [0.6, 0.5], [-0.1])  # same primary as trial 1, worse secondary: dominated
    assert [t.number for t in ranked_trials(study)] == [1, 4, 2, 3, 0]
    assert [t.number for t in feasible_front(study)] == [1, 2]
    assert sorted(t.number for t in study.best_trials) == [1, 2]  # Optuna agrees
    with pytest.raises(UserError, match=r"Pareto front \[1, 2\] \(trial 1 has the best primary value\)"):
        pick_trial(study, "best")


def test_pipeline_exports_the_best_feasible_primary_of_a_multi_objective_study(tmp_path):
    study = open_study(SearchConfig(sampler="nsgaii"), name="t", run_dir=tmp_path, seed=0,
                       directions=["maximize", "maximize"], constrained=True)
    for values, c in (([0.9, 0.1], [0.4]), ([0.6, 0.6], [-0.1]), ([0.5, 0.7], [-0.2])):
        tell(study, values, c)
    export_trial(study, winner(load_study(tmp_path)), tmp_path / "best.yaml")
    assert (tmp_path / "best.yaml").read_text().startswith("# trial 1\n")
    assert '"trial": 1' in (tmp_path / "best.json").read_text()


def _config(sampler: str, *, secondary: bool, constraints: bool) -> dict:
    objective = {"tasks": [{"name": "a"}]}
    if secondary:
        objective["secondary"] = {"name": "english", "tasks": [{"name": "b"}]}
    if constraints:
        objective["constraints"] = [{"objective": "a", "min": 0.5}]
    return {"name": "t", "space": {"base_model": "base", "models": [{"model": "x"}, {"model": "y"}]},
            "objective": objective, "search": {"sampler": sampler}}


@pytest.mark.parametrize(("sampler", "secondary", "constraints", "error"), [
    ("cmaes", False, True, r"search.sampler 'cmaes' ignores objective.constraints: use one of "
                           r"\['tpe', 'gp', 'nsgaii', 'random'\]"),
    ("gp", True, False, r"search.sampler 'gp' is single-objective but the objective has 2 values"),
    ("cmaes", True, True, r"2 config error\(s\): search.sampler 'cmaes' is single-objective.*; search.sampler 'cmaes' ignores"),
])
def test_config_rejects_a_sampler_that_ignores_the_objective(sampler, secondary, constraints, error):
    with pytest.raises(UserError, match=error):
        validate(RunConfig, _config(sampler, secondary=secondary, constraints=constraints), "cfg.yaml")


@pytest.mark.parametrize(("sampler", "secondary", "constraints"), [
    ("tpe", True, True), ("nsgaii", True, True), ("gp", False, True), ("random", True, True),
    ("cmaes", False, False)])
def test_config_accepts_samplers_that_serve_the_objective(sampler, secondary, constraints):
    cfg = validate(RunConfig, _config(sampler, secondary=secondary, constraints=constraints), "cfg.yaml")
    assert cfg.search.sampler == sampler


def test_the_study_names_its_objectives_for_the_dashboard_and_a_resume_keeps_them_current(tmp_path):
    cfg = SearchConfig(sampler="random")
    study = open_study(cfg, name="s", run_dir=tmp_path, seed=0, directions=["maximize", "maximize"],
                       metric_names=["fitness (min)", "english"])
    assert study.metric_names == ["fitness (min)", "english"]
    tell(study, [0.5, 0.4], [])
    again = open_study(cfg, name="s", run_dir=tmp_path, seed=0, directions=["maximize", "maximize"],
                       metric_names=["fitness (weighted_mean)", "english"])  # the aggregate changed on a resume
    assert again.metric_names == ["fitness (weighted_mean)", "english"] and len(again.trials) == 1
    assert load_study(tmp_path).metric_names == ["fitness (weighted_mean)", "english"]
