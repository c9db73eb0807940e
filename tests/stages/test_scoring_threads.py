"""The held-out stage (and so `merge-search evaluate`) and DPO's preference scoring run at the configured torch
CPU thread count, as the search's Ray workers do, and give the caller's count back afterwards."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from objectives.config import ObjectiveConfig
from objectives.objective import Objective
from objectives.schema import validate
from search.stages.dpo import SCORING_THREADS, PrefData, heldout_scores
from search.dpo_config import DPOStageConfig
from search.stages.candidates import Candidate
from search.stages.heldout import evaluate_candidates

@pytest.fixture(scope="module")
def watched(world):
    """The demo base model and its tokenizer, and the thread counts its forward passes ran at."""
    model = AutoModelForCausalLM.from_pretrained(world.base, dtype=torch.float32).eval()
    seen: list[int] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    return model, AutoTokenizer.from_pretrained(world.base), seen


def objective(world, threads: int | None) -> Objective:
    tasks = [{"name": world.tasks["search"]["zahlen"], "test_task": world.tasks["test"]["zahlen"], "subset": 8,
              "heldout": 8}]
    data = {"include_paths": [str(world.include_path)], "include_defaults": False, "batch_size": 4,
            "tasks": tasks, "threads": threads}
    return Objective(validate(ObjectiveConfig, data, "objective"))


@pytest.mark.parametrize("threads", [1, 2, None])
def test_heldout_scoring_runs_at_objective_threads(world, watched, outer, threads):
    model, tok, seen = watched
    seen.clear()
    report = evaluate_candidates(objective(world, threads), [Candidate("base", "source", None, lambda: (model, tok))],
                                 log=lambda *_: None)
    assert report.models["base"].n == {world.tasks["search"]["zahlen"]: 8}
    assert seen and set(seen) == {threads or outer}  # search and held-out documents alike
    assert torch.get_num_threads() == outer


def test_dpo_preference_scoring_runs_at_the_schema_default(watched, outer):
    model, tok, seen = watched
    seen.clear()
    data = PrefData(train=[], heldout=[{"prompt": "Drei plus eins ist", "chosen": " vier.", "rejected": " zwei."}])
    score = heldout_scores(DPOStageConfig(), model, tok, data, "held-out")
    assert SCORING_THREADS == ObjectiveConfig.model_fields["threads"].default == 1
    assert score["n"] == 1 and seen and set(seen) == {1} and torch.get_num_threads() == outer
