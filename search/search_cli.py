"""``merge-search search | dashboard | export``: run the study, watch it, export a trial for stock mergekit.

A run folder ``RUN`` holds ``study.db`` (SQLite, unless ``search.storage`` names another URL), ``artifacts/``
(each trial's mergekit YAML), ``run.json`` (storage URL, study name, config path) and ``config.yaml`` (the
config as given). Running the same ``search`` command again resumes the study.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from objectives.errors import UserError

__all__ = ["cmd_dashboard", "cmd_export", "cmd_search", "load_study", "register", "resolve_storage"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "search", help="run the Ray-parallel Optuna merge search (resumes an existing run)",
        description="Asynchronous Ray-parallel Optuna search over mergekit recipes. Running the same command "
                    "again resumes: finished trials are kept, orphaned ones re-queued. Ctrl-C stops asking and "
                    "lets running trials finish; a second Ctrl-C fails and re-queues them.")
    p.add_argument("config", help="run config YAML (sections: space, objective, search, ...)")
    p.add_argument("--out", help="run folder (default: results/<name>)")
    p.add_argument("--n-trials", type=int, help="finished (COMPLETE or PRUNED) trials to reach; overrides "
                                                "search.n_trials")
    p.add_argument("--workers", type=int, help="trials in flight; overrides search.workers")
    p.add_argument("--address", help="join this Ray cluster (e.g. 10.0.0.1:6379 or 'auto'); default: "
                                     "a private local Ray")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    p.set_defaults(func=cmd_search)

    d = subparsers.add_parser("dashboard", help="open optuna-dashboard on a run (with its trial artifacts)",
                              description="Serve optuna-dashboard for RUN (a run folder) or a storage URL.")
    d.add_argument("run", metavar="RUN|STORAGE_URL")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    d.add_argument("--artifact-dir", help="artifact folder (default: RUN/artifacts)")
    d.set_defaults(func=cmd_dashboard)

    e = subparsers.add_parser(
        "export", help="write a trial's mergekit YAML + a JSON sidecar (seed, weights_sha256, scores)",
        description="Export a trial so that stock `mergekit-yaml FILE.yaml OUT --random-seed SEED` "
                    "re-creates the scored weights (same sha256).")
    e.add_argument("run", metavar="RUN|STORAGE_URL")
    e.add_argument("--trial", default="best", help="trial number or 'best' (default)")
    e.add_argument("--study", help="study name (needed when the storage holds several)")
    e.add_argument("--out", required=True, help="FILE.yaml (the sidecar is FILE.json)")
    e.set_defaults(func=cmd_export)


# ------------------------------------------------------------------------------------------------ search


def _load_config(path: str):
    from search.config import load_run_config

    return load_run_config(path)


def _warm_params(cfg) -> list[dict[str, Any]]:
    from search.space import params_from_recipe

    return [params_from_recipe(cfg.space, r) for r in (cfg.recipes or [])]


def _describe(space, params: dict) -> str:
    from search.space import recipe_yaml, to_merge_config

    return recipe_yaml(to_merge_config(space, params))


def _suggest(space, trial) -> dict:
    from search.space import suggest_params

    return suggest_params(space, trial)


def cmd_search(args: argparse.Namespace) -> int:
    import optuna
    import ray
    import yaml

    from search.config import ensure_world
    from search.driver import Driver, MergeEvalWorker, init_ray
    from search.study import enqueue_warm_start, fail_orphans, open_study

    cfg = _load_config(args.config)
    ensure_world(cfg, quiet=True)
    override = {k: v for k, v in (("n_trials", args.n_trials), ("workers", args.workers)) if v is not None}
    for key, value in override.items():
        if value < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, but got {value}")
    scfg = cfg.search.model_copy(update=override)
    run_dir = Path(args.out or Path("results") / cfg.name)
    warm = _warm_params(cfg)
    directions = ["maximize", "maximize"] if cfg.objective.secondary else ["maximize"]
    study = open_study(scfg, name=cfg.name, run_dir=run_dir, seed=cfg.seed, directions=directions,
                       x0=warm[0] if warm else None, constrained=bool(cfg.objective.constraints))
    (run_dir / "config.yaml").write_text(Path(args.config).read_text(encoding="utf-8"), encoding="utf-8")
    storage = scfg.storage or f"sqlite:///{(run_dir.resolve() / 'study.db').as_posix()}"
    (run_dir / "run.json").write_text(json.dumps({"storage": storage, "study_name": study.study_name,
                                                  "config": str(args.config)}, indent=1), encoding="utf-8")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    orphans = fail_orphans(study, scfg.max_retries)
    if orphans:
        print(f"resuming: trials {orphans} were left running by a stopped driver: marked FAIL, re-queued",
              file=sys.stderr)
    n_warm = enqueue_warm_start(study, warm, cfg.seed)
    if n_warm:
        print(f"warm start: {n_warm} hand recipe(s) enqueued", file=sys.stderr)
    init_ray(args.address, num_cpus=max(os.cpu_count() or 1, math.ceil(scfg.workers * scfg.worker_cpus)))
    gpus = scfg.worker_gpus
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    artifacts = run_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    driver = Driver(
        study,
        worker_factory=functools.partial(MergeEvalWorker, cfg),
        suggest=functools.partial(_suggest, cfg.space),
        describe=functools.partial(_describe, cfg.space),
        n_trials=scfg.n_trials, workers=scfg.workers, seed=cfg.seed, max_retries=scfg.max_retries,
        multi_fidelity=scfg.multi_fidelity, num_cpus=scfg.worker_cpus, num_gpus=gpus,
        artifact_store=optuna.artifacts.FileSystemArtifactStore(str(artifacts)),
        artifact_dir=run_dir / ".upload", progress=not args.no_progress,
    )
    result = driver.run()
    summary = {k: getattr(result, k) for k in ("complete", "pruned", "failed", "requeued", "items",
                                                "best_number", "best_value", "best_params", "best_feasible",
                                                "interrupted")}
    summary["busy_fraction"] = round(result.busy_fraction, 4)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(yaml.safe_dump({"run": str(run_dir), **summary}, sort_keys=False).rstrip())
    return 130 if result.interrupted else 0


# ------------------------------------------------------------------------------------------------ storage


def resolve_storage(run: str) -> tuple[str, str | None, Path | None]:
    """``(storage URL, study name or None, run folder or None)`` for a run folder or a storage URL."""
    if "://" in run:
        return run, None, None
    path = Path(run)
    manifest = path / "run.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        return data["storage"], data.get("study_name"), path
    if (path / "study.db").is_file():
        return f"sqlite:///{(path.resolve() / 'study.db').as_posix()}", None, path
    raise UserError(f"{run!r} is neither a run folder (with run.json or study.db) nor a storage URL: pass the "
                    "--out folder of `merge-search search` or a URL such as sqlite:///RUN/study.db")


def load_study(run: str, study_name: str | None = None):
    """``(study, run folder or None)`` from a run folder (its ``run.json``) or a storage URL; ``study_name``
    picks one study of a storage that holds several."""
    import optuna

    url, name, run_dir = resolve_storage(run)
    name = study_name or name
    if name is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage=url)]
        if len(names) != 1:
            raise UserError(f"storage {url} holds studies {names}: pick one with --study NAME")
        name = names[0]
    try:
        return optuna.load_study(study_name=name, storage=url), run_dir
    except KeyError:
        raise UserError(f"no study {name!r} in {url}: check --study") from None


# ------------------------------------------------------------------------------------------------ dashboard


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    url, _, run_dir = resolve_storage(args.run)
    art = Path(args.artifact_dir) if args.artifact_dir else (run_dir / "artifacts" if run_dir else None)
    store = FileSystemArtifactStore(str(art)) if art is not None and art.is_dir() else None
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ (storage {url}"
          + (f", artifacts {art}" if store else "") + "); Ctrl-C to stop", file=sys.stderr, flush=True)
    run_server(url, host=args.host, port=args.port, artifact_store=store)
    return 0


# ------------------------------------------------------------------------------------------------ export


def _pick_trial(study, which: str):
    from search.study import feasible_front, is_feasible, ranked_trials

    if which == "best":
        ranked = ranked_trials(study)
        if not ranked:
            raise UserError(f"study {study.study_name!r} has no COMPLETE trial yet: run the search first")
        if not is_feasible(ranked[0]):
            raise UserError(f"study {study.study_name!r}: no COMPLETE trial meets objective.constraints (see each "
                            "trial's `violations`): pass --trial N to export one anyway, or relax the constraints")
        if len(study.directions) > 1:
            front = sorted(t.number for t in feasible_front(study))
            raise UserError(f"study {study.study_name!r} is multi-objective, so there is no single best: pass "
                            f"--trial N with N from the Pareto front {front} (trial {ranked[0].number} has the "
                            "best primary value)")
        return ranked[0]
    try:
        number = int(which)
    except ValueError:
        raise UserError(f"--trial must be a trial number or 'best', but got {which!r}") from None
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise UserError(f"--trial {number}: study {study.study_name!r} has trials 0..{len(trials) - 1}")
    return trials[number]


def cmd_export(args: argparse.Namespace) -> int:
    from search.merge import versions

    study, _ = load_study(args.run, args.study)
    trial = _pick_trial(study, str(args.trial))
    recipe = trial.user_attrs.get("recipe")
    if not recipe:
        raise UserError(f"trial {trial.number} has no recorded recipe (user attribute 'recipe'): pick another "
                        "--trial")
    out = Path(args.out)
    if out.suffix not in (".yaml", ".yml"):
        raise UserError(f"--out must end in .yaml or .yml, but got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(recipe if recipe.endswith("\n") else recipe + "\n", encoding="utf-8")
    ua = trial.user_attrs
    seed = ua.get("seed")
    device = ua.get("merge_device", "cpu")
    sidecar = {
        "study": study.study_name,
        "trial": trial.number,
        "state": trial.state.name,
        "seed": seed,
        "weights_sha256": ua.get("weights_sha256"),
        "merge_device": device,
        "merge_threads": ua.get("merge_threads"),
        "value": trial.values if trial.values is None or len(trial.values) > 1 else trial.values[0],
        "scores": ua.get("scores"),
        "stderr": ua.get("stderr"),
        "items_evaluated": ua.get("items_evaluated"),
        "params": trial.params,
        "versions": versions(),
        "reproduce": (f"OMP_NUM_THREADS={ua['merge_threads']} " if ua.get("merge_threads") and device == "cpu"
                      else "") + f"mergekit-yaml {out.name} OUT --random-seed {seed}"
                     + (" --cuda" if str(device).startswith("cuda") else ""),
    }
    side = out.with_suffix(".json")
    side.write_text(json.dumps(sidecar, indent=1), encoding="utf-8")
    print(f"trial {trial.number} -> {out} + {side.name}; reproduce with: {sidecar['reproduce']}")
    return 0
