"""``RUN/report.md`` with PNG plots: readable without the dashboard.

Reads only what the stages wrote (the study storage, ``heldout.json``, ``best.json``, ``dpo/metrics.json``,
``dpo/loss.png``, ``mtbench/``) and renders:

* the search history with pruned trials at the fidelity they stopped at, parameter importances (Optuna's
  matplotlib visualization) and one panel per searched parameter (:mod:`search.stages.plots`);
* search-split vs test-split score of every evaluated model (scatter);
* the DPO loss curve and held-out preference accuracy before/after;
* the MT-Bench category bars and comparison table;

and, first, the model to ship and one verdict line per stage (:mod:`search.stages.verdict`), also written as
``RUN/ship.json``. A section whose inputs are missing says so instead of failing: the report is also useful mid-run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna

from objectives.mtbench.run import SCORES_FILE
from search import atomic
from search.rundir import RunDir, TrialRecord
from search.stages.base import StageContext
from search.stages.heldout_report import HeldoutReport
from search.stages.plots import history_figure, parameter_figure
from search.stages.verdict import ShipDecision, chat_scores, ship_decision, stage_verdicts
from search.stages.model_card import write_model_card

__all__ = ["NAME", "SECTIONS", "headline", "problems", "run", "write_report"]

NAME = "report"
SECTIONS: tuple[str, ...] = ()


def problems(cfg, run: RunDir) -> list[str]:
    """Nothing of its own: it reads what the other stages wrote."""
    return []


def run(cfg, run: RunDir, ctx: StageContext) -> Path:
    """``RUN/report.md`` and ``RUN/plots/`` (:func:`write_report`) with the run's study."""
    from search.driver.study import load_study

    return write_report(run.root, load_study(run.root), cfg)


