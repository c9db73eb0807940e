"""Which model to ship, and what every stage did to the measure users judge a model by.

The final measure is the MT-Bench stage's chat average (generated answers rated by the judge). Every other
number is a means to it, so each stage gets one verdict line against its own yardstick *and* the report names the
model to ship by the final measure alone: the merge, the merge after DPO, or, when neither beats them, the best
source model (the run then did not reach its goal, and says so).

Reads only what the stages wrote (``heldout.json``, ``dpo/metrics.json``, ``mtbench/*/scores.json``); a stage that
has not run yet gets no line. Shared by the report stage and ``make demo``'s headline.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from objectives.mtbench.run import SCORES_FILE
from search.rundir import RunDir
from search.stages.heldout_report import HeldoutReport, ModelScores

__all__ = ["ChatScores", "ShipDecision", "StageVerdict", "chat_scores", "kind_means", "ship_decision", "stage_headlines",
           "stage_verdicts", "winner_scores"]

MERGE, MERGE_DPO = "merge", "merge+dpo"


@dataclass(frozen=True)
class StageVerdict:
    """One stage against its yardstick: ``worse`` is True when it made things worse (said first), None when
    there is nothing to compare."""

    stage: str
    worse: bool | None
    line: str


@dataclass(frozen=True)
class ShipDecision:
    """The model to ship by the final chat measure, with every candidate's score."""

    model: str  # "merge", "merge+dpo" or a source model's name
    kind: str  # "merge" | "merge+dpo" | "source" | "recipe"
    score: float
    scores: dict[str, float]  # every rated model
    measure: str
    goal_met: bool  # a merge (with or without DPO) beats every source and hand recipe
    reason: str
    made_from: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _load(path: Path) -> Any | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@dataclass(frozen=True)
class ChatScores:
    """The MT-Bench stage's averages: ``scores`` ``{model: average}``, ``kinds`` ``{model: source | recipe | merge |
    merge+dpo}``, ``measure`` the name of the measure (it says when the judge is the offline stand-in)."""

    scores: dict[str, float]
    kinds: dict[str, str]
    measure: str

    def of(self, kind: str) -> dict[str, float]:
        return {n: v for n, v in self.scores.items() if self.kinds.get(n) == kind}


def chat_scores(run: RunDir) -> ChatScores:
    """Every model the MT-Bench stage rated, by name (``merge``, ``merge+dpo``, sources, hand recipes), from
    ``mtbench/models.json``; runs made before it existed: every other folder counts as a source."""
    kinds = _load(run.mtbench_kinds)
    if kinds is None:
        merge_dir, dpo_dir = run.mtbench_model(MERGE).name, run.mtbench_model(MERGE_DPO).name
        names = {p.parent.name: p.parent.name for p in run.mtbench.glob(f"*/{SCORES_FILE}")}
        names = {{merge_dir: MERGE, dpo_dir: MERGE_DPO}.get(d, d): d for d in names}
        kinds = {n: n if n in (MERGE, MERGE_DPO) else "source" for n in names}
    scores, standin = {}, False
    for name in kinds:
        s = _load(run.mtbench_model(name) / SCORES_FILE) or {}
        if isinstance(s.get("average"), (int, float)) and math.isfinite(s["average"]):
            scores[name] = float(s["average"])
            standin = standin or "label" in s
    what = "chat average (stand-in judge, not MT-Bench)" if standin else "MT-Bench average"
    return ChatScores(scores, {n: k for n, k in kinds.items() if n in scores}, what)


def winner_scores(heldout: HeldoutReport, winner: int | None) -> tuple[str, ModelScores] | None:
    """The re-evaluated row of trial ``winner`` in ``heldout`` as ``(name, scores)``; None when it is not there."""
    return next(((n, m) for n, m in heldout.models.items() if m.kind == "trial" and m.trial == winner), None)


def kind_means(heldout: HeldoutReport, kind: str, tasks_of: ModelScores) -> dict[str, float]:
    """``{model: mean test score}`` over the test tasks of ``tasks_of`` whose kind (``heldout.task_kinds``, default
    log-likelihood) is ``kind``; a model missing one of those tasks is left out (empty: no such task)."""
    tasks = [t for t in tasks_of.test if heldout.task_kinds.get(t, "loglikelihood") == kind]
    return {n: sum(m.test[t] for t in tasks) / len(tasks) for n, m in heldout.models.items()
            if tasks and all(m.test.get(t) is not None for t in tasks)}


