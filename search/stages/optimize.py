"""The search stage (``search``): :func:`run_search` runs (or resumes) the Ray-parallel Optuna search of a run
config.

A run folder (:class:`~search.rundir.RunDir`) holds the study (``study.db`` unless ``search.storage`` names
another URL), ``artifacts/`` (each trial's mergekit YAML), the manifest ``run.json`` and ``resolved.yaml``.
Running :func:`run_search` again on the same folder resumes the study: finished trials are kept, orphaned
ones re-queued (:func:`search.driver.study.fail_orphans`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from objectives.chat import overlap_problems
from objectives.errors import UserError, UserErrors
from objectives.objective import Objective
from search import atomic
from search.config import RunConfig, save_run_config
from search.driver.driver import Driver, DriverResult, init_ray
from search.driver.lease import StudyLease, lease_holder
from search.driver.study import enqueue_warm_start, fail_orphans, open_study
from search.merge import params_from_recipe, recipe_text, suggest_params
from search.merge.hashing import source_fingerprint
from search.lineage import sha256_of
from search.merge.sources import is_local, source_problems
from search.preflight import RESOURCE_KEYS, as_read_back, config_diff, storage_problems
from search.rundir import RunDir, RunManifest, TrialAttr
from search.stages.base import StageContext, StageInterrupted
from search.stages.chat_templates import chat_objective_problems
from search.stages.selection import item_matrix, matrix_items
from search.stages.trial_worker import MergeEvalWorker
from search.writelock import writer_lock

__all__ = ["NAME", "SECTIONS", "SearchSummary", "output_fingerprint", "problems", "run", "run_search",
           "study_fingerprint",
           "study_owner_problems", "warm_params"]

NAME = "search"
# What the study holds: a change in one of these sections makes another study (another run folder).
SECTIONS = ("name", "seed", "device", "space", "objective", "recipes", "search")


@dataclass(frozen=True)
class SearchSummary:
    """What one :func:`run_search` did (``RUN/summary.json``); ``best_*`` are of the whole study."""

    complete: int
    pruned: int
    failed: int
    requeued: int
    items: int
    best_number: int | None
    best_value: Any
    best_params: dict | None
    best_feasible: bool | None
    interrupted: bool
    stopped: str | None
    busy_fraction: float
    matrix_items: int = 0  # items the sources were scored on by this call (objective.selection: informative)

    @classmethod
    def of(cls, result: DriverResult, matrix_items: int = 0) -> SearchSummary:
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("busy_fraction", "matrix_items")]
        return cls(**{n: getattr(result, n) for n in names}, busy_fraction=round(result.busy_fraction, 4),
                   matrix_items=matrix_items)


def warm_params(cfg: RunConfig) -> list[dict[str, Any]]:
    """The searched values of every hand recipe of ``cfg`` (enqueued as the first trials)."""
    return [params_from_recipe(cfg.space, r) for r in (cfg.recipes or [])]


# ------------------------------------------------------------------------------------------------ the contract


def problems(cfg: RunConfig, run: RunDir) -> list[str]:
    """The search's inputs: source models (folders, safetensors headers, architectures, shapes, vocabularies),
    the tasks (exist, enough documents), the chat objective's questions (none shared with the final
    measurement, mtbench.questions) and the merge's chat template, the tokenizer source, the storage URL and
    the study it may already hold (made by another config?)."""
    out = source_problems(cfg.space.base_model, [m.model for m in cfg.space.models], device=cfg.device,
                          vocabulary=cfg.space.vocabulary_source)
    try:
        Objective(cfg.objective)
    except UserErrors as err:
        out += err.problems  # each names its field: one row each in `check`
    except UserError as err:
        out.append(str(err))
    if cfg.objective.chat:
        out += overlap_problems(cfg.objective.chat, cfg.mtbench.questions)
        out += chat_objective_problems(cfg.objective, cfg.space)
    url = run.storage_url(cfg.search.storage)
    out += storage_problems(url, creating=run.root) or study_owner_problems(cfg, url, run.root)
    field, tok = (("space.tokenizer.source", cfg.space.tokenizer.source) if cfg.space.tokenizer
                  else ("space.tokenizer_source", cfg.space.tokenizer_source))
    if tok and tok not in ("base", "union") and is_local(tok) and not Path(tok).expanduser().is_dir():
        out.append(f"{field} {tok!r} is not a folder: give a model folder, 'base' or 'union'")
    return out + token_source_problems(cfg)


def token_source_problems(cfg: RunConfig) -> list[str]:
    """``space.tokenizer.tokens`` entries whose embedding comes from a model that is not a source of the merge
    (mergekit would fail every trial on it)."""
    tokens = cfg.space.tokenizer.tokens if cfg.space.tokenizer else None
    sources = set(cfg.space.model_paths())
    out = []
    for token, spec in (tokens or {}).items():
        src = spec.get("source") if isinstance(spec, dict) else None
        model = src if isinstance(src, str) else src.get("model") if isinstance(src, dict) else None
        if model is not None and model not in sources:
            out.append(f"space.tokenizer.tokens[{token!r}].source names {model!r}, which is not a source of the merge: "
                       "name space.base_model or one of space.models (as written there)")
    return out


def run(cfg: RunConfig, run: RunDir, ctx: StageContext) -> SearchSummary:
    """The search stage of the pipeline: :func:`run_search`; a stopped search raises :class:`StageInterrupted`."""
    summary = run_search(cfg, run.root, address=ctx.address, progress=ctx.progress)
    if summary.interrupted:
        raise StageInterrupted(NAME)
    return summary


def output_fingerprint(run: RunDir) -> str | None:
    """What the search has produced (lineage, :mod:`search.lineage`): its finished trials, their states and
    values; None when the run folder holds no study."""
    from search.driver.study import load_study

    if run.read_manifest() is None:
        return None
    study = load_study(run.root)
    return sha256_of([(t.number, t.state.name, t.values) for t in study.get_trials(deepcopy=False)
                      if t.state.is_finished()])


def study_fingerprint(cfg: RunConfig) -> dict:
    """The keys of ``cfg`` that decide what a study's trials mean: its :data:`SECTIONS`, less how much is run
    (:data:`~search.preflight.RESOURCE_KEYS`) and where the study is stored."""
    data = {k: v for k, v in as_read_back(cfg).items() if k in SECTIONS}
    for key in RESOURCE_KEYS | {"search.storage", "search.study_name"}:
        *path, name = key.split(".")
        section = data
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section.pop(name, None)
    return data


def source_fingerprints(cfg: RunConfig) -> dict[str, str]:
    """``{source as the config names it: source_fingerprint}`` of every local source (hub ids are left out)."""
    models = cfg.space.model_paths()
    return {m: fp for m in models if (fp := source_fingerprint(m)) is not None}


def _changed_sources(study, cfg: RunConfig) -> list[str]:
    recorded = study.user_attrs.get(TrialAttr.STUDY_SOURCES)
    if not isinstance(recorded, dict):
        return []  # a study of an older version: nothing recorded to compare
    now = source_fingerprints(cfg)
    return [m for m, fp in recorded.items() if m in now and now[m] != fp]


def study_owner_problems(cfg: RunConfig, url: str, run_dir: Path | None = None) -> list[str]:
    """A study in the storage that another driver is searching now (its lease, :mod:`search.driver.lease`), or
    that another config made (its recorded fingerprint differs): its trials would be mixed with this config's.
    Reads an existing database only (never creates one)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return []
    name = cfg.search.study_name or cfg.name
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return []
    other = lease_holder(study, run_dir)
    if other is not None:
        return [other.refusal(name, f" in {url}")]
    recorded = study.user_attrs.get(TrialAttr.STUDY_CONFIG)
    keys = config_diff(recorded, study_fingerprint(cfg)) if recorded is not None else []
    if keys:
        shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        return [f"study {name!r} in {url} was made by a different config: {shown} differ, so its trials "
                "would be mixed: set search.study_name to a new name, or use another storage"]
    changed = _changed_sources(study, cfg)
    if changed:
        return [f"study {name!r} in {url} was made from other weights of {', '.join(map(repr, changed))} (the "
                "source's files differ from when the study was made), so its trials would be mixed: restore that "
                "source, or set search.study_name to a new name (or use another run folder)"]
    return []