def _load(path: Path) -> Any | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _save(fig_or_ax, path: Path) -> str:
    """Save a figure, or the figure of an Axes (Optuna's plots return Axes), as ``path``; returns its name."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig = fig_or_ax if isinstance(fig_or_ax, Figure) else fig_or_ax.figure
    if not isinstance(fig_or_ax, Figure):  # Optuna's plots come at its own small size
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _study_plots(study, plots: Path) -> list[str]:
    """Search history (every finished trial), importances, per-parameter values (each skipped if not computable)."""
    import warnings

    import optuna.visualization.matplotlib as vis

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return ["_No completed trials yet._"]
    target = None if len(study.directions) == 1 else (lambda t: t.values[0])
    jobs = [("optimization_history", "Optimization history", lambda: history_figure(study))]
    if len(done) >= 2:
        jobs.append(("param_importances", "Parameter importances",
                     lambda: vis.plot_param_importances(study, target=target)))
        jobs.append(("parameters", "Searched parameters vs objective", lambda: parameter_figure(study)))
    lines: list[str] = []
    for stem, title, make in jobs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make()
            lines += [f"### {title}", "", f"![{title}](plots/{_save(fig, plots / f'{stem}.png')})", ""]
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances of a constant space
            lines += [f"### {title}", "", f"_Not available: {err}_", ""]
    return lines


def _best(run: RunDir) -> TrialRecord | None:
    return run.best_record() if run.best_yaml.is_file() else None


def _heldout(run: RunDir) -> HeldoutReport | None:
    return HeldoutReport.load(run.heldout_json) if run.heldout_json.is_file() else None


def _heldout_section(heldout: HeldoutReport, plots: Path) -> list[str]:
    import matplotlib.pyplot as plt

    models = heldout.models
    rows = sorted(models.items(), key=lambda kv: -(kv[1].test_avg or 0))
    lines = ["| model | kind | search avg | test avg |", "|---|---|---:|---:|"]
    for name, m in rows:
        lines.append(f"| {name} | {m.kind} | {m.search_avg:.3f} | {m.test_avg:.3f} |")
    fig, ax = plt.subplots()
    colors = {"source": "tab:gray", "recipe": "tab:orange", "trial": "tab:blue"}
    for kind, color in colors.items():
        points = [(m.search_avg, m.test_avg) for m in models.values() if m.kind == kind]
        if points:
            ax.scatter(*zip(*points), color=color, label={"recipe": "hand recipes"}.get(kind, kind + "s"))
    ax.legend(fontsize=8, loc="upper left")
    lo = min(min(m.search_avg, m.test_avg) for m in models.values()) - 0.02
    hi = max(max(m.search_avg, m.test_avg) for m in models.values()) + 0.02
    ax.plot([lo, hi], [lo, hi], ls=":", color="gray")
    ax.set(xlim=(lo, hi), ylim=(lo, hi))  # fixed before the labels are placed in pixels
    _label_points(ax, {name: (m.search_avg, m.test_avg) for name, m in models.items()})
    ax.set_xlabel("search split (weighted average)")
    ax.set_ylabel("test split (weighted average)")
    ax.set_title("Search vs held-out score")
    lines += ["", f"![search vs test](plots/{_save(fig, plots / 'search_vs_test.png')})", ""]
    return lines


def _label_points(ax, points: dict[str, tuple[float, float]], size: int = 7) -> None:
    """Name every point, each label at the first of four spots (right above, right below, left above, left
    below) that overlaps no label placed before it (estimated boxes in pixels), top points first."""
    to_px, em = ax.transData.transform, size * ax.figure.dpi / 72  # a font size in points, in pixels
    placed: list[tuple[float, float, float, float]] = []
    for name, xy in sorted(points.items(), key=lambda kv: -kv[1][1]):
        x, y = to_px(xy)
        w, h = 0.62 * em * len(name), 1.3 * em
        spots = [(4, 3), (4, -3 - h), (-4 - w, 3), (-4 - w, -3 - h)]
        dx, dy = next(((dx, dy) for dx, dy in spots if not any(
            x + dx < bx + bw and bx < x + dx + w and y + dy < by + bh and by < y + dy + h
            for bx, by, bw, bh in placed)), spots[0])
        placed.append((x + dx, y + dy, w, h))
        ax.annotate(name, xy, fontsize=size, textcoords="offset pixels", xytext=(dx, dy))


def _dpo_section(run: RunDir, plots: Path) -> list[str]:
    metrics = _load(run.dpo.metrics)
    if metrics is None:
        return ["_DPO has not run yet._"]
    b, a = metrics["heldout_before"], metrics["heldout_after"]
    lines = _stage_line(run, "dpo") + [
        "| held-out pairs | preference accuracy | mean log-likelihood margin | chosen answers' log-likelihood "
        "(nats/token) |", "|---|---:|---:|---:|"]
    for label, m in (("before DPO", b), ("after DPO", a)):
        per_token = m.get("chosen_logp_per_token")
        lines.append(f"| {label} (n={m['n']}) | {m['pref_accuracy']:.3f} | {m['reward_margin']:.2f} | "
                     f"{'-' if per_token is None else f'{per_token:.3f}'} |")
    verdict = "above" if a["pref_accuracy"] > b["pref_accuracy"] else "NOT above"
    lines += ["", f"Held-out preference accuracy after DPO is **{verdict}** before DPO "
                  f"({a['pref_accuracy']:.3f} vs {b['pref_accuracy']:.3f})."]
    lines += [f"- **Warning:** {w}" for w in metrics.get("warnings", [])]
    train = metrics.get("train", {})
    if train.get("best_step") is not None:
        lines.append(f"- Kept checkpoint: step {train['best_step']} of {train.get('steps')} "
                     f"(dpo.train.best_checkpoint {train.get('best_checkpoint')}).")
    loss = run.dpo.loss_png
    if loss.is_file():
        shutil.copyfile(loss, plots / "dpo_loss.png")
        lines += ["", "![DPO loss](plots/dpo_loss.png)"]
    return lines + [""]


def _stage_line(run: RunDir, stage: str) -> list[str]:
    """A stage section's first line when the stage made things worse (its verdict), else nothing."""
    best = _best(run)
    worse = [v for v in stage_verdicts(run, best.number if best else None) if v.stage == stage and v.worse]
    return [f"**{worse[0].line.replace('**', '')}**", ""] if worse else []


def _mtbench_section(run: RunDir, plots: Path) -> list[str]:
    table = run.comparison_md
    if not table.is_file():
        return ["_MT-Bench has not run yet._"]
    lines = _stage_line(run, "chat") + [table.read_text(encoding="utf-8").strip(), ""] + _measured_with(run)
    chart = run.comparison_png
    if chart.is_file():
        shutil.copyfile(chart, plots / "mtbench_categories.png")
        lines += ["![MT-Bench categories](plots/mtbench_categories.png)", ""]
    return lines


def _merge_measured_with(run: RunDir) -> dict | None:
    """The judge, judge prompt set and question set the merge was rated with (its ``scores.json``), if rated."""
    scores = _load(run.mtbench_model("merge") / SCORES_FILE)
    used = scores.get("measured_with") if isinstance(scores, dict) else None
    return used if isinstance(used, dict) else None


