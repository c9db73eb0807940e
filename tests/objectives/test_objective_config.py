"""Objective config and up-front validation against lm-eval's task index (no dataset is read here)."""

from __future__ import annotations

import pytest

from objectives.config import ObjectiveConfig
from objectives.errors import UserError
from objectives.objective import Objective, aggregate, check_config
from objectives.schema import validate


def cfg(**over) -> ObjectiveConfig:
    data = {"tasks": [{"name": "arc_de", "metric": "acc_norm"}], **over}
    return validate(ObjectiveConfig, data, "objective")


@pytest.fixture(scope="module")
def tm():
    from objectives.lmeval import task_manager

    return task_manager()


def test_bare_metric_gets_the_none_filter_and_defaults_are_in_the_schema():
    c = cfg()
    assert c.tasks[0].metric == "acc_norm,none"
    assert c.rungs == ["all"] and c.batch_size == 32 and c.aggregate == "weighted_mean"


def test_schema_problems_are_reported_together():
    with pytest.raises(UserError) as e:
        cfg(rungs=[200, 50], fewshot_as_multiturn=True, constraints=[{"objective": "englsh", "min": 0.5}])
    msg = str(e.value)
    assert "rungs: must grow" in msg and "apply_chat_template" in msg
    assert "'englsh'" in msg


def test_expert_relative_needs_a_reference_for_every_task():
    with pytest.raises(UserError, match=r"reference.*\['arc_de'\]"):
        cfg(aggregate="expert_relative")
    c = cfg(aggregate="expert_relative", reference={"arc_de": 0.5})
    assert aggregate(c, {"arc_de": 0.4}) == pytest.approx(0.8)


def test_aggregates():
    tasks = [{"name": "a", "weight": 1.0}, {"name": "b", "weight": 3.0}]
    scores = {"a": 0.2, "b": 0.6}
    assert aggregate(validate(ObjectiveConfig, {"tasks": tasks}, "o"), scores) == pytest.approx(0.5)
    assert aggregate(validate(ObjectiveConfig, {"tasks": tasks, "aggregate": "min"}, "o"), scores) == 0.2


def test_subset_all_leaves_nothing_to_hold_out():
    with pytest.raises(UserError, match="subset: all"):
        cfg(tasks=[{"name": "arc_de", "subset": "all", "heldout": 10}])


def test_unknown_tasks_groups_and_metrics_are_all_listed(tm):
    c = cfg(tasks=[{"name": "arc_dee"}, {"name": "global_mmlu_de"}, {"name": "xnli_de", "metric": "acc_norm"},
                   {"name": "mgsm_direct_de", "metric": "exact_match,flexible-extract"},
                   {"name": "paws_de", "test_task": "paws_dex"}])
    problems = check_config(c, tm)
    assert len(problems) == 4, problems
    assert "unknown lm-eval task 'arc_dee'" in problems[0] and "arc_de" in problems[0]
    assert "group" in problems[1] and "global_mmlu_de_" in problems[1]
    assert "does not produce 'acc_norm,none'" in problems[2] and "acc,none" in problems[2]
    assert "tasks[4].test_task" in problems[3]


def test_german_builtin_tasks_validate_offline(tm):
    names = ["arc_de", "hellaswag_de", "m_mmlu_de", "truthfulqa_de_mc2", "belebele_deu_Latn", "xnli_de",
             "paws_de"]
    c = cfg(tasks=[{"name": n} for n in names])
    assert check_config(c, tm) == []


def test_unavailable_dataset_is_named_when_offline(tm, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        Objective(cfg(tasks=[{"name": "arc_de"}, {"name": "paws_de"}]), tm=tm)
    msg = str(e.value)
    if "2 problem(s)" not in msg:
        pytest.skip(f"a dataset is in the local cache: {msg}")
    assert "alexandrainst/m_arc (de)" in msg and "google-research-datasets/paws-x (de)" in msg
    assert "HF_DATASETS_OFFLINE" in msg
    assert [p.split(":")[0] for p in e.value.problems] == ["objective.tasks[0]", "objective.tasks[1]"]
