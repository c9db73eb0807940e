"""The export stage (``export``): a trial of the study as a stock mergekit recipe plus its
:class:`~search.rundir.TrialRecord` sidecar (``merge-search export`` on its own)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import optuna

from objectives.errors import UserError
from search import atomic
from search.driver.study import feasible_front, is_feasible, ranked_trials
from search.merge import remerge, versions, with_recipe
from search.lineage import sha256_of
from search.preflight import local_models, output_problems, raise_problems
from search.rundir import RunDir, TrialRecord
from search.stages.base import StageContext
from search.writelock import writer_lock

__all__ = ["NAME", "SECTIONS", "export_trial", "pick_trial", "problems", "run", "winner"]

NAME = "export"
SECTIONS: tuple[str, ...] = ()


def problems(cfg, run: RunDir) -> list[str]:
    """Nothing of its own: it reads the study the search stage made."""
    return []


def run(cfg, run: RunDir, ctx: StageContext) -> TrialRecord:
    """The winner (:func:`winner`) as ``RUN/best.yaml`` + ``best.json``."""
    from search.driver.study import load_study

    study = load_study(run.root)
    trial = winner(study)
    if len(study.directions) > 1:
        ctx.log(f"multi-objective: exporting trial {trial.number}, the feasible trial with the best primary value "
                f"{trial.values[0]:.4f} (secondary {trial.values[1]:.4f})")
    return export_trial(study, trial, run.best_yaml)


def output_fingerprint(run: RunDir) -> str | None:
    """What the export holds now (lineage): ``best.yaml`` and ``best.json``; a new export into the run folder
    makes the later stages stale. None when there is none."""
    files = [run.best_yaml, run.best_yaml.with_suffix(".json")]
    if not all(f.is_file() for f in files):
        return None
    return sha256_of([f.read_text(encoding="utf-8") for f in files])


def pick_trial(study: optuna.Study, which: str | int = "best") -> optuna.trial.FrozenTrial:
    """Trial ``which`` (a number, or ``best``: the first of :func:`ranked_trials`, refused when it is
    infeasible or the study has several objectives)."""
    if which != "best":
        try:
            number = int(which)
        except ValueError:
            raise UserError(f"trial must be a trial number or 'best', but got {which!r}") from None
        trials = study.get_trials(deepcopy=False)
        if not 0 <= number < len(trials):
            raise UserError(f"trial {number}: study {study.study_name!r} has trials 0..{len(trials) - 1}")
        return trials[number]
    ranked = ranked_trials(study)
    if not ranked:
        raise UserError(f"study {study.study_name!r} has no COMPLETE trial yet: run the search first")
    if not is_feasible(ranked[0]):
        raise UserError(f"study {study.study_name!r}: no COMPLETE trial meets objective.constraints (see each "
                        "trial's `violations`): pick a trial by its number to export one anyway, or relax the constraints")
    if len(study.directions) > 1:
        front = sorted(t.number for t in feasible_front(study))
        raise UserError(f"study {study.study_name!r} is multi-objective, so there is no single best: pass "
                        f"a trial number from the Pareto front {front} (trial {ranked[0].number} has the "
                        "best primary value)")
    return ranked[0]


def winner(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The pipeline's winner: the best trial on the *search* split (the held-out split only reports).

    Feasible trials come first (``objective.constraints``); with a secondary objective the winner is the
    feasible trial with the best primary value, which lies on the Pareto front."""
    ranked = ranked_trials(study)
    if len(study.directions) > 1 and ranked and is_feasible(ranked[0]):
        return ranked[0]
    return pick_trial(study, "best")  # single objective, or nothing feasible: its error says what to do


def export_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, out: str | Path, *,
                 verify: bool = False) -> TrialRecord:
    """Write ``trial``'s recipe to ``out`` (``.yaml``) and its :class:`TrialRecord` sidecar beside it
    (``.json``), so that stock ``mergekit-yaml OUT.yaml DIR --random-seed SEED`` re-creates the scored weights.

    ``verify``: re-merge the trial first (:func:`search.merge.remerge`) and refuse when the hash differs."""
    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        raise UserError(f"the export file must end in .yaml or .yml, but got {str(out)!r}")
    record = with_recipe(TrialRecord.from_trial(trial, study.study_name))  # parsed once, re-merged with it
    models = record.parsed.referenced_models()
    problems = output_problems(out, what="export file", inputs=local_models(models), file=True)
    existing = [p for p in (out, out.with_suffix(".json")) if p.is_file()]
    if existing and not _is_export(out):
        problems += [f"export file {str(p)!r} exists and is not an earlier export: choose another file name"
                     for p in existing]
    raise_problems(problems, "export")
    if record.weights_sha256 is None:
        raise UserError(f"trial {trial.number} ({trial.state.name}) was never merged and scored, so it has no "
                        "weights_sha256 to reproduce: pick a COMPLETE or PRUNED trial")
    if verify:
        remerge(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = record.recipe if record.recipe.endswith("\n") else record.recipe + "\n"
    with writer_lock(out.parent) if RunDir(out.parent).manifest.is_file() else nullcontext():  # into a run folder
        # the sidecar names its recipe's hash: a kill between the two renames leaves a pair load_export refuses
        atomic.write_text(out, text)
        atomic.write_json(out.with_suffix(".json"), record.sidecar(out.name, versions(), recipe_text=text))
    return record


def _is_export(recipe_file: Path) -> bool:
    """Whether ``recipe_file`` and its sidecar were written by :func:`export_trial`."""
    try:
        TrialRecord.load_export(recipe_file)
    except (UserError, TypeError):
        return False
    return True
