"""``check``: everything that can be verified about a run config before a GPU hour is spent, as a table.

Each :class:`CheckRow` is one thing checked, with a status: ``ok``, ``failed`` (the run would fail: the detail
says why and the fix), ``missing`` (something to provide first) or ``not checked offline`` (a hub id or an
endpoint that cannot be verified without the network, named so that nobody takes it for checked). The rows:

- the run-wide and per-stage checks of :func:`search.pipeline.check_run`, one row each (run folder, Ray address,
  devices, every stage's ``problems``);
- every source model: a local folder, a hub id in the local Hugging Face cache, or not checked offline (with
  whether a Hugging Face token is set, which gated models such as Mistral-7B-v0.1 need);
- the memory plan of a search worker (:mod:`search.merge.memory`);
- every machine that would run trials: this one, or with ``address`` every alive Ray node (a task pinned to each
  node reports its torch build, CUDA visibility, GPUs and their free memory, free disk, and which local sources
  it sees).

Nothing is created: no run folder, study or output. The judge endpoint is not called here (a probe is a paid
request): the MT-Bench stage probes it before answering (``mtbench.judge.probe``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from objectives.errors import UserError
from search.config import RunConfig
from search.merge.memory import available_bytes, plan
from search.merge.sources import is_local
from search.preflight import device_problems, local_models, output_problems, ray_problems
from search.rundir import RunDir

__all__ = ["CheckRow", "check_config", "format_rows", "machine_facts"]

OK, FAILED, MISSING, OFFLINE = "ok", "failed", "missing", "not checked offline"


@dataclass(frozen=True)
class CheckRow:
    what: str
    status: str
    detail: str = ""


def _rows(what: str, problems: list[str], ok: str = "") -> list[CheckRow]:
    return [CheckRow(what, FAILED, p) for p in problems] or [CheckRow(what, OK, ok)]


def check_config(cfg: RunConfig, run: RunDir, *, address: str | None = None) -> list[CheckRow]:
    """Every row of the table (see the module doc); the caller prints them and fails on a non-ok one."""
    from search.pipeline import STAGES, owner_problems

    models = [cfg.space.base_model, *(m.model for m in cfg.space.models)]
    rows = _rows("run folder", owner_problems(cfg, run) + output_problems(
        run.root, what="run folder", inputs=local_models(models)), str(run.root))
    rows += _rows("ray address", ray_problems(address), address or "a private local Ray")
    rows += _rows("devices", device_problems(cfg, address), f"device {cfg.device}")
    for stage in STAGES:
        try:
            problems = stage.problems(cfg, run)
        except UserError as err:
            problems = [str(err)]
        rows += _rows(f"stage {stage.NAME}", problems)
    rows += [_source_row(m) for m in models]
    rows += _memory_rows(cfg, models)
    rows += _machine_rows(cfg, models, address)
    return rows


def _source_row(model: str) -> CheckRow:
    if is_local(model):
        return CheckRow(f"source {model}", OK if Path(model).expanduser().is_dir() else MISSING,
                        "local folder" if Path(model).expanduser().is_dir() else "no such folder")
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(model, local_files_only=True, allow_patterns=["*.json", "*.safetensors"])
        return CheckRow(f"source {model}", OK, f"in the Hugging Face cache ({path})")
    except Exception:  # noqa: BLE001 -- not in the cache
        token = "HF_TOKEN is set" if os.environ.get("HF_TOKEN") else "no HF_TOKEN (gated models need one)"
        return CheckRow(f"source {model}", OFFLINE, f"not in the local cache: downloaded when a worker loads it; "
                                                    f"{token}")


def _memory_rows(cfg: RunConfig, models: list[str]) -> list[CheckRow]:
    device = cfg.device if cfg.device != "auto" else "cpu"
    try:
        p = plan(models, cfg.space.out_dtype or cfg.space.dtype, device=device)
    except UserError as err:
        return [CheckRow("memory plan", OFFLINE, str(err))]
    cuda = device.startswith("cuda")
    sharing = 1.0 if cuda else cfg.search.workers
    try:
        available = available_bytes(device, sharing)
    except Exception:  # noqa: BLE001 -- no CUDA here: the plan is printed without this machine's figure
        available = None
    return [CheckRow("memory plan", OK, f"space.cache_sources: {cfg.space.cache_sources}; "
                     + "; ".join(p.lines(available)))]


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


def _machine_rows(cfg: RunConfig, models: list[str], address: str | None) -> list[CheckRow]:
    local = [m for m in models if is_local(m)]
    if address and not ray_problems(address):
        facts = _cluster_facts(address, local, os.getcwd())
    else:
        facts = [machine_facts(local, os.getcwd())]
    rows = []
    for f in facts:
        gib = 1 << 30
        gpus = ", ".join(f"{g['name']} {g['free'] / gib:.0f}/{g['total'] / gib:.0f} GiB free" for g in f["gpus"])
        detail = (f"torch {f['torch']} ({'CUDA ' + f['cuda_build'] if f['cuda_build'] else 'CPU build'}); "
                  f"GPUs: {gpus or 'none'}; {f['disk_free'] / gib:.0f} GiB free disk")
        problems = []
        if cfg.device == "cuda" and not f["gpus"]:
            problems.append("device is cuda but this machine's torch sees no GPU" + (
                " (a CPU build of torch: make install TORCH_VARIANT=cuda)" if not f["cuda_build"] else ""))
        if f["missing"]:
            problems.append(f"source folders missing here: {f['missing']}")
        status = FAILED if problems else OK
        rows.append(CheckRow(f"machine {f['host']}", status, "; ".join(problems + [detail])))
    return rows


def _cluster_facts(address: str, paths: list[str], disk_at: str) -> list[dict]:
    """:func:`machine_facts` of every alive node of the Ray cluster at ``address`` (a task pinned to each)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from search.driver import init_ray

    init_ray(address)
    remote = ray.remote(num_cpus=0)(machine_facts)
    refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(paths, disk_at) for node in ray.nodes() if node.get("Alive")]
    return ray.get(refs, timeout=120)


def format_rows(rows: list[CheckRow]) -> str:
    """The rows as an aligned text table (status first)."""
    width = max(len(r.what) for r in rows)
    return "\n".join(f"{r.status:<20} {r.what:<{width}}  {r.detail}".rstrip() for r in rows)
