"""One candidate through merge-search vs the stock toolchain a user scripts by hand, on the demo world.

    .venv/bin/python bench/toolchain_bench.py --world results/demo-world [--repeats 2]

Three paths score the same candidate (the demo seed recipe that ``configs/demo.yaml`` resolves to: DARE-TIES,
density 0.6, weights 0.3/0.3/0.4, int8_mask, float32, seed 0) on the same documents (every document of the
three demo search tasks), all at one torch thread, interleaved A B C A B C ... for ``--repeats`` rounds:

  A  merge-search, as a trial worker does it (``search.stages.trial_worker.MergeEvalWorker``): the recipe merged in
     memory into the resident model, then scored by the objective's resident lm-eval tasks, rung by rung;
  B  the stock toolchain: ``mergekit-yaml RECIPE OUT`` to disk, then the ``lm_eval`` CLI on OUT (``--model hf``,
     ``--include_path`` the world's tasks) at ``--batch_size 32``;
  C  the same with lm_eval's default batch size (1).

A is pinned with ``torch.set_num_threads(1)``, B and C run with ``OMP_NUM_THREADS=MKL_NUM_THREADS=1``. The
accuracies must agree across the paths within 1e-9 and the merged weights must be identical (exit 1
otherwise). Where the stock time goes is timed inside the stock processes: a ``sitecustomize.py`` on their
``PYTHONPATH`` (``HOOK``) imports each tool's modules first (python start + imports), times lm-eval's task
indexing (``TaskManager``: its ~14,683 built-in tasks, which the CLI always indexes, plus the world's) and
model load (``HFLM``); "evaluation" is the rest of the CLI's wall time. The world's tasks alone are indexed
in this process for comparison, and merge-search's own start-up (imports in a fresh process, worker setup) is
reported as what a worker pays once. The table shows the fastest round of each path; the world is built into
``--world`` when it is missing (about 3-4 minutes, longer under load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.merge import hash_model_dir, params_from_recipe
from search.rundir import TrialAttr

BIN = Path(sys.executable).parent
SEED = 0
TOL = 1e-9
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# What each tool imports during its run (lm_eval's CLI imports most of it lazily); the hook below imports it
# first, so that "python start + imports" is one phase.
IMPORTS = {
    "mergekit": "mergekit.scripts.run_yaml",
    "lm_eval": "lm_eval.__main__,lm_eval.config.evaluate_config,lm_eval.evaluator,lm_eval.loggers,lm_eval.tasks,"
               "lm_eval.models.huggingface",
    "merge-search": "search.driver.workers,lm_eval.evaluator,lm_eval.models.huggingface,mergekit.merge",
}
# sitecustomize.py for the stock processes: the unchanged console scripts run, and this hook (run by Python's
# start-up) imports their modules, wraps lm-eval's task indexing and model load with timers and writes the
# marks (wall-clock seconds) when the process exits.
HOOK = r"""
import atexit, json, os, sys, time
_marks = {"start": time.time()}
_out = os.environ.pop("BENCH_MARKS", None)  # popped: the tool's own child processes skip the hook
for _name in os.environ.pop("BENCH_IMPORTS", "").split(",") if _out else []:
    __import__(_name)
_marks["imported"] = time.time()


def _timed(cls, key):
    init = cls.__init__

    def wrapped(self, *args, **kwargs):
        t = time.time()
        init(self, *args, **kwargs)
        _marks[key] = _marks.get(key, 0.0) + time.time() - t
    cls.__init__ = wrapped


if _out and "lm_eval.tasks" in sys.modules:
    _timed(sys.modules["lm_eval.tasks"].TaskManager, "index")
    _timed(sys.modules["lm_eval.models.huggingface"].HFLM, "model_load")
if _out:
    atexit.register(lambda: open(_out, "w").write(json.dumps(_marks)))