# ------------------------------------------------------------------------------------------------ the search


def run_search(cfg: RunConfig, run_dir: str | Path, *, address: str | None = None,
               progress: bool = True) -> SearchSummary:
    """Run (or resume) the Ray-parallel search of ``cfg`` in ``run_dir`` until ``search.n_trials`` trials of
    the study are finished; writes ``resolved.yaml``, ``run.json`` and ``summary.json``.

    The inputs are not checked here: :func:`search.pipeline.check_run` (``stages=["search"]``) does that
    first, creating nothing, as ``merge-search search`` and ``run_pipeline`` do. Holds the run folder's writer
    lock (:mod:`search.writelock`): a second search on the same folder is refused."""
    with writer_lock(run_dir):
        return _run_search(cfg, RunDir(run_dir), address=address, progress=progress)


def _run_search(cfg: RunConfig, run: RunDir, *, address: str | None, progress: bool) -> SearchSummary:
    scfg = cfg.search
    warm = warm_params(cfg)
    secondary = cfg.objective.secondary
    names = [f"fitness ({cfg.objective.aggregate})"] + ([secondary.name] if secondary else [])  # one per objective
    study = open_study(scfg, name=cfg.name, run_dir=run.root, seed=cfg.seed, directions=["maximize"] * len(names),
                       x0=warm[0] if warm else None, constrained=bool(cfg.objective.constraints),
                       metric_names=names)
    lease = StudyLease(study, str(run.root))
    lease.take()  # before its trials are touched: another driver on a shared study is refused here
    try:
        return _search(cfg, run, study, lease, warm, address=address, progress=progress)
    finally:
        lease.release()


