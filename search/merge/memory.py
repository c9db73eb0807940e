"""How much memory a search worker needs, from the sources' safetensors headers: ``space.cache_sources: auto``.

A worker holds the candidate (the resident merged model) and, with ``cache_sources``, every source tensor
mergekit loads, all in ``space.dtype`` on the merge device; evaluation adds activations and the device's own
overhead. Sizes come from the safetensors headers alone (8-byte length + JSON: each tensor's dtype and shape),
so a 7B plan is made without reading a weight, and the same arithmetic is checked on header-only fixtures.

:func:`plan` returns a :class:`MemoryPlan`; ``cache_sources: auto`` caches when :attr:`MemoryPlan.cached`
fits the worker's share of the device (``torch.cuda.mem_get_info`` on a GPU, available RAM on the CPU) with
:data:`HEADROOM` to spare, and
re-reads sources otherwise (slower per trial, same weights).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from objectives.errors import UserError

__all__ = ["DTYPE_BYTES", "HEADROOM", "MemoryPlan", "available_bytes", "header_params", "plan", "resolve_cache_sources",
           "space_plan"]

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_TORCH_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
EVAL_SHARE = 0.15  # activations, KV cache and scratch of evaluation, as a share of one model's bytes
DEVICE_OVERHEAD = 1 << 30  # CUDA context and allocator slack (1 GiB)
# ``auto`` caches only when the plan leaves this share of the free memory unused: the allocator's fragmentation
# across many differently sized tensors and mergekit's per-tensor scratch are not in the plan (at 7B x 4 in
# bfloat16 the plan is 70.5 GiB: inside an 80 GB card's ~79 GiB free, but not safely)
HEADROOM = 0.15


def _local(model: str | Path) -> Path:
    """A model's local folder: the path itself, or a hub id's snapshot in the Hugging Face cache (never
    downloaded)."""
    path = Path(model).expanduser()
    if path.is_dir() or str(model).count("/") != 1:
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), local_files_only=True, allow_patterns=["*.safetensors", "*.json"]))
    except Exception:  # noqa: BLE001 -- not cached (or not a repo id): no headers to read
        return path


def header_params(folder: str | Path) -> int:
    """Number of parameters in a model folder's ``*.safetensors`` files (or a cached hub id's), from their
    headers only."""
    local = _local(folder)
    if not local.is_dir():
        raise UserError(f"{str(folder)!r} is neither a local folder nor in the Hugging Face cache: no headers to "
                        "plan from (download it first)")
    files = sorted(local.glob("*.safetensors"))
    if not files:
        raise UserError(f"{str(folder)!r} holds no *.safetensors files: a memory plan needs the sources' headers")
    total = 0
    for f in files:
        with open(f, "rb") as handle:
            head = handle.read(8)
            if len(head) != 8:
                raise UserError(f"{f}: not a safetensors file (no header): download or save it again")
            (n,) = struct.unpack("<Q", head)
            try:
                header = json.loads(handle.read(n))
            except ValueError:
                raise UserError(f"{f}: unreadable safetensors header: download or save it again") from None
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one search worker needs on its merge device, with and without cached sources."""

    sources: int  # every source in the merge dtype
    candidate: int  # the resident merged model
    evaluation: int  # activations and scratch while scoring
    overhead: int  # device context and allocator slack

    @property
    def cached(self) -> int:
        return self.sources + self.candidate + self.evaluation + self.overhead

    def fits(self, available: int) -> bool:
        """Whether the cached plan fits ``available`` bytes with :data:`HEADROOM` to spare."""
        return self.cached <= available * (1 - HEADROOM)

    @property
    def streamed(self) -> int:
        """Without cached sources: the candidate, one tensor at a time of the sources (taken as 10% of one), eval."""
        return self.candidate + self.candidate // 10 + self.evaluation + self.overhead

    def lines(self, available: int | None = None) -> list[str]:
        out = [f"cache_sources: true needs {_size(self.cached)} per worker (sources {_size(self.sources)}, "
               f"candidate {_size(self.candidate)}, evaluation {_size(self.evaluation)}, overhead "
               f"{_size(self.overhead)})",
               f"cache_sources: false needs {_size(self.streamed)} per worker (sources re-read every trial)"]
        if available is not None:
            out.append(f"available per worker: {_size(available)} -> auto picks "
                       f"{'true' if self.fits(available) else 'false'} (caching needs {HEADROOM:.0%} of it to spare)")
        return out


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def plan(models: list[str | Path], dtype: str | None, *, device: str = "cpu") -> MemoryPlan:
    """The :class:`MemoryPlan` of merging ``models`` (base first, local folders) in ``dtype`` (default bfloat16)."""
    per_param = _TORCH_BYTES.get(dtype or "bfloat16", 2)
    sizes = [header_params(m) * per_param for m in models]
    candidate = max(sizes)
    return MemoryPlan(sources=sum(sizes), candidate=candidate, evaluation=int(candidate * EVAL_SHARE),
                      overhead=DEVICE_OVERHEAD if device.startswith("cuda") else 0)


def space_plan(space, device: str) -> MemoryPlan:
    """The :class:`MemoryPlan` of a run's ``space:`` section (its models, in the merge's dtype) on ``device``;
    raises :class:`UserError` when a source's headers are not here to plan from."""
    return plan(space.model_paths(), space.out_dtype or space.dtype, device=device)


def available_bytes(device: str, workers_per_device: float = 1.0) -> int:
    """What one worker may use on ``device``: free GPU memory, or available RAM, divided among the workers that
    share it."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
    else:
        import psutil

        free = psutil.virtual_memory().available
    return int(free / max(workers_per_device, 1.0))


def resolve_cache_sources(setting: bool | str, models: list[str | Path], dtype: str | None, device: str,
                          workers_per_device: float = 1.0) -> bool:
    """``space.cache_sources`` for this worker: ``true``/``false`` as given; ``auto`` caches when the plan fits
    (hub ids without local headers: cache, as before)."""
    if setting != "auto":
        return bool(setting)
    try:
        p = plan(models, dtype, device=device)
    except UserError:
        return True
    return p.fits(available_bytes(device, workers_per_device))
