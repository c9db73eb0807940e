"""The Optuna study of a search: the ``search:`` config section, storage, sampler, pruner, warm start, resume.

Storage
-------
By default the study lives in ``RUN/study.db``, a **SQLite** file (``sqlite:///RUN/study.db``), and trial
artifacts (each trial's mergekit YAML) in ``RUN/artifacts`` (:class:`optuna.artifacts.FileSystemArtifactStore`).
SQLite rather than Optuna's journal file because:

* only one process ever writes (the driver; Ray workers never touch storage), so SQLite's single-writer lock
  costs nothing;
* every write is a transaction: a driver killed with SIGKILL leaves a consistent database (the journal file
  may end in a half-written line that every later reader has to skip);
* stock ``optuna-dashboard RUN/study.db --artifact-dir RUN/artifacts`` opens it while the search runs, and any
  SQLite tool can query it.

On a cluster give ``search.storage`` any RDB URL (``postgresql://user@host/db``); the driver is still the only
writer.

Resume
------
:func:`open_study` with the same config and run folder loads the existing study. Trials left ``RUNNING`` by a
killed driver are *orphans* (nobody else writes), so they are marked ``FAIL`` with reason ``orphaned``. What
happens to their parameters depends on how far the driver got (it can die between ``ask`` and dispatch):

* dispatched to a worker (the ``worker`` attribute is set): the parameters are re-queued, counting as one retry;
* asked from the queue (a warm-start recipe or a retry) but not yet dispatched: the queued parameters are
  queued again as they were, since nothing ran, so a hand recipe is never lost;
* sampled but not yet dispatched: nothing ran and nothing is re-queued (the sampler proposes anew).

Warm-start recipes are enqueued exactly once per study (a study
user attribute records it, and :meth:`optuna.Study.enqueue_trial` skips parameters already present).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
import sqlalchemy
from optuna.trial import TrialState
from pydantic import Field

from objectives.errors import UserError, first_line
from objectives.schema import Strict
from search.rundir import RunDir, TrialAttr

__all__ = [
    "SearchConfig",
    "build_pruner",
    "build_sampler",
    "check_sampler",
    "enqueue_warm_start",
    "fail_orphans",
    "load_study",
    "feasible_front",
    "is_feasible",
    "open_study",
    "ranked_trials",
    "requeue",
    "resolve_storage",
]

SAMPLERS = ("tpe", "gp", "cmaes", "random", "nsgaii")
PRUNERS = ("successive_halving", "hyperband", "none")
MULTI_OBJECTIVE_SAMPLERS = ("nsgaii", "tpe", "random")
CONSTRAINED_SAMPLERS = ("tpe", "gp", "nsgaii", "random")  # CMA-ES ignores Optuna trial constraints


class SearchConfig(Strict):
    """The ``search:`` section of a run config.

    ``n_trials`` counts *finished* trials (``COMPLETE`` or ``PRUNED``) of the study, across resumes; ``FAIL``
    trials never count, so a crash or a retry does not eat the budget. The command line's ``--n-trials`` and
    ``--workers`` override ``n_trials`` and ``workers``.
    """

    study_name: str | None = Field(None, description="Optuna study name; default: the run config's `name`.")
    storage: str | None = Field(
        None, description="Optuna storage URL; default: sqlite:///RUN/study.db (any RDB URL for clusters).")
    sampler: Literal["tpe", "gp", "cmaes", "random", "nsgaii"] = "tpe"
    n_startup_trials: int = Field(8, ge=0, description="random trials before tpe/gp model the space")
    pruner: Literal["successive_halving", "hyperband", "none"] = "successive_halving"
    reduction_factor: int = Field(3, ge=2, description="successive halving / hyperband reduction factor")
    min_resource: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="items evaluated before the first pruning decision ('auto': the first rung's)")
    multi_fidelity: bool = Field(
        True, description="run the objective's rungs (objective.rungs) one after the other (false: the last only)")
    n_trials: int = Field(30, ge=1)
    workers: int = Field(2, ge=1, le=4096, description="trials in flight (one Ray actor each)")
    worker_cpus: float = Field(1.0, gt=0)
    worker_gpus: float | None = Field(
        None, ge=0, description="GPUs per worker; default: 1 when the Ray cluster has GPUs, else 0")
    max_retries: int = Field(1, ge=0, description="re-queues of the parameters of a failed trial")
    max_failures_in_a_row: int = Field(
        5, ge=1, description="stop the search (resumable) when this many trials in a row fail for the same reason")


def check_sampler(sampler: str, *, n_objectives: int = 1, constrained: bool = False) -> list[str]:
    """What is wrong with ``sampler`` for this objective (empty when it fits), one message per problem."""
    problems = []
    if n_objectives > 1 and sampler not in MULTI_OBJECTIVE_SAMPLERS:
        problems.append(f"search.sampler {sampler!r} is single-objective but the objective has {n_objectives} "
                        f"values (objective.secondary is set): use one of {list(MULTI_OBJECTIVE_SAMPLERS)}")
    if constrained and sampler not in CONSTRAINED_SAMPLERS:
        problems.append(f"search.sampler {sampler!r} ignores objective.constraints: use one of "
                        f"{list(CONSTRAINED_SAMPLERS)}, or drop the constraints")
    return problems


def build_sampler(
    cfg: SearchConfig, seed: int, *, x0: dict[str, Any] | None = None, n_objectives: int = 1,
    constrained: bool = False,
) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded; ``x0`` (the first warm-start recipe) is CMA-ES's starting mean.

    Constraints reach the samplers through each trial's Optuna constraints (``Trial.set_constraint``, set by the
    driver when a trial completes): TPE, GP and NSGA-II model feasibility, and Optuna's ``best_trial(s)``
    consider only feasible trials. Raises :class:`UserError` for a sampler that cannot serve the objective
    (:func:`check_sampler`)."""
    problems = check_sampler(cfg.sampler, n_objectives=n_objectives, constrained=constrained)
    if problems:
        raise UserError("; ".join(problems))
    name = cfg.sampler
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials,
                                          multivariate=True, constant_liar=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
    if name == "cmaes":
        # x0 is deprecated since Optuna 4.9 (removal planned for 6.0; pinned here: 5.0). Without it CMA-ES
        # starts at the box centre; the hand recipes are enqueued as the first trials either way.
        return optuna.samplers.CmaEsSampler(x0=dict(x0) if x0 else None, seed=seed,
                                            n_startup_trials=0)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """True when every Optuna constraint value of the trial is ``<= 0`` (always true without constraints)."""
    return all(v <= 0 for v in trial.constraints.values())


