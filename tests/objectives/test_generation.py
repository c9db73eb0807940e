"""Generated answers as a search objective: a ``generate_until`` task scored on the resident candidate gives what
stock lm-eval gives on the saved model (same documents, same greedy outputs), rung by rung."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from objectives.config import ObjectiveConfig
from objectives.lmeval import task_manager
from objectives.objective import Objective
from objectives.schema import validate

SKILL = "zahlen"


def _objective(world, **over) -> Objective:
    tasks = [{"name": world.gen_tasks["search"][SKILL], "test_task": world.gen_tasks["test"][SKILL],
              "metric": "exact_match", "subset": 24, "heldout": 16},
             {"name": world.tasks["search"][SKILL], "test_task": world.tasks["test"][SKILL], "subset": 24,
              "heldout": 16}]
    data = {"include_paths": [str(world.include_path)], "include_defaults": False, "rungs": [8, "all"],
            "batch_size": 16, "tasks": tasks, **over}
    return Objective(validate(ObjectiveConfig, data, "objective"))


@pytest.fixture(scope="module")
def expert(world):
    path = world.experts[SKILL]
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def test_generation_on_the_resident_model_equals_stock_lm_eval_on_the_saved_model(world, expert):
    import lm_eval

    path, model, tok = expert
    obj = _objective(world)
    gen = world.gen_tasks["test"][SKILL]
    ids = sorted(obj.subsets[world.gen_tasks["search"][SKILL]].heldout)
    with torch.inference_mode():
        ours = obj.score(model, tok, split="test")
    stock = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={path},dtype=float32", tasks=[gen],
                                    samples={gen: ids}, log_samples=True, batch_size=16, device="cpu",
                                    task_manager=task_manager([world.include_path], include_defaults=False))
    rows = sorted(stock["samples"][gen], key=lambda s: s["doc_id"])
    assert [r["doc_id"] for r in rows] == ids
    outputs = [r["filtered_resps"][0] for r in rows]
    assert all(o.strip() for o in outputs)  # the model answered something for every question
    # our per-document values are the stock ones, document by document
    assert ours.values[world.gen_tasks["search"][SKILL]] == {r["doc_id"]: float(r["exact_match"]) for r in rows}
    assert ours.tasks[world.gen_tasks["search"][SKILL]] == pytest.approx(stock["results"][gen]["exact_match,none"])
    # greedy generation is deterministic: the same outputs again
    again = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={path},dtype=float32", tasks=[gen],
                                    samples={gen: ids}, log_samples=True, batch_size=4, device="cpu",
                                    task_manager=task_manager([world.include_path], include_defaults=False))
    assert [r["filtered_resps"][0] for r in sorted(again["samples"][gen], key=lambda s: s["doc_id"])] == outputs


def test_generation_rungs_are_nested_and_add_up_to_a_full_evaluation(world, expert):
    _, model, tok = expert
    obj = _objective(world)
    name = world.gen_tasks["search"][SKILL]
    with torch.inference_mode():
        rungs = list(obj.iter_rungs(model, tok))
        fresh = obj.score(model, tok)
    assert [r.n[name] for r in rungs] == [8, 24]
    assert set(rungs[0].values[name]) <= set(rungs[1].values[name])
    assert rungs[-1].values[name] == fresh.values[name]
    # the zahlen expert ranks the options far better than it generates the answer (the log-likelihood /
    # generation gap a generative objective exists to see)
    assert fresh.tasks[world.tasks["search"][SKILL]] > fresh.tasks[name]


def test_task_kinds_tell_generation_from_log_likelihood(world):
    obj = _objective(world)
    assert obj.task_kinds() == {world.gen_tasks["search"][SKILL]: "generation",
                                world.tasks["search"][SKILL]: "loglikelihood"}
