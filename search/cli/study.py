"""``merge-search search | dashboard | export``: run the study, watch it, export a trial for stock mergekit."""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
from pathlib import Path

import yaml

from objectives.errors import UserError
from search.cli import types
from search.config import load_run_config
from search.driver.study import load_study, resolve_storage
from search.preflight import raise_problems, storage_problems
from search.stages.export import export_trial, pick_trial
from search.pipeline import check_run
from search.rundir import RunDir
from search.stages.optimize import run_search

__all__ = ["register"]


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
    p.add_argument("--no-progress", action="store_true",
                   help="no search progress display (default: a live view on a terminal, a line per finished trial "
                        "in a log)")
    p.set_defaults(func=cmd_search)

    d = subparsers.add_parser("dashboard", help="open optuna-dashboard on a run (with its trial artifacts)",
                              description="Serve optuna-dashboard for RUN (a run folder) or a storage URL.")
    d.add_argument("run", metavar="RUN|STORAGE_URL")
    d.add_argument("--port", type=_port, default=8080, help="TCP port, 1-65535 (default 8080)")
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
    e.add_argument("--verify", action="store_true", help="re-merge the trial first and refuse when its weights "
                                                         "differ from the recorded weights_sha256")
    e.set_defaults(func=cmd_export)


def cmd_search(args: argparse.Namespace) -> int:
    types.refuse_other_writer(args.config, args.out)
    cfg = load_run_config(args.config)
    override = {k: v for k, v in (("n_trials", args.n_trials), ("workers", args.workers)) if v is not None}
    for key, value in override.items():
        if value < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, but got {value}")
    cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update=override)})
    run_dir = RunDir.of(args.out, cfg.name).root
    check_run(cfg, RunDir(run_dir), ["search"], address=args.address)
    summary = run_search(cfg, run_dir, address=args.address, progress=not args.no_progress)
    print(yaml.safe_dump({"run": str(run_dir), **dataclasses.asdict(summary)}, sort_keys=False).rstrip())
    return 130 if summary.interrupted else 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    url, _, run_dir = resolve_storage(args.run)
    art = Path(args.artifact_dir) if args.artifact_dir else (run_dir.artifacts if run_dir else None)
    store = FileSystemArtifactStore(str(art)) if art is not None and art.is_dir() else None
    raise_problems(storage_problems(url), "dashboard")  # a damaged storage is refused here, not in the server
    try:
        socket.getaddrinfo(args.host, args.port)
        with socket.create_server((args.host, args.port)):
            pass  # free and bindable: the server takes it next
    except OSError as err:
        raise UserError(f"dashboard cannot listen on {args.host}:{args.port} ({err.strerror or err}): pass another "
                        "--host or --port") from None
    print(f"optuna-dashboard on http://{args.host}:{args.port}/ (storage {url}"
          + (f", artifacts {art}" if store else "") + "); Ctrl-C to stop", file=sys.stderr, flush=True)
    run_server(url, host=args.host, port=args.port, artifact_store=store)
    return 0


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be a number from 1 to 65535, but got {text!r}")
    return int(text)


def cmd_export(args: argparse.Namespace) -> int:
    study = load_study(args.run, args.study)
    trial = pick_trial(study, str(args.trial))
    record = export_trial(study, trial, args.out, verify=args.verify)
    print(f"trial {trial.number} -> {args.out} + {Path(args.out).with_suffix('.json').name}; reproduce with: "
          f"{record.reproduce_command(Path(args.out).name)}")
    return 0