def _signs(study: optuna.Study) -> list[float]:
    return [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions]


def ranked_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials, best first: feasible before infeasible, then by the objective values in order
    (primary first, each in its direction), then by trial number.

    The first is the single-objective best (among feasible trials) and, for multi-objective, the feasible
    trial with the best primary value, which lies on the feasible Pareto front.
    """
    signs = _signs(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: (not is_feasible(t), *(-s * v for s, v in zip(signs, t.values)), t.number))


def feasible_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front of the feasible COMPLETE trials (no other feasible trial is at least as good in every
    objective and better in one), in :func:`ranked_trials` order."""
    signs = _signs(study)
    feasible = [t for t in ranked_trials(study) if is_feasible(t)]

    def dominates(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> bool:
        pairs = [(s * x, s * y) for s, x, y in zip(signs, a.values, b.values)]
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    return [t for t in feasible if not any(dominates(o, t) for o in feasible)]


def build_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    """SuccessiveHalving (default), Hyperband or none; steps are items evaluated."""
    if cfg.pruner == "none" or not cfg.multi_fidelity:
        return optuna.pruners.NopPruner()
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1 if cfg.min_resource == "auto" else cfg.min_resource,
                                              reduction_factor=cfg.reduction_factor)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.min_resource,
                                                  reduction_factor=cfg.reduction_factor)


def open_study(
    cfg: SearchConfig,
    *,
    name: str,
    run_dir: str | Path,
    seed: int,
    directions: list[str] | None = None,
    x0: dict[str, Any] | None = None,
    constrained: bool = False,
    metric_names: list[str] | None = None,
) -> optuna.Study:
    """Create the study or load it to resume (same name, same storage). ``metric_names``: one label per
    direction, shown by optuna-dashboard instead of "Objective 0" (kept up to date on a resume)."""
    run = RunDir(run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    directions = directions or ["maximize"]
    storage = run.storage_url(cfg.storage)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=cfg.study_name or name,
            sampler=build_sampler(cfg, seed, x0=x0, n_objectives=len(directions), constrained=constrained),
            pruner=build_pruner(cfg),
            directions=directions,
            load_if_exists=True,
        )
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as err:  # no driver, damaged or unreachable database
        raise UserError(f"search.storage {storage!r} cannot be opened ({first_line(err)}): use sqlite:///PATH or an RDB "
                        "URL such as postgresql://user@host/db") from None
    if [d.name.lower() for d in study.directions] != [d.lower() for d in directions]:
        raise UserError(
            f"study {study.study_name!r} in {storage} has directions "
            f"{[d.name.lower() for d in study.directions]} but the objective has {directions}: "
            "use another run folder or search.study_name")
    if metric_names and study.metric_names != metric_names:
        with warnings.catch_warnings():  # experimental in Optuna since 3.2, and what optuna-dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names)
    return study


