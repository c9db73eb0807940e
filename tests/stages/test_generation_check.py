"""Held-out generation before/after a training stage (the DPO stage's check beyond preference accuracy)."""

from __future__ import annotations

import yaml

from search.config import load_run_config
from search.stages.generation_check import generation_scores, generation_warning


def _config(world, tmp_path):
    tasks = [{"name": world.tasks["search"]["zahlen"], "test_task": world.tasks["test"]["zahlen"], "subset": 8},
             {"name": world.gen_tasks["search"]["zahlen"], "test_task": world.gen_tasks["test"]["zahlen"],
              "metric": "exact_match", "subset": 8, "heldout": 40}]
    data = {"name": "g", "device": "cpu",
            "space": {"base_model": str(world.base), "models": [{"model": str(world.experts["zahlen"])}],
                      "dtype": "float32"},
            "objective": {"include_paths": [str(world.include_path)], "include_defaults": False, "tasks": tasks}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_run_config(path)


def test_generation_check_scores_only_generative_tasks_and_warns_when_they_fall(world, tmp_path):
    cfg = _config(world, tmp_path)
    better = generation_scores(cfg, world.base, world.experts["zahlen"], log=lambda *_: None)
    name = world.gen_tasks["search"]["zahlen"]
    assert set(better["before"]["tasks"]) == {name} and better["after"]["n"] == 40  # the generative task only
    assert better["after"]["mean"] > better["before"]["mean"]  # the zahlen expert generates zahlen answers
    assert generation_warning(better) is None
    worse = generation_scores(cfg, world.experts["zahlen"], world.base, log=lambda *_: None)
    assert generation_warning(worse).startswith("held-out generation fell after DPO")


def test_no_generative_task_no_check(world, tmp_path):
    cfg = _config(world, tmp_path)
    plain = cfg.model_copy(update={"objective": cfg.objective.model_copy(update={"tasks": cfg.objective.tasks[:1]})})
    assert generation_scores(plain, world.base, world.base) is None
