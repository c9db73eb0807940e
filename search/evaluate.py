"""``merge-search evaluate``: search-subset and held-out scores of sources, hand recipes and top trials.

Every model is scored by the run's :class:`~objectives.objective.Objective` twice: on the search subsets
(all stages' documents) and on the held-out documents. Recipes and trials are re-merged in memory with
:class:`~search.merge.ResidentMerger` (a trial from its recorded ``recipe`` and ``seed`` user attributes, and
its weights checked against the recorded ``weights_sha256``). Writes ``heldout.json``::

    {"models": {name: {"kind": "trial" | "source" | "recipe", "trial": number or null,
                       "search": {task: score}, "test": {task: score}, "search_avg": x, "test_avg": x,
                       "stderr": {task: x}, "stderr_test": {task: x}, "n": {task: n}, "n_test": {task: n}}},
     "subsets": Objective.record()}

and ``heldout.md`` (model x task table) to ``--out`` (default: the ``--run`` folder, else results/<name>).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objectives.errors import UserError

__all__ = ["Candidate", "evaluate_candidates", "format_table", "register", "run_evaluate", "top_trials"]


@dataclass
class Candidate:
    """One model to evaluate: ``load()`` returns ``(model, tokenizer)`` resident on the run's device."""

    name: str
    kind: str  # source | recipe | trial
    trial: int | None
    load: Callable[[], tuple[Any, Any]]


def _source(path: str, tokenizer: str | None, dtype: str, device: str) -> Callable[[], tuple[Any, Any]]:
    def load():
        import torch
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        tok = transformers.AutoTokenizer.from_pretrained(tokenizer or path)
        return model.to(device).eval(), tok
    return load


def _merged(merger_of: Callable[[], Any], recipe: Any, seed: int, expect_sha: str | None = None,
            label: str = "", threads: int | None = None) -> Callable[[], tuple[Any, Any]]:
    def load():
        res = merger_of().merge(recipe, seed, compute_hash=expect_sha is not None, threads=threads)
        if expect_sha is not None and res.weights_sha256 != expect_sha:
            raise UserError(f"{label}: re-merged weights_sha256 {res.weights_sha256[:12]}... differs from the "
                            f"recorded {expect_sha[:12]}...: evaluate on the device the search used "
                            f"(device: {res.device} now) with the same models")
        return res.model, res.tokenizer
    return load


def top_trials(run: str, k: int) -> list[Any]:
    """The ``k`` best COMPLETE trials of the study in run folder or storage URL ``run``: feasible first, then by
    the primary objective (:func:`search.study.ranked_trials`)."""
    from search.search_cli import load_study
    from search.study import ranked_trials

    study, _ = load_study(run)
    done = ranked_trials(study)
    missing = [t.number for t in done[:k] if "recipe" not in t.user_attrs or "seed" not in t.user_attrs]
    if missing:
        raise UserError(f"trials {missing} of {run} have no recorded `recipe`/`seed` user attributes: they "
                        "cannot be re-merged")
    return done[:k]


def evaluate_candidates(objective, candidates: list[Candidate], *, log=print) -> dict[str, Any]:
    """Score every candidate on the search subsets and the held-out documents (``heldout.json`` dict)."""
    from objectives.lmeval import make_lm
    from objectives.objective import aggregate

    cfg = objective.config
    models = {}
    for c in candidates:
        log(f"evaluating {c.kind} {c.name} ...")
        model, tok = c.load()
        lm = make_lm(model, tok, batch_size=cfg.batch_size)
        search = objective.score(model, tok, split="search", stage=-1, lm=lm)
        test = objective.score(model, tok, split="test", lm=lm) if objective.has_heldout else None
        test_tasks = test.tasks if test else {}
        test_avg = aggregate(cfg, test_tasks) if all(t.name in test_tasks for t in cfg.tasks) else None
        models[c.name] = {
            "kind": c.kind, "trial": c.trial,
            "search": search.tasks, "test": test_tasks,
            "search_avg": search.score, "test_avg": test_avg,
            "stderr": search.stderr, "stderr_test": test.stderr if test else {},
            "n": search.n, "n_test": test.n if test else {},
        }
        if cfg.secondary:  # averaged over the secondary objective's tasks, weighted as in the objective
            models[c.name].update(secondary_avg=search.secondary,
                                  secondary_test_avg=test.secondary if test else None)
        log(f"  search {search.score:.4f}" + (f"  held-out {test_avg:.4f}" if test_avg is not None else "")
            + (f"  ({cfg.secondary.name}: search {_fmt(search.secondary)})" if cfg.secondary else ""))
    return {"models": models, "subsets": objective.record()}


def _fmt(x: float | None, err: float | None = None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4f}" + (f" ± {err:.4f}" if err is not None else "")


