"""Helpers shared by test folders (tests/ is on sys.path): demo-world run configs, free ports for Ray nodes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

import yaml

__all__ = ["free_port", "ray_port_args", "stop_group", "write_config"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_port_args() -> list[str]:
    """``ray start`` flags giving every port of a node a free one (several nodes on one machine)."""
    return [f"--{opt}={free_port()}" for opt in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "node-manager-port", "object-manager-port")]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a process started with ``start_new_session`` and its group, SIGKILL what is left after ``timeout``;
    a group that is gone already is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def write_config(world, path: Path, name: str = "t", objective: dict | None = None, **search) -> Path:
    """A demo-world run config (absolute paths) with small rungs: 20 then 40 items per task;
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
                      "rungs": [20, "all"], "batch_size": 32},
        "search": {"workers": 2, "n_trials": 4, "pruner": "none", "n_startup_trials": 2, **search},
    }
    data["objective"].update(objective or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path
