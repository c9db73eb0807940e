"""Run configs on the demo world for tests (importable from every test folder: tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["write_config"]


def write_config(world, path: Path, name: str = "t", objective: dict | None = None, **search) -> Path:
    """A demo-world run config (absolute paths) with small fidelity stages: 20 then 40 items per task;
    ``objective`` updates the objective section."""
    data = {
        "name": name,
        "seed": 0,
        "device": "cpu",
        "space": {"base_model": str(world.base),
                  "models": [{"model": str(p), "name": s} for s, p in world.experts.items()],
                  "merge_method": "dare_ties", "parameters": {"int8_mask": True}, "dtype": "float32"},
        "objective": {"include_paths": [str(world.include_path)], "include_defaults": False,
                      "tasks": [{"name": t, "subset": 40} for t in world.tasks["search"].values()],
                      "stages": [20, "all"], "batch_size": 32},
        "search": {"workers": 2, "n_trials": 4, "pruner": "none", "n_startup_trials": 2, **search},
    }
    data["objective"].update(objective or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path