def _compare(stage: str, what: str, mine: float, others: dict[str, float], fmt: str = ".3f") -> StageVerdict:
    top, v = max(others.items(), key=lambda kv: kv[1])
    worse = not mine > v
    word = "NOT above" if worse else "above"
    return StageVerdict(stage, worse, f"{stage}: {'WORSE - ' if worse else ''}the winner's {what} {mine:{fmt}} is "
                                      f"**{word}** every source model (best: {top} {v:{fmt}})")


def _heldout_verdicts(heldout: HeldoutReport, winner: int | None) -> list[StageVerdict]:
    found = winner_scores(heldout, winner)
    if found is None:
        return [StageVerdict("search", None, "search: the exported winner was not among the re-evaluated trials")]
    name, best = found
    sources = {n: m for n, m in heldout.models.items() if m.kind == "source"}
    out = []
    if sources:
        out.append(_compare("search", "search-split fitness", best.search_avg,
                            {n: m.search_avg for n, m in sources.items()}))
        for kind, label in (("loglikelihood", "held-out log-likelihood"), ("generation", "held-out generation")):
            means = kind_means(heldout, kind, best)
            theirs = {n: v for n, v in means.items() if n in sources}
            n_tasks = sum(heldout.task_kinds.get(t, "loglikelihood") == kind for t in best.test)
            if name in means and theirs:
                out.append(_compare(label, f"mean test score over {n_tasks} task(s)", means[name], theirs))
    recipes = {n: m.test_avg for n, m in heldout.models.items() if m.kind == "recipe" and m.test_avg is not None}
    if recipes and best.test_avg is not None:
        top, v = max(recipes.items(), key=lambda kv: kv[1])
        worse = not best.test_avg > v
        out.append(StageVerdict("hand recipe", worse, f"hand recipe: {'WORSE - ' if worse else ''}the winner's test "
                                f"average {best.test_avg:.3f} is **{'NOT above' if worse else 'above'}** every "
                                f"hand recipe (best: {top} {v:.3f})"))
    return out


def _dpo_verdict(metrics: dict | None, chat: dict[str, float], what: str) -> StageVerdict:
    metrics = metrics or {}
    b, a = metrics.get("heldout_before"), metrics.get("heldout_after")
    pref = f"held-out preference accuracy {b['pref_accuracy']:.3f} -> {a['pref_accuracy']:.3f}" if b and a else \
        "no DPO metrics"
    gen = metrics.get("generation")
    if gen:
        pref += f"; held-out generation {gen['before']['mean']:.3f} -> {gen['after']['mean']:.3f}"
    extra = "".join(f"; {w}" for w in metrics.get("warnings", []))
    if MERGE in chat and MERGE_DPO in chat:
        worse = not chat[MERGE_DPO] >= chat[MERGE]
        head = (f"DPO: WORSE - it lowers the {what} {chat[MERGE]:.2f} -> {chat[MERGE_DPO]:.2f}" if worse else
                f"DPO: it keeps or raises the {what} {chat[MERGE]:.2f} -> {chat[MERGE_DPO]:.2f}")
        return StageVerdict("dpo", worse, f"{head} ({pref}{extra})")
    return StageVerdict("dpo", bool(metrics.get("warnings")) or None,
                        f"DPO: {pref}{extra} (not yet rated on the final measure)")


def stage_verdicts(run: RunDir, winner: int | None) -> list[StageVerdict]:
    """One line per stage that has run, each against its yardstick; the chat and DPO lines against the final
    measure."""
    out = []
    if run.heldout_json.is_file():
        out += _heldout_verdicts(HeldoutReport.load(run.heldout_json), winner)
    chat = chat_scores(run)
    if MERGE in chat.scores:
        for kind, label in (("source", "source model"), ("recipe", "hand recipe")):
            others = chat.of(kind)
            if others:
                top, v = max(others.items(), key=lambda kv: kv[1])
                mine = chat.scores[MERGE]
                worse = not mine > v
                out.append(StageVerdict("chat", worse, f"chat: {'WORSE - ' if worse else ''}the merge's {chat.measure} "
                                        f"{mine:.2f} is **{'NOT above' if worse else 'above'}** every {label} "
                                        f"(best: {top} {v:.2f})"))
    metrics = _load(run.dpo.metrics)
    if metrics or MERGE_DPO in chat.scores:
        out.append(_dpo_verdict(metrics, chat.scores, chat.measure))
    return out


