"""The machines that would run trials: what each can run (torch build, CUDA, GPUs and free memory, disk, local
sources), on this machine or on every alive node of a Ray cluster (a task pinned to each node).

Used by ``merge-search check`` (a table row per machine) and by the run's checks when it joins a cluster
(:func:`node_problems`: a node whose torch cannot run the config's device, or that lacks a local source, is
named before anything is created).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from search.merge.sources import is_local

__all__ = ["cluster_facts", "describe", "facts", "machine_facts", "machine_problems", "node_problems"]


def machine_facts(paths: list[str], disk_at: str) -> dict:
    """What one machine can run: torch build, CUDA visibility, GPUs and their free memory, free disk at
    ``disk_at``, and which of the local ``paths`` exist there (run on every Ray node by ``check``)."""
    import socket

    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            gpus.append({"name": torch.cuda.get_device_name(i), "free": free, "total": total})
    probe = Path(disk_at).expanduser().absolute()
    existing = next((a for a in [probe, *probe.parents] if a.is_dir()), Path("/"))
    return {"host": socket.gethostname(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
            "gpus": gpus, "disk_free": shutil.disk_usage(existing).free,
            "missing": [p for p in paths if not Path(p).expanduser().exists()]}


def facts(models: list[str], address: str | None) -> list[dict]:
    """:func:`machine_facts` of this machine, or of every alive node of the cluster at ``address``."""
    local = [m for m in models if is_local(m)]
    return cluster_facts(address, local, os.getcwd()) if address else [machine_facts(local, os.getcwd())]


def describe(f: dict) -> str:
    """One line of what a machine has."""
    gib = 1 << 30
    gpus = ", ".join(f"{g['name']} {g['free'] / gib:.0f}/{g['total'] / gib:.0f} GiB free" for g in f["gpus"])
    return (f"torch {f['torch']} ({'CUDA ' + f['cuda_build'] if f['cuda_build'] else 'CPU build'}); "
            f"GPUs: {gpus or 'none'}; {f['disk_free'] / gib:.0f} GiB free disk")


def machine_problems(device: str, f: dict) -> list[str]:
    """What keeps one machine from running trials on ``device``."""
    problems = []
    if device == "cuda" and not f["gpus"]:
        problems.append(f"device is cuda but torch on {f['host']} sees no GPU" + (
            " (a CPU build of torch: make install TORCH_VARIANT=cuda there)" if not f["cuda_build"] else ""))
    if f["missing"]:
        problems.append(f"source folders missing on {f['host']}: {f['missing']}")
    return problems


def node_problems(device: str, models: list[str], address: str) -> list[str]:
    """Every cluster node that cannot run trials of this config (see :func:`machine_problems`)."""
    return [p for f in facts(models, address) for p in machine_problems(device, f)]


def cluster_facts(address: str, paths: list[str], disk_at: str) -> list[dict]:
    """:func:`machine_facts` of every alive node of the Ray cluster at ``address`` (a task pinned to each)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from search.driver import init_ray

    init_ray(address)
    remote = ray.remote(num_cpus=0)(machine_facts)
    refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(paths, disk_at) for node in ray.nodes() if node.get("Alive")]
    return ray.get(refs, timeout=120)
