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

Nothing is created: no run folder, study or output. An OpenAI-compatible judge is asked only for its model list
(``GET /models``, free) and its key variable is checked; no paid request is made (the MT-Bench stage sends its
probe before answering, ``mtbench.judge.probe``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from objectives.errors import UserError
from search.config import RunConfig
from search.merge.memory import MemoryPlan, available_bytes, space_plan
from search.merge.sources import is_local
from search.nodes import describe, facts, gpu_share, machine_problems
from search.preflight import device_problems, local_models, output_problems, ray_problems
from search.rundir import RunDir

__all__ = ["CheckRow", "check_config", "format_rows"]

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

    models = cfg.space.model_paths()
    rows = _rows("run folder", owner_problems(cfg, run) + output_problems(
        run.root, what="run folder", inputs=local_models(models)), str(run.root))
    rows += _rows("ray address", ray_problems(address), address or "a private local Ray")
    rows += _rows("devices", device_problems(cfg, address), f"device {cfg.device}")
    about: dict[str, list[str]] = {m: [] for m in models}  # a stage's problem naming a source: that source's row
    for stage in STAGES:
        try:
            problems = stage.problems(cfg, run)
        except UserError as err:
            problems = [str(err)]
        own = []
        for problem in problems:
            at = {m: problem.find(repr(m)) for m in models if repr(m) in problem}
            if at:  # about the source it names first (a mismatch also names the base model)
                about[min(at, key=at.get)].append(problem)
            else:
                own.append(problem)
        if own or not problems:  # a stage whose every problem is about a source: those rows say it
            rows += _rows(f"stage {stage.NAME}", own)
    rows += [_source_row(m, about[m]) for m in models]
    try:  # one plan for the memory row and every machine's row ("auto" plans as the CPU)
        p, unplanned = space_plan(cfg.space, cfg.device if cfg.device != "auto" else "cpu"), None
    except UserError as err:
        p, unplanned = None, str(err)
    rows += _memory_rows(cfg, p, unplanned)
    rows += _judge_rows(cfg)
    rows += _machine_rows(cfg, models, address, p)
    return rows


def _token() -> bool:
    """Whether a Hugging Face token is set (HF_TOKEN or a ``huggingface-cli login``)."""
    from huggingface_hub import get_token

    return bool(get_token())


def _source_row(model: str, problems: list[str]) -> CheckRow:
    """One row per source: failed with the stages' problems about it (the run would refuse), else where it is."""
    if problems:
        token = "" if is_local(model) or _token() else "; no Hugging Face token (gated models need one)"
        return CheckRow(f"source {model}", FAILED, "; ".join(problems) + token)
    if is_local(model):
        return CheckRow(f"source {model}", OK if Path(model).expanduser().is_dir() else MISSING,
                        "local folder" if Path(model).expanduser().is_dir() else "no such folder")
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(model, local_files_only=True, allow_patterns=["*.json", "*.safetensors"])
        return CheckRow(f"source {model}", OK, f"in the Hugging Face cache ({path})")
    except Exception:  # noqa: BLE001 -- not in the cache
        token = "a Hugging Face token is set" if _token() else ("no Hugging Face token (gated models need one: "
                                                                 "HF_TOKEN or huggingface-cli login)")
        return CheckRow(f"source {model}", OFFLINE, f"not in the local cache: downloaded when a worker loads it; "
                                                    f"{token}")


def _memory_rows(cfg: RunConfig, p: MemoryPlan | None, unplanned: str | None) -> list[CheckRow]:
    if p is None:
        return [CheckRow("memory plan", OFFLINE, unplanned)]
    device = cfg.device if cfg.device != "auto" else "cpu"
    cuda = device.startswith("cuda")
    sharing = 1.0 if cuda else cfg.search.workers
    try:
        available = available_bytes(device, sharing)
    except Exception:  # noqa: BLE001 -- no CUDA here: the plan is printed without this machine's figure
        available = None
    return [CheckRow("memory plan", OK, f"space.cache_sources: {cfg.space.cache_sources}; "
                     + "; ".join(p.lines(available)))]


def _judge_rows(cfg: RunConfig) -> list[CheckRow]:
    """An OpenAI-compatible judge: its endpoint's model list (``GET /models``, free) answers with the key."""
    judges = [("mtbench judge", cfg.mtbench.judge)]
    if cfg.objective.chat:
        judges.append(("chat objective judge", cfg.objective.chat.judge))
    rows = []
    for what, judge in judges:
        if judge.backend != "openai":
            rows.append(CheckRow(what, OK, f"{judge.backend} (local)"))
            continue
        import urllib.error
        import urllib.request

        key = os.environ.get(judge.api_key_env or "", "")
        if judge.api_key_env and not key:
            rows.append(CheckRow(f"{what} key", FAILED, f"{judge.api_key_env} is not set: export the judge's API key "
                                                        f"as {judge.api_key_env} before the run"))
        request = urllib.request.Request(judge.base_url.rstrip("/") + "/models",
                                         headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with urllib.request.urlopen(request, timeout=10):
                rows.append(CheckRow(what, OK, f"{judge.base_url} answers ({judge.model})"))
        except urllib.error.HTTPError as err:
            rows.append(CheckRow(what, FAILED, f"{judge.base_url} answered HTTP {err.code}: check "
                                               f"{judge.api_key_env} and the base_url"))
        except (urllib.error.URLError, OSError) as err:
            rows.append(CheckRow(what, OFFLINE, f"{judge.base_url} cannot be reached from here "
                                                f"({getattr(err, 'reason', err)})"))
    return rows


def _machine_rows(cfg: RunConfig, models: list[str], address: str | None,
                  p: MemoryPlan | None) -> list[CheckRow]:
    if address and ray_problems(address):
        return [CheckRow("machines", MISSING, "the Ray address does not answer: its nodes were not checked")]
    rows = []
    for f in facts(models, address):
        problems = machine_problems(cfg.device, f, p.streamed if p else None, cfg.search.worker_gpus)
        notes = [describe(f)]
        if p and f["gpus"] and cfg.device.startswith("cuda"):
            notes.append(f"cache_sources auto picks {str(p.fits(gpu_share(f, cfg.search.worker_gpus))).lower()} here")
        rows.append(CheckRow(f"machine {f['host']}", FAILED if problems else OK, "; ".join(problems + notes)))
    return rows


def format_rows(rows: list[CheckRow]) -> str:
    """The rows as an aligned text table (status first)."""
    width = max(len(r.what) for r in rows)
    return "\n".join(f"{r.status:<20} {r.what:<{width}}  {r.detail}".rstrip() for r in rows)
