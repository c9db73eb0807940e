"""Scoring on CPU runs at the configured torch thread count (``objective.threads``), restored afterwards."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from objectives.config import ObjectiveConfig
from objectives.errors import UserError
from objectives.objective import cpu_threads
from objectives.preference import preference_scores
from objectives.schema import validate

def test_threads_default_is_one_in_the_schema_and_must_be_positive():
    tasks = [{"name": "arc_de"}]
    assert validate(ObjectiveConfig, {"tasks": tasks}, "objective").threads == 1
    assert validate(ObjectiveConfig, {"tasks": tasks, "threads": None}, "objective").threads is None
    with pytest.raises(UserError, match="threads"):
        validate(ObjectiveConfig, {"tasks": tasks, "threads": 0}, "objective")


def test_cpu_threads_pins_inside_and_restores_after(outer):
    with cpu_threads(1, "cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == outer
    with pytest.raises(RuntimeError, match="boom"), cpu_threads(2, torch.device("cpu")):
        assert torch.get_num_threads() == 2
        raise RuntimeError("boom")
    assert torch.get_num_threads() == outer


def test_cpu_threads_leaves_torch_alone_for_none_and_gpus(outer):
    with cpu_threads(None, "cpu"):
        assert torch.get_num_threads() == outer
    with cpu_threads(1, "cuda:0"):  # a GPU model: CPU threads are not what scores it
        assert torch.get_num_threads() == outer


def test_preference_scores_run_at_the_given_thread_count(world, outer):
    model = AutoModelForCausalLM.from_pretrained(world.base, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(world.base)
    seen: list[int] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    pairs = [{"prompt": "Zwei plus zwei ist", "chosen": " vier.", "rejected": " fünf."}] * 3
    pinned = preference_scores(model, tok, pairs, batch_size=1, threads=1)
    assert seen and set(seen) == {1} and torch.get_num_threads() == outer
    seen.clear()
    free = preference_scores(model, tok, pairs, batch_size=1)
    assert seen and set(seen) == {outer}
    assert pinned["n"] == free["n"] == 3
    assert pinned["reward_margin"] == pytest.approx(free["reward_margin"], abs=1e-4)
