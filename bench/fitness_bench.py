"""Fitness at a fraction of the cost: items evaluated vs the held-out quality of the winner, side by side.

On the demo world, each arm runs the same search (sampler, trials, workers) for several search seeds; each
winner (best COMPLETE trial) is re-merged and scored on the held-out test tasks:

* ``full``         every trial scores every search item (no pruning): the reference;
* ``sh``           today's default: random item order, rungs 50/100/all, successive halving;
* ``informative``  the sources' item matrix orders the items (objectives.selection), rungs 10/30/90/all, SH;
* ``informative+estimate``  the same, the pruner sees the post-stratified estimate instead of the raw rung score.

Items = items the trials scored, plus (informative arms) the items the sources were scored on to build the item
matrix, once per search. The goal of issue #16: <= 1/5 of ``full``'s items at a held-out winner within one
standard error of ``full``'s.

    .venv/bin/python bench/fitness_bench.py [--world results/demo-world] [--seeds 0 1 2] [--trials 30]
        [--workers 2] [--arms full sh informative informative+estimate] [--out results/fitness-bench]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objectives.objective import Objective, cpu_threads  # noqa: E402
from search.config import load_run_config  # noqa: E402
from search.merge import remerge  # noqa: E402
from search.rundir import TrialRecord  # noqa: E402
from search.stages.heldout import top_trials  # noqa: E402
from search.stages.optimize import run_search  # noqa: E402

ARMS = {
    "full": {"rungs": ["all"], "pruner": "none", "selection": "random", "estimate": False},
    "sh": {"rungs": [50, 100, "all"], "pruner": "successive_halving", "selection": "random", "estimate": False},
    "informative": {"rungs": [10, 30, 90, "all"], "pruner": "successive_halving", "selection": "informative",
                    "estimate": False},
    "informative+estimate": {"rungs": [10, 30, 90, "all"], "pruner": "successive_halving",
                             "selection": "informative", "estimate": True},
}


def arm_config(args, arm: str, seed: int, folder: Path) -> Path:
    """configs/demo.yaml pointed at ``--world``, with the arm's rungs, pruner and selection."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    world = Path(args.world).resolve()
    spec = ARMS[arm]
    cfg.update(name=f"fitness-{arm}-{seed}".replace("+", "-"), seed=seed)
    cfg["space"]["base_model"] = str(world / "models" / "base")
    for m in cfg["space"]["models"]:
        m["model"] = str(world / "models" / m["name"])
    obj = cfg["objective"]
    obj.update(include_paths=[str(world / "tasks")], rungs=spec["rungs"], selection=spec["selection"],
               estimate=spec["estimate"])
    cfg["search"].update(n_trials=args.trials, workers=args.workers, pruner=spec["pruner"],
                         n_startup_trials=min(10, args.trials))
    for section in ("dpo", "mtbench", "pipeline"):
        cfg.pop(section, None)
    path = folder / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def heldout(cfg, run: Path) -> tuple[float, float]:
    """The winner's held-out test score (weighted mean over tasks) and its standard error."""
    [best] = top_trials(run, 1)
    res = remerge(TrialRecord.from_trial(best))
    objective = Objective(cfg.objective)
    with cpu_threads(1, "cpu"):
        test = objective.score(res.model, res.tokenizer, split="test")
    weights = {t.name: t.weight for t in cfg.objective.tasks}
    total = sum(weights.values())
    se = math.sqrt(sum((weights[n] / total) ** 2 * (test.stderr[n] or 0.0) ** 2 for n in weights))
    return test.score, se


def one_search(args, arm: str, seed: int, tmp: Path) -> dict:
    cfg = load_run_config(arm_config(args, arm, seed, tmp))
    run = tmp / f"run-{arm}-{seed}".replace("+", "-")
    t0 = time.perf_counter()
    summary = run_search(cfg, run, progress=False)
    wall = time.perf_counter() - t0
    score, se = heldout(cfg, run)
    row = {"arm": arm, "seed": seed, "items": summary.items + summary.matrix_items,
           "matrix_items": summary.matrix_items, "wall_s": round(wall, 1), "complete": summary.complete,
           "pruned": summary.pruned, "search_best": summary.best_value, "heldout": score, "heldout_se": se}
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    by_arm: dict[str, list[dict]] = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(r)
    ref_items = statistics.mean(r["items"] for r in by_arm.get("full", rows))
    ref = by_arm.get("full")
    ref_score = statistics.mean(r["heldout"] for r in ref) if ref else None
    ref_se = statistics.mean(r["heldout_se"] for r in ref) if ref else None
    lines = ["| arm | seeds | items (mean) | vs full | wall s (mean) | held-out winner (mean ± mean stderr) | "
             "per seed | within 1 stderr of full |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for arm, rs in by_arm.items():
        items = statistics.mean(r["items"] for r in rs)
        score = statistics.mean(r["heldout"] for r in rs)
        se = statistics.mean(r["heldout_se"] for r in rs)
        within = "-" if ref_score is None or arm == "full" else ("yes" if score >= ref_score - ref_se else "no")
        per_seed = " / ".join(f"{r['heldout']:.3f}" for r in rs)
        lines.append(f"| {arm} | {len(rs)} | {items:,.0f} | {ref_items / items:.1f}x fewer | "
                     f"{statistics.mean(r['wall_s'] for r in rs):.0f} | {score:.3f} ± {se:.3f} | {per_seed} | {within} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default=str(ROOT / "results" / "demo-world"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--out", default=str(ROOT / "results" / "fitness-bench"))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fitness-bench-") as tmp:
        for seed in args.seeds:  # arms interleaved per seed: each sees the same machine load
            for arm in args.arms:
                rows.append(one_search(args, arm, seed, Path(tmp)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    text = table(rows)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
