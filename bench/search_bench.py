"""Worker busy fraction: the asynchronous driver vs a synchronous-generation baseline, side by side.

16 simulated workers (Ray actors running :class:`search.driver.testing.SimulatedWorker`, which sleeps for a trial
duration drawn per trial in ``[1 - jitter, 1 + jitter] * seconds``) run the same number of trials twice:

* **async**: :class:`search.driver.Driver` asks a new trial the moment any worker finishes one;
* **sync**: generations of 16 (as CMA-ES in mergekit-evolve): ask 16, run them, wait for all, tell all.

busy fraction = sum of trial durations measured inside the workers / (workers x wall time of the trials).

    .venv/bin/python bench/search_bench.py [--workers 16] [--trials 96] [--seconds 1.0] [--jitter 0.6]

``--demo-world`` additionally runs the demo-world comparisons (tpe/gp vs random, items with/without
pruning); it needs the world at results/demo-world and a run config (``--config``), and takes a long time
on a laptop.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.driver import Driver, TrialActor, init_ray, trial_seed
from search.driver.testing import SimulatedWorker


def suggest(trial):
    return {f"x{i}": trial.suggest_float(f"x{i}", 0, 1) for i in range(4)}


def run_async(args, factory) -> tuple[float, float]:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    driver = Driver(study, worker_factory=factory, suggest=suggest, n_trials=args.trials, workers=args.workers,
                    num_cpus=args.cpus, progress=False, poll_seconds=1.0)
    res = driver.run()
    return res.busy_fraction, res.wall_seconds


def run_sync(args, factory) -> tuple[float, float]:
    import ray

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    cls = ray.remote(TrialActor).options(num_cpus=args.cpus, max_restarts=0, max_task_retries=0)
    actors = [cls.remote(factory) for _ in range(args.workers)]
    ray.get([a.setup.remote() for a in actors])
    busy, t0, done = 0.0, time.perf_counter(), 0
    while done < args.trials:
        trials = [study.ask() for _ in range(min(args.workers, args.trials - done))]
        refs = [a.run_rung.remote(t.number, suggest(t), trial_seed(0, t.number), 0) for a, t in zip(actors, trials)]
        for t, out in zip(trials, ray.get(refs)):
            busy += out.busy_seconds
            study.tell(t, out.value)
        done += len(trials)
    wall = time.perf_counter() - t0
    for a in actors:
        ray.kill(a)
    return busy / (args.workers * wall), wall


def demo_world(args) -> None:
    """Demo-world comparisons through the real CLI (slow; optional)."""
    if not args.config:
        sys.exit("--demo-world needs --config RUN_CONFIG.yaml (a demo-world search config)")
    out = Path(args.out)
    rows = []
    for name, sampler, trials, pruner in (("tpe", "tpe", 30, "none"), ("gp", "gp", 30, "none"),
                                          ("random", "random", 100, "none"),
                                          ("tpe+sha", "tpe", 30, "successive_halving")):
        cfg = out / f"{name}.yaml"
        import yaml

        data = yaml.safe_load(Path(args.config).read_text())
        data.setdefault("search", {}).update(sampler=sampler, pruner=pruner, n_trials=trials)
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(data))
        subprocess.run([sys.executable, "-m", "search.cli", "search", str(cfg), "--out", str(out / name),
                        "--no-progress"], check=True, cwd=ROOT)
        import json

        summary = json.loads((out / name / "summary.json").read_text())
        # the winner's held-out (test split) score: re-merged from its recipe + seed, hash-checked
        from search.config import load_run_config
        from search.stages.heldout import evaluate

        evaluate(load_run_config(cfg), out / name, study_run=out / name, top_k=1, log=lambda m: None)
        models = json.loads((out / name / "heldout.json").read_text())["models"]
        test = next(m["test_avg"] for m in models.values() if m["trial"] == summary["best_number"])
        rows.append((name, trials, summary["best_value"], test, summary["items"]))
    print(f"{'run':10} {'trials':>6} {'best search score':>18} {'its test score':>15} {'items evaluated':>16}")
    for r in rows:
        print(f"{r[0]:10} {r[1]:>6} {r[2]:>18.4f} {r[3]:>15.4f} {r[4]:>16}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--trials", type=int, default=320)
    p.add_argument("--seconds", type=float, default=1.0, help="mean trial duration")
    p.add_argument("--jitter", type=float, default=0.6, help="durations vary in [1-j, 1+j] x seconds")
    p.add_argument("--cpus", type=float, default=0.1, help="Ray CPUs per simulated worker")
    p.add_argument("--demo-world", action="store_true", help="also run the (slow) demo-world comparisons")
    p.add_argument("--config", help="demo-world run config for --demo-world")
    p.add_argument("--out", default="results/search-bench", help="run folders for --demo-world")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    init_ray(None, num_cpus=max(2, int(args.workers * args.cpus + 1)))
    factory = functools.partial(SimulatedWorker, items=(100,), seconds=args.seconds, jitter=args.jitter)
    a_busy, a_wall = run_async(args, factory)
    s_busy, s_wall = run_sync(args, factory)
    print(f"{args.workers} simulated workers, {args.trials} trials, durations "
          f"{args.seconds * (1 - args.jitter):.2f}-{args.seconds * (1 + args.jitter):.2f}s (TPE sampler)")
    print(f"{'driver':24} {'busy fraction':>14} {'wall (s)':>9}")
    print(f"{'async (search.driver)':24} {a_busy:>14.1%} {a_wall:>9.1f}")
    print(f"{'sync generations':24} {s_busy:>14.1%} {s_wall:>9.1f}")
    print(f"async / sync busy ratio: {a_busy / s_busy:.2f}x; goal async >= 95%: "
          f"{'met' if a_busy >= 0.95 else 'NOT met'}")
    if args.demo_world:
        demo_world(args)


if __name__ == "__main__":
    main()