def ship_decision(run: RunDir) -> ShipDecision | None:
    """The model to ship: the best of merge, merge+dpo, the source models and the hand recipes on the final chat
    measure. DPO's model only when strictly above the merge, a merge only when strictly above every rated source
    and hand recipe (else the best of those, and ``goal_met`` is False). None until the MT-Bench stage has rated
    the merge."""
    chat = chat_scores(run)
    if MERGE not in chat.scores:
        return None
    scores, what = chat.scores, chat.measure
    others = {n: v for n, v in scores.items() if chat.kinds[n] in ("source", "recipe")}
    ours = {MERGE: scores[MERGE]} | ({MERGE_DPO: scores[MERGE_DPO]} if MERGE_DPO in scores else {})
    pick = MERGE_DPO if MERGE_DPO in ours and ours[MERGE_DPO] > ours[MERGE] else MERGE
    best_other = max(others.items(), key=lambda kv: kv[1]) if others else None
    made_from = {"mtbench": str(run.mtbench), "best_yaml": str(run.best_yaml) if run.best_yaml.is_file() else None,
                 "dpo_model": str(run.dpo.model) if MERGE_DPO in ours else None}
    rated_sources = chat.of("source")
    beats_sources = bool(rated_sources) and all(ours[pick] > v for v in rated_sources.values())
    if best_other is None or ours[pick] > best_other[1]:
        why = ("the best rated model" +
               (f", above every rated source model and hand recipe (best: {best_other[0]} {best_other[1]:.2f})"
                if best_other else "") +
               ("" if rated_sources else " (no source model was rated: pipeline.mtbench_sources is off, so whether "
                "it beats them is unknown)"))
        return ShipDecision(pick, pick, ours[pick], scores, what, beats_sources, why, made_from)
    name, v = best_other
    kind = chat.kinds[name]
    why = (f"neither the merge ({ours[MERGE]:.2f})" + (f" nor merge+dpo ({ours[MERGE_DPO]:.2f})" if MERGE_DPO in ours
                                                      else "") +
           f" beats this {'source model' if kind == 'source' else 'hand recipe'}: this run did not reach its goal")
    return ShipDecision(name, kind, v, scores, what, False, why, made_from)


def _value(v: Any) -> str:
    return "/".join(f"{x:.4f}" for x in v) if isinstance(v, list) else f"{v:.4f}"


def stage_headlines(run: RunDir, stage: str) -> list[str]:
    """The figures a stage that just finished is judged by, for the pipeline's log (``report.md`` has them all):
    the search's best trial, the held-out verdicts, the exported trial, DPO's held-out effect, and after MT-Bench
    the chat verdicts and the model to ship."""
    summary = _load(run.summary) or {}
    winner = summary.get("best_number")
    if stage == "search" and winner is not None:
        return [f"this call: {summary.get('complete')} complete, {summary.get('pruned')} pruned, "
                f"{summary.get('failed')} failed; best trial #{winner}: {_value(summary['best_value'])} on the search "
                "split"]
    if stage == "heldout" and run.heldout_json.is_file():
        return [v.line.replace("**", "") for v in _heldout_verdicts(HeldoutReport.load(run.heldout_json), winner)]
    if stage == "export" and run.best_yaml.is_file():
        record = run.best_record()
        return [f"trial {record.number} -> {run.best_yaml} (weights_sha256 {str(record.weights_sha256)[:12]}...)"]
    if stage == "dpo" and run.dpo.metrics.is_file():
        return [_dpo_verdict(_load(run.dpo.metrics), {}, "").line]
    if stage == "mtbench":
        lines = [v.line.replace("**", "") for v in stage_verdicts(run, winner) if v.stage in ("chat", "dpo")]
        ship = ship_decision(run)
        return lines + ([f"model to ship: {ship.model} ({ship.measure} {ship.score:.2f})"] if ship else [])
    return []
