"""Per-candidate merge time: (a) in-memory merge into the resident model vs (b) ``run_merge`` to disk + reload.

Same recipe (DARE-TIES, density 0.6, weights 0.3/0.3/0.4, int8_mask) and seed for both; the two weight hashes
must be identical. Runs on the demo world and on a Mistral-shaped model with random weights generated on the
fly (three "fine-tunes" = base + small noise; ``--size`` in billions of parameters, 0 to skip). Also prints
bytes read+written per second against a measured memcpy bandwidth.

    .venv/bin/python bench/merge_bench.py --world results/demo-world --size 0.3
    .venv/bin/python bench/merge_bench.py --device cuda --size 0.5     # on a GPU host: both paths on the GPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.merge import hash_model_dir, weights_sha256
from search.merge import ResidentMerger

GB = 1e9


def memcpy_gbps(nbytes: int = 256 * 2**20, reps: int = 5) -> float:
    """Measured copy bandwidth, counting bytes read + written."""
    src = torch.empty(nbytes, dtype=torch.uint8).random_(0, 255)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t0 = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    return 2 * nbytes * reps / (time.perf_counter() - t0) / GB


def recipe(base: str, experts: list[str], dtype: str) -> dict:
    ms = [{"model": base}] + [{"model": e, "parameters": {"density": 0.6, "weight": w}}
                              for e, w in zip(experts, (0.3, 0.3, 0.4))]
    return {"models": ms, "merge_method": "dare_ties", "base_model": base, "parameters": {"int8_mask": True},
            "dtype": dtype}


def model_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                   unk_token="<unk>")


def random_world(root: Path, size_b: float, dtype: torch.dtype) -> tuple[str, list[str]]:
    """A Mistral-shaped base with ~``size_b`` billion random parameters and three noisy fine-tunes."""
    from transformers import MistralConfig, MistralForCausalLM

    hidden, inter, vocab = 1024, 2816, 32000
    per_layer = 2 * hidden * hidden + 2 * hidden * (hidden // 2) + 3 * hidden * inter
    layers = max(1, round((size_b * 1e9 - 2 * vocab * hidden) / per_layer))
    cfg = MistralConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                        num_attention_heads=16, num_key_value_heads=8, vocab_size=vocab, dtype=dtype)
    torch.manual_seed(0)
    model = MistralForCausalLM(cfg).to(dtype)
    n = sum(p.numel() for p in model.parameters())
    print(f"random Mistral: {layers} layers, {n / 1e9:.3f}B parameters, {dtype}")
    model.save_pretrained(root / "base")
    _tiny_tokenizer().save_pretrained(root / "base")  # the merger loads the base model's tokenizer
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    experts = []
    for i in range(3):
        with torch.no_grad():
            for k, p in model.state_dict().items():
                p.copy_(base_sd[k] + 0.01 * torch.randn_like(base_sd[k]) * (base_sd[k].float().std() + 1e-3))
        model.save_pretrained(root / f"ft{i}")
        experts.append(str(root / f"ft{i}"))
    return str(root / "base"), experts


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(label: str, base: str, experts: list[str], dtype: str, repeats: int, tmp: Path, bw: float,
          device: str = "cpu") -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import AutoModelForCausalLM

    rec = recipe(base, experts, dtype)
    merger = ResidentMerger(base, experts, dtype=dtype, device=device)
    merger.merge(rec, seed=0, compute_hash=False)  # warm-up (page cache, lazy imports)
    t_mem, t_disk = [], []
    for r in range(repeats):
        res = merger.merge(rec, seed=r, compute_hash=False)
        t_mem.append(res.seconds)
        h_mem = weights_sha256(res.model)
        out = tmp / f"{label}-disk-{r}"
        t0 = time.perf_counter()
        run_merge(MergeConfiguration.model_validate(rec), str(out),
                  MergeOptions(random_seed=r, quiet=True, copy_tokenizer=True, cuda=device.startswith("cuda")))
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto").to(device)
        _sync(device)
        t_disk.append(time.perf_counter() - t0)
        h_disk = weights_sha256(reloaded)
        assert h_disk == h_mem == hash_model_dir(out), f"{label}: hashes differ (seed {r})"
        del reloaded
    a, b = min(t_mem), min(t_disk)
    size = model_bytes(base)
    read = 4 * size
    print(f"[{label}] model {size / 1e6:.1f} MB on {device}, {repeats} candidate(s), identical hashes: yes")
    print(f"  (a) in-memory merge   {a:8.3f} s/candidate   {(read + size) / a / GB:6.2f} GB/s read+written")
    print(f"  (b) run_merge+reload  {b:8.3f} s/candidate   {(read + 2 * size) / b / GB:6.2f} GB/s read+written")
    print(f"  speed-up (b)/(a)      {b / a:8.2f}x          memcpy {bw:.2f} GB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="results/demo-world", help="demo world folder (skipped if absent)")
    ap.add_argument("--size", type=float, default=0.3, help="random model size in billions (0: skip)")
    ap.add_argument("--dtype", default="bfloat16", help="merge dtype for both paths")
    ap.add_argument("--repeats", type=int, default=3, help="candidates per path on the demo world")
    ap.add_argument("--big-repeats", type=int, default=1, help="candidates per path on the random model")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where both paths merge (and reload)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bw = memcpy_gbps()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = Path(args.world)
        if (world / "world.json").is_file():
            from demoworld.build import load_manifest

            w = load_manifest(world)
            bench("demo world", str(w.base), [str(p) for p in w.experts.values()], args.dtype,
                  args.repeats, tmp, bw, args.device)
        if args.size > 0:
            base, experts = random_world(tmp / "random", args.size, getattr(torch, args.dtype))
            bench(f"random {args.size}B", base, experts, args.dtype, args.big_repeats, tmp, bw, args.device)


if __name__ == "__main__":
    main()
