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

__all__ = ["cluster_facts", "describe", "facts", "gpu_share", "machine_facts", "machine_problems", "node_problems"]


def _uncached(hub_ids: list[str]) -> list[str]:
    """The hub model ids without a snapshot in this machine's Hugging Face cache (config files looked up only)."""
    from huggingface_hub import snapshot_download

    out = []
    for model in hub_ids:
        try:
            snapshot_download(model, local_files_only=True, allow_patterns=["config.json"])
        except Exception:  # noqa: BLE001 -- not cached here
            out.append(model)
    return out


def machine_facts(paths: list[str], disk_at: str, hub_ids: list[str] = ()) -> dict:
    """What one machine can run: torch build, CUDA visibility, GPUs and their free memory, free disk at
    ``disk_at``, which of the local ``paths`` exist there, which ``hub_ids`` its Hugging Face cache lacks and
    whether it may download them (``HF_HUB_OFFLINE``) (run on every Ray node by ``check``)."""
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
            "missing": [p for p in paths if not Path(p).expanduser().exists()], "uncached": _uncached(list(hub_ids)),
            "offline": os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "on", "true", "yes")}


def facts(models: list[str], address: str | None) -> list[dict]:
    """:func:`machine_facts` of this machine, or of every alive node of the cluster at ``address``."""
    local = [m for m in models if is_local(m)]
    hub = [m for m in models if not is_local(m)]
    return cluster_facts(address, local, os.getcwd(), hub) if address else [machine_facts(local, os.getcwd(), hub)]


def describe(f: dict) -> str:
    """One line of what a machine has."""
    gib = 1 << 30
    gpus = ", ".join(f"{g['name']} {g['free'] / gib:.0f}/{g['total'] / gib:.0f} GiB free" for g in f["gpus"])
    uncached = f.get("uncached")
    return (f"torch {f['torch']} ({'CUDA ' + f['cuda_build'] if f['cuda_build'] else 'CPU build'}); "
            f"GPUs: {gpus or 'none'}; {f['disk_free'] / gib:.0f} GiB free disk"
            + (f"; not in its Hugging Face cache (downloaded at first load): {uncached}" if uncached else ""))


def gpu_share(f: dict, worker_gpus: float | None) -> int:
    """The most GPU memory one search worker gets on machine ``f``: its GPU with the most free memory, shared by
    ``1 / worker_gpus`` workers (``search.worker_gpus``, default one GPU per worker); 0 without a GPU."""
    return int(max((g["free"] for g in f["gpus"]), default=0) * min(worker_gpus or 1.0, 1.0))


def machine_problems(device: str, f: dict, need: int | None = None, worker_gpus: float | None = None) -> list[str]:
    """What keeps one machine from running trials on ``device``; ``need``: the bytes of GPU memory a search worker
    needs at least (the memory plan without cached sources), compared with :func:`gpu_share`."""
    problems = []
    if device.startswith("cuda") and not f["gpus"]:
        problems.append(f"device is cuda but torch on {f['host']} sees no GPU" + (
            " (a CPU build of torch: make install TORCH_VARIANT=cuda there)" if not f["cuda_build"] else ""))
    elif device.startswith("cuda") and need and (share := gpu_share(f, worker_gpus)) < need:
        gib = 1 << 30
        problems.append(f"a search worker needs at least {need / gib:.1f} GiB of GPU memory (space.cache_sources: "
                        f"false) but gets at most {share / gib:.1f} GiB free on {f['host']}: "
                        "use larger GPUs, fewer workers per GPU (search.worker_gpus) or a smaller merge dtype (space.out_dtype, "
                        "else space.dtype)")
    if f["missing"]:
        problems.append(f"source folders missing on {f['host']}: {f['missing']}")
    if f.get("offline") and f.get("uncached"):
        problems.append(f"HF_HUB_OFFLINE is set on {f['host']} but its Hugging Face cache lacks {f['uncached']}: "
                        "download them there first (huggingface-cli download ID)")
    return problems


def node_problems(device: str, models: list[str], address: str, need: int | None = None,
                  worker_gpus: float | None = None) -> list[str]:
    """Every cluster node that cannot run trials of this config (see :func:`machine_problems`)."""
    return [p for f in facts(models, address) for p in machine_problems(device, f, need, worker_gpus)]


def cluster_facts(address: str, paths: list[str], disk_at: str, hub_ids: list[str] = ()) -> list[dict]:
    """:func:`machine_facts` of every alive node of the Ray cluster at ``address`` (a task pinned to each)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from search.driver import init_ray

    init_ray(address)
    remote = ray.remote(num_cpus=0)(machine_facts)
    refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(paths, disk_at, list(hub_ids)) for node in ray.nodes() if node.get("Alive")]
    return ray.get(refs, timeout=120)
