"""The GPU check of issue #16 in one run: four measurements, one table (also JSON + markdown).

1. ``merge``: in-memory merge (``ResidentMerger``) vs mergekit ``run_merge`` to disk + reload, random
   Mistral-7B shape, base + 3 sources, bf16, DARE-TIES 0.6 / 0.3-0.3-0.4 / int8_mask; goal <= 3 s per merge.
2. ``eval``: lm-eval items/s at batch 32 vs batch 1 through the project's ``Objective``; goal >= 4x.
3. ``dpo``: QLoRA DPO steps/s (bitsandbytes 4-bit NF4, bf16 compute, peft LoRA, trl ``DPOTrainer``) through
   the project's DPO stage functions.
4. ``gen``: MT-Bench-style generation tokens/s with ``LocalChatModel`` (batch of prompts, greedy, bf16).

Every model is random and every document generated on the fly: nothing is downloaded or installed. Each part
runs in a process of its own with a time budget (killed when over it, keeping what it measured) and its own
error row, so a failing part does not stop the others. The budgets add up to about 9 minutes on the GPU.

    bash bench/gpu/run.sh                                   # on the CUDA machine (OUT=... for the files)
    nice -n 10 bash bench/gpu/run.sh --device cpu --quick   # smoke test on CPU with tiny shapes, ~1-2 min
    .venv/bin/python bench/gpu/gpu_bench.py --parts merge --layers 8 --out results/gpu-check

The table goes to stdout; ``gpu-check.json`` and ``gpu-check.md`` to ``$OUT`` when set, else ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from common import Results, Row, first_line, fmt, load_rows, offline_env, setup_paths

PARTS = ("merge", "eval", "dpo", "gen")
BUDGETS = {"merge": 300, "eval": 90, "dpo": 90, "gen": 60}  # seconds on the GPU: 540 s + start-up
QUICK_BUDGETS = {"merge": 120, "eval": 90, "dpo": 150, "gen": 60}  # caps on a busy 2-core CPU
NEEDED = ("torch", "transformers", "safetensors", "tokenizers", "mergekit", "lm_eval", "trl", "peft",
          "bitsandbytes", "datasets", "accelerate", "yaml", "pydantic", "optuna", "ray")
PROJECT = ("search.merge", "search.stages.dpo", "objectives.objective", "objectives.mtbench.generate",
           "demoworld.text")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda[:N] (default) or cpu (only with --quick)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and few items/steps (a CPU smoke test)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--out", default="results/gpu-check", help="folder for the JSON/markdown when $OUT is unset")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where models are written (merge: ~72 GB)")
    ap.add_argument("--layers", type=int, default=0, help="layers of the 7B-shaped merge model (default 32)")
    ap.add_argument("--repeats", type=int, default=0, help="timed repeats per figure (default 3, quick 1)")
    ap.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                    help="override a part's time budget (repeatable)")
    ap.add_argument("--items", type=int, default=0, help="eval: documents per task (default 100, quick 10)")
    ap.add_argument("--batch", type=int, default=32, help="eval: the batched size compared with batch 1")
    ap.add_argument("--dpo-steps", type=int, default=0, help="DPO: timed optimizer steps (default 8, quick 2)")
    ap.add_argument("--prompts", type=int, default=0, help="gen: prompts (default 32, quick 8)")
    ap.add_argument("--gen-batch", type=int, default=16, help="gen: prompts per batch (mtbench.batch_size)")
    ap.add_argument("--new-tokens", type=int, default=0, help="gen: max new tokens (default 256, quick 16)")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--part-tmp", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    quick = args.quick
    args.shape = "tiny" if quick else "1b"
    args.repeats = args.repeats or (1 if quick else 3)
    args.items = args.items or (10 if quick else 100)
    args.dpo_steps = args.dpo_steps or (2 if quick else 8)
    args.prompts = args.prompts or (8 if quick else 32)
    args.new_tokens = args.new_tokens or (16 if quick else 256)
    args.gen_batch = min(args.gen_batch, args.prompts)
    return args


def budgets(args) -> dict[str, int]:
    out = dict(QUICK_BUDGETS if args.quick else BUDGETS)
    for item in args.budget:
        part, _, secs = item.partition("=")
        if part not in out or not secs.isdigit():
            raise SystemExit(f"gpu check: --budget {item!r}: give PART=SECONDS with PART one of {', '.join(PARTS)}")
        out[part] = int(secs)
    return out


def environment_problem(args, parts: list[str]) -> str | None:
    """One line saying why the check cannot run here (bad parts, missing packages, no CUDA), or None."""
    bad = [p for p in parts if p not in PARTS]
    if bad:
        return f"unknown part(s) {', '.join(bad)}: choose from {', '.join(PARTS)}"
    if not args.device.startswith("cuda") and not args.quick:
        return "--device cpu needs --quick: the 7B merge and the ~1B models are meant for the GPU"
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        return missing_line(missing)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return (f"no CUDA device visible to torch {torch.__version__} (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): run on the GPU machine, or use "
                "--device cpu --quick for a smoke test")
    setup_paths()
    for mod in PROJECT:  # the project's own imports name anything else that is missing
        try:
            importlib.import_module(mod)
        except ImportError as err:
            return missing_line([f"{getattr(err, 'name', None) or mod} (needed by {mod})"])
    return None


def missing_line(missing: list[str]) -> str:
    return (f"missing Python package(s) for {sys.executable}: {', '.join(missing)}; carry the project's "
            f"environment (make install) or point PYTHON at one that has them")


def run_part(part: str, args, budget: int, workdir: Path) -> list[Row]:
    """``part`` in a child process (own session, killed after ``budget`` s); its rows, plus an error row when
    it failed without recording one."""
    result, tmp = workdir / f"{part}.json", workdir / part
    tmp.mkdir()
    cmd = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--part", part,
           "--result", str(result), "--part-tmp", str(tmp), "--budget", f"{part}={budget}"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        code = proc.wait(timeout=budget)
        problem = None if code == 0 else f"exited with code {code}" + (" (killed: out of memory?)" if code < 0 else "")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        problem = f"stopped at its time budget of {budget} s (--budget {part}=SECONDS)"
    shutil.rmtree(tmp, ignore_errors=True)
    rows = load_rows(result)
    if problem and not any(r.status == "error" for r in rows):
        rows.append(Row(part, "error", None, status="error", note=problem))
    rows.append(Row(part, "part wall time", time.monotonic() - t0, "s", f"<= {budget} s budget"))
    return rows


def child(args) -> int:
    """Run the one part ``args.part`` in this process, recording into ``args.result``."""
    setup_paths()
    import warnings

    from common import say

    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices
    res = Results(args.part, args.result)
    args.budget = budgets(args)[args.part]
    try:
        if args.part == "merge":
            import merge_part

            merge_part.run(args, res, Path(args.part_tmp))
        else:
            import model_parts

            model_parts.PARTS[args.part](args, res, Path(args.part_tmp))
    except Exception as err:  # noqa: BLE001 - any failure becomes this part's error row
        import traceback

        traceback.print_exc()
        say(args.part, "failed")
        res.error(err)
    return 0


def table(rows: list[Row]) -> str:
    """The fixed-width table printed at the end."""
    head = ("part", "figure", "value", "unit", "goal", "status", "note")
    body = [(r.part, r.figure, fmt(r.value), r.unit, r.goal, r.status, r.note) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for cells in [head, *body]:
        lines.append("  ".join(str(c).ljust(w) if i != 2 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths))) + "  " + cells[-1])
    lines.insert(1, "-" * (len(lines[0]) + 20))
    return "\n".join(ln.rstrip() for ln in lines)


def markdown(rows: list[Row], meta: dict) -> str:
    cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    out = [f"# GPU check ({meta['date']})", "", f"{meta['device_name']}; {meta['versions']}; "
           f"arguments: `{' '.join(meta['argv']) or '(none)'}`", "",
           "| part | figure | value | unit | goal | status | note |", "|---|---|---:|---|---|---|---|"]
    out += [f"| {r.part} | {cell(r.figure)} | {fmt(r.value)} | {r.unit} | {cell(r.goal)} | {r.status} | "
            f"{cell(r.note)} |" for r in rows]
    return "\n".join(out) + "\n"


def metadata(args) -> dict:
    import importlib.metadata as md

    import torch

    cuda = args.device.startswith("cuda")
    versions = []
    for dist in ("torch", "transformers", "mergekit", "lm_eval", "trl", "peft", "bitsandbytes"):
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            versions.append(f"{dist} ?")
    name = torch.cuda.get_device_name(args.device) if cuda else f"CPU {platform.machine()}"
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": args.device,
            "device_name": f"{name}, {os.cpu_count()} CPU cores", "versions": ", ".join(versions),
            "argv": args.argv, "quick": args.quick}


def write_outputs(rows: list[Row], meta: dict, args) -> Path:
    folder = Path(os.environ.get("OUT") or args.out)
    folder.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "rows": [asdict(r) for r in rows]}
    (folder / "gpu-check.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (folder / "gpu-check.md").write_text(markdown(rows, meta), encoding="utf-8")
    return folder


def main(argv=None) -> int:
    offline_env()
    args = parse_args(argv)
    if args.part:
        return child(args)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    problem = environment_problem(args, parts)
    if problem:
        print(f"gpu check: {problem}", file=sys.stderr, flush=True)
        return 2
    limits, t0 = budgets(args), time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.tmp) as work:
        for part in parts:
            print(f"=== {part} (budget {limits[part]} s) ===", flush=True)
            try:
                rows += run_part(part, args, limits[part], Path(work))
            except Exception as err:  # noqa: BLE001 - the part could not even be started
                rows.append(Row(part, "error", None, status="error", note=first_line(err)))
    total = time.monotonic() - t0
    rows.append(Row("all", "total wall time", total, "s", "< 600 s", "met" if total < 600 else "not met"))
    meta = metadata(args)
    folder = write_outputs(rows, meta, args)
    print(f"\nGPU check on {meta['device_name']} ({meta['versions']})\n")
    print(table(rows))
    print(f"\nwritten: {folder / 'gpu-check.json'}, {folder / 'gpu-check.md'}")
    return 1 if any(r.status == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