"""


def run(cmd: list[str], tmp: Path, tool: str) -> dict:
    """Run ``cmd`` (repository root, 1 thread, offline, with the hook importing ``tool``'s modules first):
    its wall seconds and phases; its output goes to ``tmp/<tool>.log``."""
    log, marks = tmp / f"{tool}.log", tmp / "marks.json"
    marks.unlink(missing_ok=True)
    path = os.pathsep.join(filter(None, [str(tmp / "hook"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **ENV, "PYTHONPATH": path, "BENCH_IMPORTS": IMPORTS[tool], "BENCH_MARKS": str(marks)}
    t0 = time.time()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    wall = time.time() - t0
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{log.read_text(errors='replace')[-3000:]}")
    m = json.loads(marks.read_text())
    return {"wall": wall, "imports": m["imported"] - t0, "index": m.get("index", 0.0),
            "model_load": m.get("model_load", 0.0)}


def load_config(config: Path, world: Path, tmp: Path):
    """``config`` with its demo-world paths pointed at ``world`` (the demo world of seed 0, built when missing)."""
    from demoworld.build import build_world
    from search.config import load_run_config

    build_world(world, seed=0, quiet=False)  # a quick no-op when complete
    path = tmp / "config.yaml"
    path.write_text(config.read_text(encoding="utf-8").replace("results/demo-world", str(world)), encoding="utf-8")
    return load_run_config(path)


def merge_search(worker, cfg, params: dict, trial: int) -> dict:
    """Path A: one trial on the resident worker (a new trial number, so it merges again)."""
    t0 = time.perf_counter()
    reports = [worker.run_rung(trial, params, SEED, r) for r in range(len(cfg.objective.rungs))]
    total = time.perf_counter() - t0
    merged, last = reports[0].attrs, reports[-1].attrs
    merge = merged[TrialAttr.MERGE_SECONDS]
    return {"total": total, "merge": merge, "eval": total - merge, "acc": last[TrialAttr.SCORES],
            "sha": merged[TrialAttr.WEIGHTS_SHA256], "items": reports[-1].items}


def lm_eval_cmd(out: Path, cfg, batch: int, results: Path) -> list[str]:
    tasks = ",".join(t.name for t in cfg.objective.tasks)
    cmd = [str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={out},dtype=float32",
           "--tasks", tasks, "--include_path", str(cfg.objective.include_paths[0]), "--device", "cpu",
           "--output_path", str(results)]
    return cmd + (["--batch_size", str(batch)] if batch != 1 else [])  # 1 is the CLI's default


def stock(recipe: Path, cfg, batch: int, tmp: Path) -> dict:
    """Paths B/C: ``mergekit-yaml`` to disk, then the ``lm_eval`` CLI on the saved folder; seconds per phase."""
    out, results = tmp / f"merged-b{batch}", tmp / f"lm-eval-b{batch}"
    mk = run([str(BIN / "mergekit-yaml"), str(recipe), str(out), "--random-seed", str(SEED)], tmp, "mergekit")
    le = run(lm_eval_cmd(out, cfg, batch, results), tmp, "lm_eval")
    data = json.loads(next(results.rglob("results_*.json")).read_text(encoding="utf-8"))
    acc = {t.name: float(data["results"][t.name][t.metric]) for t in cfg.objective.tasks}
    sha = hash_model_dir(out)
    shutil.rmtree(out), shutil.rmtree(results)
    phases = {"mk_imports": mk["imports"], "merge": mk["wall"] - mk["imports"], "le_imports": le["imports"],
              "index": le["index"], "model_load": le["model_load"],
              "eval": le["wall"] - le["imports"] - le["index"] - le["model_load"]}
    return {"total": mk["wall"] + le["wall"], "acc": acc, "sha": sha, **phases}


def fastest(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["total"])


PHASES = [("mk_imports", "python start + mergekit imports"),
          ("merge", "merge: mergekit-yaml to disk | in memory + hash"),
          ("le_imports", "python start + lm_eval/transformers imports"),
          ("index", "task indexing: lm-eval built-ins + world tasks"),
          ("model_load", "model load from disk"),
          ("eval", "evaluation (rest of the CLI) | resident tasks"),
          ("total", "total per candidate")]


def print_table(a, b, c, setup: float, imports: float, index_world: float, n_tasks: tuple[int, int]) -> None:
    fa, fb, fc = fastest(a), fastest(b), fastest(c)
    print(f"\n{'phase (s; fastest of ' + str(len(a)) + ' rounds)':<50} {'stock b32':>10} {'stock b1':>10} "
          f"{'merge-search':>13}")
    for key, name in PHASES:
        ms = fa.get(key)
        print(f"{name:<50} {fb[key]:>10.2f} {fc[key]:>10.2f} {'-' if ms is None else f'{ms:.2f}':>13}")
    ta = fa["total"]
    print(f"{'ratio stock / merge-search':<50} {fb['total'] / ta:>9.1f}x {fc['total'] / ta:>9.1f}x {1:>12.1f}x")
    per_round = ", ".join(f"{y['total'] / x['total']:.1f}x / {z['total'] / x['total']:.1f}x" for x, y, z in zip(a, b, c))
    print(f"ratio per round (b32 / b1): {per_round}")
    print(f"task indexing: lm_eval's CLI always indexes its {n_tasks[0]:,} built-in tasks + the {n_tasks[1]} world "
          f"tasks ({fb['index']:.2f} s); the world's tasks alone (merge-search, include_defaults: false): "
          f"{index_world:.3f} s")
    once = imports + setup
    print(f"merge-search once per worker, not per candidate: python start + imports {imports:.2f} s, load sources "
          f"+ index and load tasks {setup:.2f} s; a first candidate incl. that: {once + ta:.2f} s "
          f"({fb['total'] / (once + ta):.1f}x / {fc['total'] / (once + ta):.1f}x)")


def check(a: list[dict], b: list[dict], c: list[dict]) -> list[str]:
    """Accuracies and weight hashes that differ between the paths (empty: all equal)."""
    ref = a[0]
    problems = []
    for label, runs in (("merge-search", a), ("stock b32", b), ("stock b1", c)):
        for i, r in enumerate(runs):
            problems += [f"{label} round {i + 1}: {t} {v!r} vs merge-search {ref['acc'][t]!r}"
                         for t, v in r["acc"].items() if abs(v - ref["acc"][t]) > TOL]
            if r["sha"] != ref["sha"]:
                problems.append(f"{label} round {i + 1}: weights_sha256 {r['sha'][:12]} vs {ref['sha'][:12]}")
    return problems


def print_accuracies(a, b, c) -> None:
    print(f"\n{'accuracy (round 1)':<28} {'merge-search':>13} {'stock b32':>10} {'stock b1':>10}")
    for t, v in a[0]["acc"].items():
        print(f"{t:<28} {v:>13.6f} {b[0]['acc'][t]:>10.6f} {c[0]['acc'][t]:>10.6f}")


def index_counts(cfg) -> tuple[float, tuple[int, int]]:
    """Seconds to index the world's tasks alone (as merge-search does), and the task counts."""
    from objectives.lmeval import task_manager

    t0 = time.perf_counter()
    world = task_manager(cfg.objective.include_paths, include_defaults=False)
    seconds = time.perf_counter() - t0
    builtin = task_manager(None)
    return seconds, (len(builtin.all_tasks), len(world.all_tasks))


def rounds(worker, cfg, params: dict, recipe: Path, tmp: Path, repeats: int) -> tuple[list, list, list, float]:
    """A B C interleaved ``repeats`` times, each round also timing merge-search's imports in a fresh process."""
    a, b, c, imports = [], [], [], []
    for r in range(repeats):
        a.append(merge_search(worker, cfg, params, trial=r))
        b.append(stock(recipe, cfg, 32, tmp))
        c.append(stock(recipe, cfg, 1, tmp))
        imports.append(run([str(BIN / "python"), "-c", "pass"], tmp, "merge-search")["imports"])
        print(f"round {r + 1}: merge-search {a[-1]['total']:.2f} s ({a[-1]['items']} items), stock b32 "
              f"{b[-1]['total']:.2f} s, stock b1 {c[-1]['total']:.2f} s; load {os.getloadavg()[0]:.2f}", flush=True)
    return a, b, c, min(imports)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", default="results/demo-world", help="demo world folder (built when missing)")
    ap.add_argument("--config", default="configs/demo.yaml", help="run config naming results/demo-world")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds A B C")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.update(ENV)
    from search.stages.trial_worker import MergeEvalWorker

    with tempfile.TemporaryDirectory(prefix="toolchain-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "hook").mkdir()
        (tmp / "hook" / "sitecustomize.py").write_text(HOOK, encoding="utf-8")
        cfg = load_config(REPO / args.config, Path(args.world), tmp)
        recipe = tmp / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(cfg.recipes[0], sort_keys=False), encoding="utf-8")
        worker = MergeEvalWorker(cfg)
        t0 = time.perf_counter()
        worker.setup()
        setup = time.perf_counter() - t0
        index_world, n_tasks = index_counts(cfg)
        print(f"torch {torch.__version__}, 1 thread; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
              f"merge-search worker setup {setup:.2f} s", flush=True)
        params = params_from_recipe(cfg.space, cfg.recipes[0])
        a, b, c, imports = rounds(worker, cfg, params, recipe, tmp, args.repeats)
    print_table(a, b, c, setup, imports, index_world, n_tasks)
    print_accuracies(a, b, c)
    problems = check(a, b, c)
    print(f"accuracies equal (1e-9) and weights identical (weights_sha256 {a[0]['sha'][:16]}) on every path: "
          + ("yes" if not problems else "NO"))
    if problems:
        sys.exit("\n".join(problems))


if __name__ == "__main__":
    main()