def _measured_with(run: RunDir) -> list[str]:
    used = _merge_measured_with(run)
    if used is None:
        return []
    return [f"Rated with judge {used.get('judge')}, judge prompts {used.get('prompts')}, {used.get('questions')}.",
            ""]


def headline(run: str | Path) -> str:
    """The few lines ``make demo`` prints: winner vs experts vs hand recipe on the test split, DPO, MT-Bench."""
    run = RunDir(Path(run))
    heldout, best = _heldout(run), _best(run)
    out = []
    if heldout:
        models = heldout.models
        width = max(len(n) for n in models) + 2
        out.append(f"{'model':<{width}}{'kind':<8}{'search':>8}{'test':>8}")
        for name, m in sorted(models.items(), key=lambda kv: -kv[1].test_avg):
            out.append(f"{name:<{width}}{m.kind:<8}{m.search_avg:>8.3f}{m.test_avg:>8.3f}")
    if best:
        out.append(f"winner: trial {best.number} (seed {best.seed}, "
                   f"weights_sha256 {str(best.weights_sha256)[:12]}...)")
    out += [v.line.replace("**", "") for v in stage_verdicts(run, best.number if best else None)]
    ship = ship_decision(run)
    if ship:
        out.append(_ship_line(ship).replace("**", ""))
    return "\n".join(out)


def _ship_line(ship: ShipDecision) -> str:
    kind = "" if ship.kind == ship.model else f", a {'source model' if ship.kind == 'source' else 'hand recipe'}"
    return f"Model to ship: **{ship.model}**{kind} ({ship.measure} {ship.score:.2f}): {ship.reason}."


def _verdict_section(run: RunDir, winner: int | None) -> list[str]:
    """The model to ship, then one line per stage (a stage that made things worse says WORSE first)."""
    ship = ship_decision(run)
    lines = [_ship_line(ship) if ship else "_Model to ship: not decided until the MT-Bench stage has rated the "
             "merge (the final measure)._", ""]
    if ship:
        atomic.write_json(run.ship_json, ship.to_json())
    else:
        run.ship_json.unlink(missing_ok=True)  # an earlier decision no longer holds
    lines += [f"- {v.line}" for v in stage_verdicts(run, winner)]
    return lines + [""]


def write_report(run: str | Path, study=None, cfg=None) -> Path:
    """Write ``RUN/report.md``, ``RUN/plots/*.png`` and ``RUN/model-card.md`` (``cfg``, the run's config, adds
    the search and DPO settings to the card); returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    run = RunDir(Path(run))
    plots = run.plots
    plots.mkdir(parents=True, exist_ok=True)
    lines = [f"# merge-search report: {run.root.name}", ""]
    heldout, best = _heldout(run), _best(run)
    lines += ["## Verdict", ""] + _verdict_section(run, best.number if best else None)
    if best:
        ship = ship_decision(run)
        chat = chat_scores(run)
        write_model_card(run, run.root.name, best, ship.to_json() if ship else None, chat.scores, chat.measure,
                         cfg=cfg, study=study, heldout=heldout, dpo_metrics=_load(run.dpo.metrics),
                         measured_with=_merge_measured_with(run))
        lines += [f"Model card for publishing the merge: [{run.model_card.name}]({run.model_card.name}).", ""]
    lines += ["## Search", ""]
    if study is not None:
        lines += _study_section(study, plots)
    if best:
        shown = {k: v for k, v in asdict(best).items() if k not in ("recipe", "label")}
        lines += [f"### Exported winner (`{run.best_yaml.name}`)", "", "```json", json.dumps(shown, indent=1)[:3000],
                  "```", "", f"Reproduce with stock mergekit: `{best.reproduce_command(run.best_yaml.name)}` "
                  "(hash-equal weights).", ""]
    lines += ["## Held-out evaluation", ""]
    lines += _heldout_section(heldout, plots) if heldout else ["_Not run yet._", ""]
    lines += ["## DPO", ""] + _dpo_section(run, plots)
    lines += ["## MT-Bench", ""] + _mtbench_section(run, plots)
    atomic.write_text(run.report, "\n".join(lines) + "\n")
    return run.report


def _study_section(study, plots: Path) -> list[str]:
    counts = {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    return [", ".join(f"{k.lower()}: {v}" for k, v in counts.items() if v) or "no trials", ""] + \
        _study_plots(study, plots)