def _search(cfg: RunConfig, run: RunDir, study: optuna.Study, lease: StudyLease, warm: list[dict[str, Any]], *,
            address: str | None, progress: bool) -> SearchSummary:
    scfg = cfg.search
    if TrialAttr.STUDY_CONFIG not in study.user_attrs:
        study.set_user_attr(TrialAttr.STUDY_CONFIG, study_fingerprint(cfg))
    if TrialAttr.STUDY_SOURCES not in study.user_attrs:
        study.set_user_attr(TrialAttr.STUDY_SOURCES, source_fingerprints(cfg))
    save_run_config(cfg, run.resolved_config)
    run.write_manifest(RunManifest(storage=RunDir.absolute_url(scfg.storage), study_name=study.study_name))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    orphans = fail_orphans(study, scfg.max_retries)
    if orphans:
        print(f"resuming: trials {orphans} were left running by a stopped driver: marked FAIL, re-queued",
              file=sys.stderr)
    if enqueue_warm_start(study, warm, cfg.seed):
        print(f"warm start: {len(warm)} hand recipe(s) enqueued", file=sys.stderr)
    scored_now = not run.item_matrix.is_file()
    matrix = item_matrix(cfg, run, progress=progress)
    lease.beat()  # scoring the sources (the first time) can be long
    init_ray(address, num_cpus=max(os.cpu_count() or 1, math.ceil(scfg.workers * scfg.worker_cpus)))
    run.artifacts.mkdir(parents=True, exist_ok=True)
    driver = Driver(
        study, worker_factory=functools.partial(MergeEvalWorker, cfg, matrix,
                                                chat_cache=run.chat_judgements.resolve() if cfg.objective.chat else None),
        suggest=functools.partial(suggest_params, cfg.space), describe=functools.partial(recipe_text, cfg.space),
        n_trials=scfg.n_trials, workers=scfg.workers, seed=cfg.seed, max_retries=scfg.max_retries,
        max_failures_in_a_row=scfg.max_failures_in_a_row,
        multi_fidelity=scfg.multi_fidelity, num_cpus=scfg.worker_cpus, num_gpus=_worker_gpus(scfg),
        artifact_store=optuna.artifacts.FileSystemArtifactStore(str(run.artifacts)),
        artifact_dir=run.upload, progress=progress, heartbeat=lease.beat,
    )
    summary = SearchSummary.of(driver.run(), matrix_items(matrix) if matrix and scored_now else 0)
    atomic.write_text(run.summary, _json(dataclasses.asdict(summary)))
    if summary.stopped:
        raise UserError(f"search stopped: {summary.stopped}: fix the cause (each trial's fail_reason) and run the "
                        "same command to resume")
    return summary


def _worker_gpus(scfg) -> float:
    import ray

    if scfg.worker_gpus is not None:
        return scfg.worker_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=1)


