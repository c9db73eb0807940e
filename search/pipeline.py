"""``merge-search run CONFIG``: search -> held-out -> export -> DPO -> MT-Bench -> report, resumable.

Each stage writes its outputs under the run folder and, when it has finished, a completion marker
``RUN/stages/<stage>.json`` (seconds taken, finish time). Re-running the command skips finished stages and
resumes an interrupted one (the search resumes from its Optuna storage: completed trials are kept, orphaned
ones re-queued); ``--from STAGE`` re-runs that stage and every later one, ``--only STAGE`` just that one.
The resolved config is saved as ``RUN/resolved.yaml``; a re-run with a different config is refused (a run
folder holds the results of one config), unless ``--from``/``--only`` say which stages to redo.

Layout::

    RUN/study.db, artifacts/        the study (optuna-dashboard RUN) and per-trial recipe artifacts
    RUN/heldout.json, heldout.md    sources, hand recipes and the top-K trials on search + held-out splits
    RUN/best.yaml, best.json        the winner as a stock mergekit recipe + seed, weights_sha256, scores
    RUN/dpo/                        DPO of the winner: adapter/, model/, metrics.json, loss.png, base/
    RUN/mtbench/<model>/            answers.jsonl, judge-replies.json, scores.json per model
    RUN/mtbench/comparison.{md,png} the side-by-side table and category chart
    RUN/report.md, plots/           the report, readable without the dashboard
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from objectives.errors import UserError
from search.config import RunConfig, ensure_world, load_run_config

__all__ = ["STAGES", "register", "run_pipeline"]

STAGES = ("search", "heldout", "export", "dpo", "mtbench", "report")


class StageInterrupted(Exception):
    """A stage stopped early (Ctrl-C): its marker is not written, the next run resumes it."""


def _marker(run: Path, stage: str) -> Path:
    return run / "stages" / f"{stage}.json"


def _say(msg: str) -> None:
    print(f"[merge-search run] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ stages


def _stage_search(cfg: RunConfig, run: Path, config_path: str, address: str | None) -> None:
    from search.search_cli import cmd_search

    rc = cmd_search(argparse.Namespace(config=config_path, out=str(run), n_trials=None, workers=None,
                                       address=address, no_progress=not sys.stderr.isatty()))
    if rc != 0:
        raise StageInterrupted("search")


def _stage_heldout(cfg: RunConfig, run: Path, config_path: str, address: str | None) -> None:
    from search.evaluate import run_evaluate

    run_evaluate(config_path, out=str(run), run=str(run), top_k=cfg.pipeline.top_k,
                 log=lambda m: _say(str(m)))


def _stage_export(cfg: RunConfig, run: Path, config_path: str, address: str | None) -> None:
    """The winner: the best trial on the *search* split (the held-out split only reports).

    Feasible trials come first (``objective.constraints``); with a secondary objective the winner is the
    feasible trial with the best primary value, which lies on the Pareto front."""
    from search.search_cli import cmd_export, load_study
    from search.study import is_feasible, ranked_trials

    study, _ = load_study(str(run), None)
    ranked = ranked_trials(study)
    which = "best"  # single objective, or nothing feasible: export's own error says what to do
    if len(study.directions) > 1 and ranked and is_feasible(ranked[0]):
        which = str(ranked[0].number)
        _say(f"multi-objective: exporting trial {which}, the feasible trial with the best primary value "
             f"{ranked[0].values[0]:.4f} (secondary {ranked[0].values[1]:.4f})")
    cmd_export(argparse.Namespace(run=str(run), study=None, trial=which, out=str(run / "best.yaml")))


def _remerge_winner(run: Path, out: Path) -> Path:
    """Re-merge ``best.yaml`` with its seed (and thread count) into ``out``; hash-checked against best.json."""
    from search.merge import merge_to_dir

    best = json.loads((run / "best.json").read_text(encoding="utf-8"))
    merge_to_dir(run / "best.yaml", out, seed=int(best["seed"]), device=best.get("merge_device", "cpu"),
                 threads=best.get("merge_threads"), expect_sha256=best.get("weights_sha256"))
    return out


def _stage_dpo(cfg: RunConfig, run: Path, config_path: str, address: str | None) -> None:
    from search.dpo import require_data, run_dpo

    dpo_cfg = cfg.dpo
    if dpo_cfg.device == "auto":
        dpo_cfg = dpo_cfg.model_copy(update={"device": cfg.device})
    require_data(dpo_cfg)
    out = run / "dpo"
    shutil.rmtree(out, ignore_errors=True)  # an unfinished attempt (no marker): start the stage afresh
    base = _remerge_winner(run, out / "base")
    metrics = run_dpo(dpo_cfg, base, out)
    _say(f"DPO held-out preference accuracy {metrics['heldout_before']['pref_accuracy']:.3f} -> "
         f"{metrics['heldout_after']['pref_accuracy']:.3f}")


def _mtbench_models(cfg: RunConfig, run: Path) -> dict[str, Path]:
    models: dict[str, Path] = {}
    if cfg.pipeline.mtbench_sources:
        models["base"] = Path(cfg.space.base_model)
        for m in cfg.space.models:
            models[m.name or Path(m.model).name] = Path(m.model)
    models["merge"] = run / "dpo" / "base"
    models["merge+dpo"] = run / "dpo" / "model"
    return models


def _stage_mtbench(cfg: RunConfig, run: Path, config_path: str, address: str | None) -> None:
    from objectives.mtbench.compare import bar_chart, comparison_table, load_scores
    from objectives.mtbench.generate import LocalChatModel
    from objectives.mtbench.run import run_mtbench

    if cfg.mtbench.questions is None:
        raise UserError(f"{config_path}: mtbench.questions is not set: give a FastEval .json, FastChat .jsonl "
                        "or dataset id")
    names, scores = [], []
    for name, path in _mtbench_models(cfg, run).items():
        out = run / "mtbench" / name.replace("+", "_")
        if not (out / "scores.json").is_file():  # per-model resume
            if not path.is_dir():
                raise UserError(f"mtbench: model folder {str(path)!r} for {name!r} is missing: re-run with "
                                "--from dpo (or download the source model)")
            _say(f"MT-Bench: {name}")
            model = LocalChatModel.from_pretrained(path, device=cfg.mtbench.device, batch_size=cfg.mtbench.batch_size,
                                                   seed=cfg.mtbench.seed)
            run_mtbench(cfg.mtbench, out, model=model, model_id=name)
        names.append(name)
        scores.append(load_scores(out / "scores.json"))
    baseline = names.index("merge") if "merge" in names else 0
    table = comparison_table(scores, names, baseline=baseline)
    (run / "mtbench" / "comparison.md").write_text(table + "\n", encoding="utf-8")
    bar_chart(scores, names, run / "mtbench" / "comparison.png")


def _stage_report(cfg: RunConfig, run: Path, config_path: str, address: str | None) -> None:
    from search.report import write_report
    from search.search_cli import load_study

    study, _ = load_study(str(run), None)
    write_report(run, study)


STAGE_FUNCS: dict[str, Callable[[RunConfig, Path, str, str | None], None]] = {
    "search": _stage_search, "heldout": _stage_heldout, "export": _stage_export,
    "dpo": _stage_dpo, "mtbench": _stage_mtbench, "report": _stage_report,
}


# ------------------------------------------------------------------------------------------------ driver


def _selected(from_stage: str | None, only: str | None) -> list[str]:
    if from_stage and only:
        raise UserError("--from and --only exclude each other: pass one of them")
    if only:
        return [only]
    return list(STAGES[STAGES.index(from_stage):]) if from_stage else list(STAGES)


def _check_config(cfg: RunConfig, run: Path, forced: bool) -> None:
    """Save the resolved config; refuse a different config for an existing run unless stages are forced."""
    from search.config import save_run_config

    saved = run / "resolved.yaml"
    old = yaml.safe_load(saved.read_text(encoding="utf-8")) if saved.is_file() else None
    new = yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))  # as it would read back
    if old is not None and old != new and not forced:
        raise UserError(f"run folder {str(run)!r} was made with a different config (see its resolved.yaml): use "
                        "another --out, or --from STAGE to redo stages with the new config")
    if old != new:
        save_run_config(cfg, saved)


def run_pipeline(config_path: str, out: str | None = None, *, from_stage: str | None = None,
                 only: str | None = None, address: str | None = None) -> Path:
    """Run (or resume) every stage; returns the run folder."""
    stages = _selected(from_stage, only)
    cfg = load_run_config(config_path)
    run = Path(out or Path("results") / cfg.name)
    missing = [s for s in STAGES[: STAGES.index(stages[0])] if not _marker(run, s).is_file()]
    if missing:
        raise UserError(f"stage {stages[0]!r} needs {missing} first: run without --only, or with --from {missing[0]}")
    run.mkdir(parents=True, exist_ok=True)
    _check_config(cfg, run, forced=bool(from_stage or only))
    ensure_world(cfg)
    for stage in stages:
        if from_stage or only:
            _marker(run, stage).unlink(missing_ok=True)
    for stage in stages:
        marker = _marker(run, stage)
        if marker.is_file():
            _say(f"{stage}: done already ({marker}), skipped")
            continue
        _say(f"{stage}: starting")
        t0 = time.time()
        try:
            STAGE_FUNCS[stage](cfg, run, config_path, address)
        except StageInterrupted:
            _say(f"{stage}: interrupted; run the same command again to resume")
            raise KeyboardInterrupt from None
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"stage": stage, "seconds": round(time.time() - t0, 1),
                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n", encoding="utf-8")
        _say(f"{stage}: done in {time.time() - t0:.0f} s")
    return run


def _cmd(args: argparse.Namespace) -> int:
    from search.report import headline

    run = run_pipeline(args.config, args.out, from_stage=args.from_stage, only=args.only, address=args.address)
    print(f"\nreport: {run / 'report.md'}")
    print(headline(run))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="the whole pipeline: search, held-out, export, DPO, MT-Bench, report (resumable)",
        description="Run every stage in order on CONFIG; re-running skips finished stages and resumes an "
                    "interrupted one. Outputs in --out (default results/<name>).")
    p.add_argument("config", help="run config YAML (configs/demo.yaml, configs/german-7b.yaml, ...)")
    p.add_argument("--out", help="run folder (default: results/<name>)")
    p.add_argument("--from", dest="from_stage", choices=STAGES, help="re-run this stage and every later one")
    p.add_argument("--only", choices=STAGES, help="re-run just this stage (earlier ones must be done)")
    p.add_argument("--address", help="Ray cluster address to join (default: a local Ray)")
    p.set_defaults(func=_cmd)
