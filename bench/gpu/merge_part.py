"""Part 1 of the GPU check: in-memory merge (``ResidentMerger``) vs mergekit ``run_merge`` to disk + reload.

A random Mistral-7B-shaped base and three "fine-tunes" (base + small noise) are written on the fly as sharded
bf16 safetensors into a temp folder, tensor by tensor on the device (no full model is ever built). Both paths
merge the recipe of ``bench/merge_bench.py`` (DARE-TIES, density 0.6, weights 0.3/0.3/0.4, int8_mask) with the
same seed, and their weight hashes must be equal. Goal: <= 3 s per in-memory merge of the 7B shape on the GPU.

Four 7B models plus the merged one need about 72 GB of disk; when the temp folder has less free space, fewer
layers are written (said in the table, with the time scaled to 32 layers). ``--layers`` shrinks it on purpose.
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from pathlib import Path

from common import Results, say, sync, timed

PART = "merge"
GOAL_S = 3.0
# Mistral-7B-v0.1's shape, and the tiny one of --quick (same proportions of heads)
SHAPES = {
    "7b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 32000},
    "tiny": {"hidden_size": 128, "intermediate_size": 448, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 1, "vocab_size": 1000},
}
SHARD_BYTES = 2 * 2**30
NOISE = 0.002  # fine-tune deltas: base values have std 0.02


def mistral_config(shape: str, layers: int | None):
    from transformers import MistralConfig

    dims = dict(SHAPES[shape])
    dims["num_hidden_layers"] = layers or dims["num_hidden_layers"]
    config = MistralConfig(**dims, tie_word_embeddings=False, max_position_embeddings=4096, dtype="bfloat16")
    config.architectures = ["MistralForCausalLM"]  # mergekit looks the architecture up from config.json
    return config


def tensor_specs(config) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the tensors ``save_pretrained`` would write (from a model on the meta device)."""
    import torch
    from transformers import MistralForCausalLM

    with torch.device("meta"):
        model = MistralForCausalLM(config)
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def model_nbytes(specs) -> int:
    return sum(2 * _numel(shape) for _, shape in specs)  # bf16


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def fit_layers(shape: str, wanted: int, free_bytes: int) -> int:
    """The most layers (<= ``wanted``) for which 5 models (base, 3 sources, the merged one) fit in 90 % of
    ``free_bytes``; 0 when not even one layer fits."""
    per_model = {n: model_nbytes(tensor_specs(mistral_config(shape, n))) for n in (1, 2)}
    per_layer = per_model[2] - per_model[1]
    fixed = per_model[1] - per_layer
    return max(0, min(wanted, int((0.9 * free_bytes / 5 - fixed) // per_layer)))


def make_tensor(name: str, shape, variant: int, device: str):
    """Deterministic bf16 values: norms 1, other weights N(0, 0.02); variant k > 0 adds N(0, NOISE) noise."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(zlib.crc32(name.encode()))
    if name.endswith("norm.weight"):
        t = torch.ones(shape, device=device, dtype=torch.float32)
    else:
        t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).mul_(0.02)
    if variant:
        gen.manual_seed(zlib.crc32(f"{name}:{variant}".encode()))
        t.add_(torch.randn(shape, generator=gen, device=device, dtype=torch.float32), alpha=NOISE)
    return t.to(torch.bfloat16)


def shards(specs) -> list[list[tuple[str, tuple[int, ...]]]]:
    """The tensors grouped into shards of at most ``SHARD_BYTES`` (in order, as ``save_pretrained`` does)."""
    out, cur, size = [], [], 0
    for name, shape in specs:
        n = 2 * _numel(shape)
        if cur and size + n > SHARD_BYTES:
            out.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    return out + ([cur] if cur else [])


def write_model(folder: Path, config, specs, variant: int, device: str, tokenizer) -> None:
    """A Hugging Face model folder: config, tokenizer, sharded safetensors and their index."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # the merger loads the base model's tokenizer
    groups = shards(specs)
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: make_tensor(name, shape, variant, device).cpu() for name, shape in group}
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, fname))
    index = {"metadata": {"total_size": model_nbytes(specs)}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def write_world(root: Path, config, device: str) -> tuple[str, list[str]]:
    """Base (variant 0) and three sources (variants 1-3) under ``root``."""
    from demoworld.tokenizer import build_tokenizer

    specs, tok = tensor_specs(config), build_tokenizer()
    names = ["base", "ft1", "ft2", "ft3"]
    for variant, name in enumerate(names):
        write_model(root / name, config, specs, variant, device, tok)
    return str(root / "base"), [str(root / n) for n in names[1:]]


def disk_merge(rec: dict, out: Path, seed: int, device: str):
    """mergekit's ``run_merge`` to ``out`` (as ``mergekit-yaml --cuda`` does), then a reload onto ``device``."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import AutoModelForCausalLM

    run_merge(MergeConfiguration.model_validate(rec), str(out),
              MergeOptions(random_seed=seed, quiet=True, copy_tokenizer=True, cuda=device.startswith("cuda")))
    return AutoModelForCausalLM.from_pretrained(out, dtype="auto").to(device)


def memory_merges(merger, rec: dict, deadline: float, repeats: int, res: Results) -> list[float]:
    """Timed in-memory merges (seeds 1, 2, ...) while time is left; the first (seed 0) loads the sources."""
    first = merger.merge(rec, seed=0, compute_hash=False)
    res.add("in-memory merge, first (reads the sources)", first.seconds, "s")
    times: list[float] = []
    while len(times) < repeats and (not times or time.monotonic() + 2 * max(times) < deadline):
        times.append(merger.merge(rec, seed=len(times) + 1, compute_hash=False).seconds)
        say(PART, f"in-memory merge seed {len(times)}: {times[-1]:.2f} s")
    return times


def goal_status(seconds: float, scale: float, full_shape: bool) -> tuple[str, str]:
    """``(status, note)`` of the <= 3 s goal: judged on the time scaled to 32 layers when fewer were written."""
    if not full_shape:
        return "", "tiny shape (--quick): the goal is for the 7B shape"
    est = seconds * scale
    status = "met" if est <= GOAL_S else "not met"
    if scale == 1.0:
        return status, ""
    return status + "*", f"* scaled to 32 layers: {est:.2f} s"


def prepare(args, res: Results, tmp: Path):
    """Write the world (as many layers as the disk holds); ``(base, experts, scale to the full shape)``."""
    from merge_bench import model_bytes

    shape = "tiny" if args.quick else "7b"
    full_layers = SHAPES[shape]["num_hidden_layers"]
    wanted = args.layers or full_layers
    layers = fit_layers(shape, wanted, shutil.disk_usage(tmp).free)
    if layers < 1:
        raise RuntimeError(f"too little free disk in {tmp} for one layer of 5 models: set --tmp to a larger folder")
    config = mistral_config(shape, layers)
    (base, experts), t_write = timed(lambda: write_world(tmp / "world", config, args.device), args.device)
    short = f" (disk: {shutil.disk_usage(tmp).free / 1e9:.0f} GB free)" if layers < wanted else ""
    res.add("sources written (base + 3)", t_write, "s",
            note=f"{layers}/{full_layers} layers{short}, 4 x {gigabytes(model_bytes(base))} bf16")
    full = model_nbytes(tensor_specs(mistral_config(shape, full_layers)))
    return base, experts, full / model_nbytes(tensor_specs(config))


def run(args, res: Results, tmp: Path) -> None:
    """Both merge paths on the same recipe and seed; the in-memory time against the goal; hashes compared."""
    from merge_bench import recipe
    from search.merge import ResidentMerger, weights_sha256

    if not args.device.startswith("cuda") and not args.quick:
        res.error("the 7B-shaped merge is not attempted on CPU: use --device cuda, or --quick for tiny shapes")
        return
    deadline = time.monotonic() + 0.85 * args.budget
    base, experts, scale = prepare(args, res, tmp)
    rec = recipe(base, experts, "bfloat16")
    merger, t_init = timed(lambda: ResidentMerger(base, experts, dtype="bfloat16", device=args.device),
                           args.device)
    res.add("ResidentMerger start (loads the base)", t_init, "s")
    times = memory_merges(merger, rec, deadline, args.repeats, res)
    best, seed = min(times), len(times)
    status, note = goal_status(best, scale, not args.quick)
    res.add("in-memory merge (ResidentMerger)", best, "s", f"<= {GOAL_S:g} s", status,
            f"best of {len(times)}" + (f"; {note}" if note else ""))
    h_mem = weights_sha256(merger.model)  # the last merge (seed len(times)) is resident
    del merger
    sync(args.device)
    reloaded, t_disk = timed(lambda: disk_merge(rec, tmp / "merged", seed, args.device), args.device)
    res.add("run_merge to disk + reload", t_disk, "s", note=f"{t_disk / best:.1f}x the best in-memory merge")
    same = weights_sha256(reloaded) == h_mem
    res.add("weights identical (sha256)", "yes" if same else "NO", status="" if same else "error",
            note=f"seed {seed}, both paths on {args.device}")
