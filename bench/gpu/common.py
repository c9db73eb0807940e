"""Shared pieces of the GPU check (``bench/gpu/run.sh``): result rows, timing, small random Mistral models.

Every part of the check runs in a process of its own and records its figures through :class:`Results`, which
rewrites the part's JSON file after each figure, so a part stopped at its time budget keeps what it measured.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The ~1B model of the eval, DPO and generation parts, and the tiny one of --quick (demo tokenizer's vocabulary).
SMALL_SHAPES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8},
    "tiny": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def setup_paths() -> None:
    """The repository root (project packages) and ``bench/`` (the other benchmarks) on ``sys.path``."""
    for p in (REPO, REPO / "bench"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def offline_env() -> None:
    """Nothing is fetched from the network (the GPU machine reaches none); libraries log errors only."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def say(part: str, msg: str) -> None:
    print(f"[{part}] {msg}", flush=True)


@dataclass
class Row:
    """One line of the table: a figure of a part, with its goal and whether it is met."""

    part: str
    figure: str
    value: float | str | None
    unit: str = ""
    goal: str = ""
    status: str = ""  # met | not met | error | "" (no goal)
    note: str = ""


class Results:
    """The rows of one part, written to ``path`` (JSON list) after every :meth:`add`."""

    def __init__(self, part: str, path: str | Path):
        self.part, self.path, self.rows = part, Path(path), []

    def add(self, figure: str, value, unit: str = "", goal: str = "", status: str = "", note: str = "") -> Row:
        row = Row(self.part, figure, value, unit, goal, status, note)
        self.rows.append(row)
        say(self.part, f"{figure}: {fmt(value)} {unit}  {note}".rstrip())
        self.save()
        return row

    def error(self, err: BaseException | str) -> None:
        text = err if isinstance(err, str) else f"{type(err).__name__}: {one_line(err)}"
        self.add("error", None, status="error", note=text)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(r) for r in self.rows], indent=1), encoding="utf-8")
        tmp.replace(self.path)


def load_rows(path: str | Path) -> list[Row]:
    p = Path(path)
    return [Row(**r) for r in json.loads(p.read_text(encoding="utf-8"))] if p.is_file() else []


def first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[0] if lines else repr(err))[:300]


def one_line(err: BaseException, limit: int = 300) -> str:
    """The whole message on one line (a validation error names its field on the second), cut at ``limit``."""
    text = " ".join(ln.strip() for ln in str(err).splitlines() if ln.strip()) or repr(err)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def fmt(value) -> str:
    """A figure for the table: 3 significant digits (more before the point), strings as they are."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    """``(fn(), seconds)``, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def dtype_for(device: str):
    """bfloat16 on CUDA (as the real search runs), float32 on CPU."""
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def small_config(tokenizer, shape: str, max_positions: int = 2048):
    """A Mistral config of ``SMALL_SHAPES[shape]`` over ``tokenizer``'s vocabulary (no tied embeddings)."""
    from transformers import MistralConfig

    dims = SMALL_SHAPES[shape]
    return MistralConfig(vocab_size=len(tokenizer), max_position_embeddings=max_positions, sliding_window=None,
                         head_dim=dims["hidden_size"] // dims["num_attention_heads"], tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **dims)


def random_model(config, device: str, seed: int = 0):
    """A randomly initialised ``MistralForCausalLM`` of ``config``, built on ``device`` in its dtype."""
    import torch
    from transformers import MistralForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = MistralForCausalLM(config)
    return model.to(dtype_for(device)).eval()


def describe(model) -> str:
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    size = f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
    return (f"random Mistral {size} (hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
            f"vocab {c.vocab_size}), {str(model.dtype).removeprefix('torch.')}")
