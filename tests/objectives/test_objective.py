"""Objective on the demo world: fixed seeded subsets, held-out disjointness, staged scoring of a resident model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from objectives.config import ObjectiveConfig
from objectives.errors import UserError
from objectives.objective import Objective
from objectives.schema import validate


def make(world, seed=0, **task_over) -> Objective:
    tasks = [{"name": world.tasks["search"]["zahlen"], "subset": 24, "heldout": 10, **task_over},
             {"name": world.tasks["search"]["artikel"], "test_task": world.tasks["test"]["artikel"],
              "subset": 24, "heldout": 12, "weight": 3.0}]
    data = {"include_paths": [str(world.include_path)], "include_defaults": False, "subset_seed": seed,
            "rungs": [8, "all"], "batch_size": 16, "tasks": tasks}
    return Objective(validate(ObjectiveConfig, data, "objective"))


@pytest.fixture(scope="module")
def expert(world):
    model = AutoModelForCausalLM.from_pretrained(world.experts["zahlen"], dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(world.experts["zahlen"])


def test_subsets_are_fixed_by_the_seed_and_held_out_is_disjoint(world):
    a, b, c = make(world), make(world), make(world, seed=1)
    assert a.record() == b.record()
    assert a.record() != c.record()
    z = a.subsets[world.tasks["search"]["zahlen"]]
    assert len(z.search) == 24 and len(z.heldout) == 10 and z.heldout_task == z.task
    assert not set(z.search) & set(z.heldout)
    art = a.subsets[world.tasks["search"]["artikel"]]
    assert art.heldout_task == world.tasks["test"]["artikel"] and len(art.heldout) == 12
    assert [len(s) for s in a.samples("search", 0).values()] == [8, 8]
    assert set(a.samples("search", 0)[z.task]) <= set(a.samples("search", 1)[z.task])  # nested rungs


def test_subset_larger_than_the_task_is_reported(world):
    with pytest.raises(UserError, match=r"subset \(190\) \+ heldout \(20\) must be <= the 200 documents"):
        make(world, subset=190, heldout=20)


def test_rung_by_rung_scoring_equals_a_fresh_full_evaluation(world, expert):
    obj = make(world)
    model, tok = expert
    rungs = list(obj.iter_rungs(model, tok))
    assert [r.items for r in rungs] == [16, 48] and [r.final for r in rungs] == [False, True]
    fresh = obj.score(model, tok, rung=-1)
    assert fresh.tasks == pytest.approx(rungs[-1].tasks) and fresh.score == pytest.approx(rungs[-1].score)
    z, art = (world.tasks["search"][s] for s in ("zahlen", "artikel"))
    assert fresh.score == pytest.approx((fresh.tasks[z] + 3 * fresh.tasks[art]) / 4)
    # the zahlen expert knows numbers far better than articles
    assert fresh.tasks[z] > fresh.tasks[art]
    assert all(e is not None and 0 <= e < 0.2 for e in fresh.stderr.values())
    held = obj.score(model, tok, split="test")
    assert held.n == {z: 10, art: 12} and held.split == "test"


def test_run_tasks_equals_lm_eval_simple_evaluate(world, expert):
    """run_tasks skips simple_evaluate's per-call environment collection but must score exactly as it does."""
    import lm_eval

    from objectives.lmeval import doc_values, make_lm, run_tasks, task_manager

    model, tok = expert
    lm = make_lm(model, tok, batch_size=8)
    tm = task_manager([world.include_path], include_defaults=False)
    names = [world.tasks["search"]["zahlen"], world.tasks["search"]["verben"]]
    samples = {names[0]: [3, 1, 40, 7], names[1]: [0, 5, 9]}
    torch.manual_seed(99)  # a caller's RNG state must not matter: both reseed
    ours = run_tasks(lm, names, samples, task_manager=tm, bootstrap_iters=10)
    stock = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=tm, bootstrap_iters=10,
                                    samples={t: sorted(ids) for t, ids in samples.items()})
    for name in names:
        assert ours["results"][name] == stock["results"][name]
        assert doc_values(ours, name, "acc,none") == doc_values(stock, name, "acc,none")
        assert sorted(doc_values(ours, name, "acc,none")) == sorted(samples[name])
    assert "pretty_env_info" in stock and "pretty_env_info" not in ours