def enqueue_warm_start(study: optuna.Study, params_list: list[dict[str, Any]], seed: int) -> int:
    """Enqueue hand recipes once per study; returns how many were enqueued now (0 on resume)."""
    if study.user_attrs.get(TrialAttr.STUDY_WARM_ENQUEUED):
        return 0
    for i, params in enumerate(params_list):
        study.enqueue_trial(params, user_attrs={TrialAttr.ATTEMPT: 0, TrialAttr.WARM_START: i}, skip_if_exists=True)
    study.set_user_attr(TrialAttr.STUDY_WARM_ENQUEUED, len(params_list))
    return len(params_list)


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, max_retries: int) -> bool:
    """Re-queue a failed trial's parameters (same seed) unless it used up ``max_retries``."""
    attempt = int(trial.user_attrs.get(TrialAttr.ATTEMPT, 0))
    if attempt >= max_retries or not trial.params:
        return False
    attrs = {TrialAttr.ATTEMPT: attempt + 1, TrialAttr.RETRY_OF: trial.number}
    if TrialAttr.SEED in trial.user_attrs:
        attrs[TrialAttr.SEED] = trial.user_attrs[TrialAttr.SEED]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    return True


def fail_orphans(study: optuna.Study, max_retries: int) -> list[int]:
    """Mark trials left RUNNING by a dead driver as FAIL (reason ``orphaned ...``) and re-queue what ran or was queued.

    See the module docstring for the three cases. Returns the orphans' trial numbers.
    """
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for ft in orphans:
        # Optuna keeps an enqueued trial's parameters in this system attribute (Study.enqueue_trial);
        # tests/driver/test_driver.py fails loudly if that changes.
        queued = ft.system_attrs.get("fixed_params")
        dispatched = TrialAttr.WORKER in ft.user_attrs
        if dispatched:
            reason = "orphaned: the driver stopped while the trial was running"
        elif queued:
            reason = "orphaned before dispatch: nothing ran; its queued parameters are queued again"
        else:
            reason = "orphaned before dispatch: nothing ran; the sampler proposes anew"
        optuna.trial.Trial(study, ft._trial_id).set_user_attr(TrialAttr.FAIL_REASON, reason)
        frozen = study.tell(ft.number, state=TrialState.FAIL)
        if dispatched:
            requeue(study, frozen, max_retries)
        elif queued:
            attrs = {k: v for k, v in ft.user_attrs.items() if k != TrialAttr.FAIL_REASON}
            study.enqueue_trial(dict(queued), user_attrs={**attrs, TrialAttr.RETRY_OF: ft.number})
    return [ft.number for ft in orphans]


def resolve_storage(run: str | Path) -> tuple[str, str | None, RunDir | None]:
    """``(storage URL, study name or None, run folder or None)`` for a run folder or a storage URL."""
    if "://" in str(run):
        return str(run), None, None
    folder = RunDir(Path(run))
    manifest = folder.read_manifest()
    if manifest is None:
        raise UserError(f"{str(run)!r} is neither a run folder (with run.json or study.db) nor a storage URL: "
                        "give the run folder of a search or a URL such as sqlite:///RUN/study.db")
    return manifest.storage, manifest.study_name, folder


def load_study(run: str | Path, study_name: str | None = None) -> optuna.Study:
    """The study of a run folder (its ``run.json``) or a storage URL; ``study_name`` picks one study of a
    storage that holds several."""
    url, name, _ = resolve_storage(run)
    name = study_name or name
    try:
        if name is None:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage=url)]
            if len(names) != 1:
                raise UserError(f"storage {url} holds studies {names}: name the study to use")
            name = names[0]
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:
        raise UserError(f"no study {name!r} in {url}: check the study name") from None
    except (ValueError, ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise UserError(f"storage {url} cannot be read ({type(err).__name__}: {first_line(err)}): check the URL, or restore "
                        "the database") from None