def format_table(report: dict[str, Any]) -> str:
    """Markdown: one row per model and task (search vs held-out score with stderr), then the averages."""
    lines = ["| model | kind | task | search | held-out |", "|---|---|---|---|---|"]
    for name, m in report["models"].items():
        for task, score in m["search"].items():
            lines.append(f"| {name} | {m['kind']} | {task} | {_fmt(score, m['stderr'].get(task))} | "
                         f"{_fmt(m['test'].get(task), m['stderr_test'].get(task))} |")
        lines.append(f"| {name} | {m['kind']} | **average** | **{_fmt(m['search_avg'])}** | "
                     f"**{_fmt(m['test_avg'])}** |")
        if "secondary_avg" in m:
            lines.append(f"| {name} | {m['kind']} | **secondary average** | **{_fmt(m['secondary_avg'])}** | "
                         f"**{_fmt(m['secondary_test_avg'])}** |")
    return "\n".join(lines) + "\n"


def _recipe_name(recipe: Any, i: int) -> str:
    return f"recipe:{Path(recipe).stem}" if isinstance(recipe, str) else ("seed-recipe" if i == 0
                                                                          else f"recipe:{i}")


def run_evaluate(config_path: str, out: str | None = None, recipes: list[str] | None = None,
                 run: str | None = None, top_k: int = 0, log=print) -> Path:
    """The ``evaluate`` command as a function; returns the output folder."""
    import yaml

    from objectives.objective import Objective
    from search.config import ensure_world, load_run_config
    from search.merge import ResidentMerger

    if top_k and not run:
        raise UserError("--top-k needs --run RUN (the run folder of `merge-search search`)")
    if run and top_k < 1:
        raise UserError(f"--top-k must be >= 1 with --run, but got {top_k}")
    missing = [r for r in recipes or [] if not Path(r).is_file()]
    if missing:
        raise UserError(f"--recipe: file(s) {missing} do not exist: pass mergekit YAML recipe paths")
    cfg = load_run_config(config_path)
    ensure_world(cfg, quiet=True)
    objective = Objective(cfg.objective)
    trials = top_trials(run, top_k) if run else []
    space, device = cfg.space, cfg.device
    dtype = space.out_dtype or space.dtype
    merger: list[Any] = []

    def merger_of():
        if not merger:
            merger.append(ResidentMerger.from_space(space, device=device))
        return merger[0]

    cands = [Candidate(Path(p).name if i else f"base:{Path(p).name}", "source", None,
                       _source(p, space.tokenizer_source, dtype, device))
             for i, p in enumerate(space.model_paths())]
    for i, r in enumerate(list(cfg.recipes or []) + list(recipes or [])):
        cands.append(Candidate(_recipe_name(r, i), "recipe", None, _merged(merger_of, r, cfg.seed)))
    for t in trials:
        cands.append(Candidate(f"trial:{t.number}", "trial", t.number,
                               _merged(merger_of, yaml.safe_load(t.user_attrs["recipe"])
                                       if isinstance(t.user_attrs["recipe"], str) else t.user_attrs["recipe"],
                                       int(t.user_attrs["seed"]), t.user_attrs.get("weights_sha256"),
                                       f"trial {t.number}", t.user_attrs.get("merge_threads"))))
    report = evaluate_candidates(objective, cands, log=log)
    folder = Path(out or run or Path("results") / cfg.name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "heldout.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (folder / "heldout.md").write_text(format_table(report), encoding="utf-8")
    log(f"wrote {folder / 'heldout.json'} and {folder / 'heldout.md'}")
    return folder


def _cmd(args: argparse.Namespace) -> int:
    run_evaluate(args.config, out=args.out, recipes=args.recipe, run=args.run, top_k=args.top_k)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score sources, hand recipes and top trials on the search subsets and the held-out documents",
        description="Evaluate every source model, the config's hand recipes (default: the seed recipe), "
                    "recipes given with --recipe and the top K trials of a run (re-merged from their recorded "
                    "recipe and seed, hash-checked) on the search subsets and the held-out documents. "
                    "Writes heldout.json and heldout.md to --out (default: the --run folder, else "
                    "results/<name>).",
    )
    p.add_argument("config", help="run config YAML (configs/demo.yaml, configs/german-7b.yaml, ...)")
    p.add_argument("--out", help="output folder (default: the --run folder, else results/<name>)")
    p.add_argument("--recipe", action="append", default=[], metavar="FILE.yaml",
                   help="an extra mergekit recipe to evaluate (repeatable)")
    p.add_argument("--run", help="run folder (or storage URL) of `merge-search search` for --top-k")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="evaluate the K best trials of --run")
    p.set_defaults(func=_cmd)
