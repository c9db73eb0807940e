"""A search with ``objective.selection: informative``: the sources' item matrix, the recorded order and
estimates, pruned trials' records, and a resume on the same items."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from demo_configs import write_config
from objectives.objective import Objective, aggregate
from objectives.selection import ItemMatrix, informative_order
from search.config import load_run_config
from search.rundir import RunDir, TrialAttr
from search.stages.optimize import run_search


def _study(run) -> optuna.Study:
    info = RunDir(run).read_manifest()
    return optuna.load_study(study_name=info.study_name, storage=f"sqlite:///{RunDir(run).study_db}")


def test_informative_search_records_order_estimates_and_resumes_on_the_same_items(world, ray_local, tmp_path):
    path = write_config(world, tmp_path / "cfg.yaml", n_trials=6, workers=2, pruner="successive_halving",
                        min_resource=1, reduction_factor=2, objective={"selection": "informative", "estimate": True})
    cfg = load_run_config(path)
    run = RunDir(tmp_path / "run")
    summary = run_search(cfg, run.root, progress=False)
    matrix = ItemMatrix.load(run.item_matrix)
    assert len(matrix.sources) == 4 and summary.matrix_items == 4 * 3 * 40

    # the search order is the informative order of the same seeded subset, and it is recorded
    plain, informed = Objective(cfg.objective), Objective(cfg.objective, matrix=matrix)
    assert informed.record()["selection"] == "informative" and plain.record()["selection"] == "random"
    for name, s in informed.subsets.items():
        random_ids = plain.subsets[name].search
        assert sorted(s.search) == sorted(random_ids) and s.search != random_ids
        assert s.search == informative_order(matrix.values[name], random_ids)

    study = _study(run.root)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert done and pruned
    for t in done:  # the final value is the plain score on the whole subset, never the estimate
        est = t.user_attrs[TrialAttr.ESTIMATE]
        assert t.value == pytest.approx(aggregate(cfg.objective, t.user_attrs[TrialAttr.SCORES]))
        assert est["value"] == pytest.approx(t.value) and est["stderr"] == pytest.approx(0, abs=1e-9)
    for t in pruned:  # a pruned trial says at which items and with which estimate it stopped
        est = t.user_attrs[TrialAttr.ESTIMATE]
        assert t.user_attrs[TrialAttr.ITEMS] == est["items"] == 3 * 20
        assert est["stderr"] > 0 and 0 <= est["value"] <= 1
        assert t.intermediate_values == {3 * 20: pytest.approx(est["value"])}  # what the pruner saw

    stamp = run.item_matrix.stat().st_mtime_ns
    more = load_run_config(write_config(world, tmp_path / "cfg.yaml", n_trials=8, workers=2,
                                        pruner="successive_halving", min_resource=1, reduction_factor=2,
                                        objective={"selection": "informative", "estimate": True}))
    again = run_search(more, run.root, progress=False)
    assert again.matrix_items == 0 and run.item_matrix.stat().st_mtime_ns == stamp  # reused, not scored again
    assert len(_study(run.root).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 8


def test_estimate_without_informative_selection_is_refused(world, tmp_path):
    from objectives.errors import UserError

    with pytest.raises(UserError, match="estimate: true needs selection: informative"):
        load_run_config(write_config(world, tmp_path / "cfg.yaml", objective={"estimate": True}))
