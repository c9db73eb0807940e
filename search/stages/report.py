"""``RUN/report.md`` with PNG plots: readable without the dashboard.

Reads only what the stages wrote (the study storage, ``heldout.json``, ``best.json``, ``dpo/metrics.json``,
``dpo/loss.png``, ``mtbench/``) and renders:

* the search history with pruned trials at the fidelity they stopped at, parameter importances (Optuna's
  matplotlib visualization) and one panel per searched parameter (:mod:`search.stages.plots`);
* search-split vs test-split score of every evaluated model (scatter);
* the DPO loss curve and held-out preference accuracy before/after;
* the MT-Bench category bars and comparison table.

A section whose inputs are missing says so instead of failing: the report is also useful mid-run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna

from objectives.mtbench.run import SCORES_FILE
from search.rundir import RunDir, TrialRecord
from search.stages.base import StageContext
from search.stages.heldout_report import HeldoutReport
from search.stages.plots import history_figure, parameter_figure

__all__ = ["NAME", "SECTIONS", "headline", "problems", "run", "write_report"]

NAME = "report"
SECTIONS: tuple[str, ...] = ()


def problems(cfg, run: RunDir) -> list[str]:
    """Nothing of its own: it reads what the other stages wrote."""
    return []


def run(cfg, run: RunDir, ctx: StageContext) -> Path:
    """``RUN/report.md`` and ``RUN/plots/`` (:func:`write_report`) with the run's study."""
    from search.driver.study import load_study

    return write_report(run.root, load_study(run.root))


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
    lines = ["| held-out pairs | preference accuracy | mean log-likelihood margin |", "|---|---:|---:|",
             f"| before DPO (n={b['n']}) | {b['pref_accuracy']:.3f} | {b['reward_margin']:.2f} |",
             f"| after DPO (n={a['n']}) | {a['pref_accuracy']:.3f} | {a['reward_margin']:.2f} |", ""]
    verdict = "above" if a["pref_accuracy"] > b["pref_accuracy"] else "NOT above"
    lines.append(f"Held-out preference accuracy after DPO is **{verdict}** before DPO "
                 f"({a['pref_accuracy']:.3f} vs {b['pref_accuracy']:.3f}).")
    loss = run.dpo.loss_png
    if loss.is_file():
        shutil.copyfile(loss, plots / "dpo_loss.png")
        lines += ["", "![DPO loss](plots/dpo_loss.png)"]
    return lines + [""]


def _mtbench_scores(run: RunDir) -> dict[str, dict]:
    """``{model folder name: scores.json}`` of every model the MT-Bench stage rated (it has an average)."""
    found = {p.parent.name: _load(p) or {} for p in sorted(run.mtbench.glob(f"*/{SCORES_FILE}"))}
    return {n: s for n, s in found.items() if isinstance(s.get("average"), (int, float))}


def _mtbench_verdict(run: RunDir) -> list[str]:
    """Plain statements: is the merge above every source on MT-Bench, and what did DPO do to it?"""
    scores = _mtbench_scores(run)
    avg = {n: float(s["average"]) for n, s in scores.items()}
    merge, dpo = run.mtbench_model("merge").name, run.mtbench_model("merge+dpo").name
    if merge not in avg:
        return []
    lines, sources = [], {n: v for n, v in avg.items() if n not in (merge, dpo)}
    standin = "label" in scores[merge]
    what = "MT-Bench average (offline stand-in judge, NOT an MT-Bench score)" if standin else "MT-Bench average"
    if sources:
        top, v = max(sources.items(), key=lambda kv: kv[1])
        lines.append(f"- {what}: the merge ({avg[merge]:.2f}) is **{'above' if avg[merge] > v else 'NOT above'}"
                     f"** every source model (best: {top} {v:.2f}).")
    if dpo in avg:
        change = "raises" if avg[dpo] > avg[merge] else "does not raise"
        lines.append(f"- DPO **{change}** the {what}: merge {avg[merge]:.2f} -> merge+dpo {avg[dpo]:.2f}.")
    return lines + [""]


def _mtbench_section(run: RunDir, plots: Path) -> list[str]:
    table = run.comparison_md
    if not table.is_file():
        return ["_MT-Bench has not run yet._"]
    lines = _mtbench_verdict(run) + [table.read_text(encoding="utf-8").strip(), ""]
    chart = run.comparison_png
    if chart.is_file():
        shutil.copyfile(chart, plots / "mtbench_categories.png")
        lines += ["![MT-Bench categories](plots/mtbench_categories.png)", ""]
    return lines


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
    metrics = _load(run.dpo.metrics)
    if metrics:
        out.append(f"DPO held-out preference accuracy: {metrics['heldout_before']['pref_accuracy']:.3f} -> "
                   f"{metrics['heldout_after']['pref_accuracy']:.3f}")
    out += [line[2:].replace("**", "") for line in _mtbench_verdict(run) if line]
    return "\n".join(out)


def _verdicts(heldout: HeldoutReport, winner: int | None) -> list[str]:
    """Plain statements: is the exported winner above every source model and every hand recipe (test)?"""
    models = heldout.models
    found = [(n, m) for n, m in models.items() if m.kind == "trial" and m.trial == winner]
    if not found:
        return ["_The exported winner was not among the re-evaluated trials._", ""]
    name, best = found[0]
    lines = [(f"Winner (the exported best trial): **{name}**, search average {best.search_avg:.3f}, "
              f"test average {best.test_avg:.3f}.")]
    for kind, label in (("source", "every source model"), ("recipe", "every hand recipe")):
        others = {n: m.test_avg for n, m in models.items() if m.kind == kind}
        if others:
            top_name, top = max(others.items(), key=lambda kv: kv[1])
            verdict = "above" if best.test_avg > top else "NOT above"
            lines.append(f"- On the test split the winner is **{verdict}** {label} "
                         f"(best: {top_name} {top:.3f}).")
    return lines + [""]


def write_report(run: str | Path, study=None) -> Path:
    """Write ``RUN/report.md`` and ``RUN/plots/*.png``; returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    run = RunDir(Path(run))
    plots = run.plots
    plots.mkdir(parents=True, exist_ok=True)
    lines = [f"# merge-search report: {run.root.name}", ""]
    heldout, best = _heldout(run), _best(run)
    if heldout:
        lines += ["## Verdict", ""] + _verdicts(heldout, best.number if best else None)
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
    run.report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run.report


def _study_section(study, plots: Path) -> list[str]:
    counts = {s.name: sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    return [", ".join(f"{k.lower()}: {v}" for k, v in counts.items() if v) or "no trials", ""] + \
        _study_plots(study, plots)
