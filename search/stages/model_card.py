"""Model cards, as LazyMergekit and ``mergekit-yaml`` write them for a published merge: Hugging Face front matter
(licence, ``base_model`` = the sources, tags, language) and what a reader needs to trust the scores — the recipe,
the sources with their licences, how the search was run (sampler, trials, objective), the held-out scores with
their standard errors beside the best source, the DPO settings and what they did, and the final measure with the
judge and judge prompt set it was rated with.

Two cards, each written by the stage that owns its folder:

- ``RUN/model-card.md`` (report stage): the exported merge. Its weights are made by ``mergekit-yaml best.yaml
  OUT``; copy the card to ``OUT/README.md`` before uploading.
- ``RUN/dpo/model/README.md`` (DPO stage): the merge after DPO, beside its weights; the final measure is in
  ``RUN/report.md`` (the MT-Bench stage runs later).

A source's licence is read from its model card's YAML front matter (``README.md``: ``license:``), locally or from
the Hugging Face cache; "unknown" where there is none (check it before publishing: a merge inherits every
source's terms).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from search import atomic
from search.merge.sources import is_local
from search.rundir import RunDir, TrialRecord
from search.stages.verdict import winner_scores

__all__ = ["card_header", "dpo_lines", "licence", "sources_of", "write_dpo_card", "write_model_card"]


def licence(model: str) -> str:
    """The ``license`` of a model's card front matter, or ``unknown``."""
    card = Path(model).expanduser() / "README.md" if is_local(model) else _cached_card(model)
    try:
        text = card.read_text(encoding="utf-8") if card and card.is_file() else ""
    except OSError:
        text = ""
    if text.startswith("---"):
        try:
            meta = yaml.safe_load(text.split("---", 2)[1]) or {}
        except yaml.YAMLError:
            meta = {}
        value = meta.get("license") if isinstance(meta, dict) else None
        if value:
            return str(value)
    return "unknown"


def _cached_card(model: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "README.md")
    except Exception:  # noqa: BLE001 -- not a repo id, or no cache
        return None
    return Path(found) if isinstance(found, str) else None


def sources_of(record: TrialRecord) -> list[str]:
    """The recipe's base model and merged models, each once, base first."""
    recipe = yaml.safe_load(record.recipe) or {}
    models = [m.get("model") for m in recipe.get("models", []) if isinstance(m, dict)]
    return list(dict.fromkeys(m for m in [recipe.get("base_model"), *models] if m))


def card_header(title: str, record: TrialRecord, recipe_file: str, *, language: str | None,
                tags: tuple[str, ...] = ()) -> list[str]:
    """Front matter, title, the sources with their licences and the recipe (the part every card shares);
    ``recipe_file``: the exported recipe's file name in the reproduce command.

    ``license`` is the sources' one licence when they agree, else ``other`` (the table names each)."""
    sources = sources_of(record)
    licences = {m: licence(m) for m in sources}
    common = set(licences.values())
    method = (yaml.safe_load(record.recipe) or {}).get("merge_method", "?")
    meta = {"license": common.pop() if len(common) == 1 and "unknown" not in common else "other",
            "base_model": sources, "library_name": "transformers",
            "tags": ["merge", "mergekit", "merge-search", method, *tags]}
    if language:
        meta["language"] = [language]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {title}", "",
             f"Made with merge-search ({method}, trial {record.number}, merge seed {record.seed}).", "",
             "## Sources", "", "| model | licence |", "|---|---|"]
    lines += [f"| {m} | {lic} |" for m, lic in licences.items()]
    lines += ["", "A merge is bound by the terms of every source: check each licence before publishing.", "",
              "## Recipe (stock mergekit)", "", "```yaml", record.recipe.rstrip(), "```", "",
              f"Reproduce: `{record.reproduce_command(recipe_file)}` (weights_sha256 {record.weights_sha256}).", ""]
    return lines


def _search_lines(cfg, study) -> list[str]:
    """How the winner was found: sampler, pruner, trials by state, the objective's tasks and aggregate."""
    if cfg is None:
        return []
    s, o = cfg.search, cfg.objective
    lines = ["## How it was searched", "", f"- sampler `{s.sampler}`, pruner `{s.pruner}`, {s.workers} worker(s), "
             f"seed {cfg.seed}"]
    if study is not None:
        states = Counter(t.state.name.lower() for t in study.trials)
        lines.append("- trials: " + ", ".join(f"{v} {k}" for k, v in states.items()))
    tasks = ", ".join(f"`{t.name}` ({t.metric}, weight {t.weight:g})" for t in o.tasks)
    lines.append(f"- fitness: `{o.aggregate}` of {tasks}")
    if o.chat is not None:
        lines.append(f"- chat objective: weight {o.chat.weight:g}, questions `{o.chat.questions}`, judge "
                     f"`{o.chat.judge.backend}`")
    return lines + [""]


def _heldout_lines(heldout, record: TrialRecord) -> list[str]:
    """The winner's held-out (test split) scores with standard errors, beside the best source's."""
    if heldout is None:
        return []
    _, winner = winner_scores(heldout, record.number) or (None, None)
    sources = {n: m for n, m in heldout.models.items() if m.kind == "source" and m.test_avg is not None}
    if winner is None or winner.test_avg is None or not sources:
        return []
    top = max(sources, key=lambda n: sources[n].test_avg)
    best = sources[top]

    def cell(m, task: str) -> str:
        v, e = m.test.get(task), m.stderr_test.get(task)
        return "-" if v is None else f"{v:.3f}" + ("" if e is None else f" ± {e:.3f}")

    lines = ["## Held-out scores (test split, never searched on)", "",
             f"| task | this merge | best source ({top}) |", "|---|---:|---:|"]
    lines += [f"| {task} | {cell(winner, task)} | {cell(best, task)} |" for task in winner.test]
    lines += [f"| **average** | **{winner.test_avg:.3f}** | {best.test_avg:.3f} |", "",
              "± is the standard error over the task's documents.", ""]
    return lines


def dpo_lines(dpo_cfg, metrics: Mapping[str, Any] | None) -> list[str]:
    """The DPO settings and what they did on the held-out pairs (and to held-out generation)."""
    if metrics is None or dpo_cfg is None:
        return []
    t, lora = dpo_cfg.train, dpo_cfg.lora
    weights = list(t.loss_weights) if t.loss_weights else [1.0] * len(t.loss_type)
    steps = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epochs"
    lines = ["## DPO", "", f"- data `{dpo_cfg.data.train}`; loss {list(t.loss_type)} weights {weights}, beta {t.beta:g}, "
             f"learning rate {t.learning_rate:g}, {steps}, LoRA r {lora.r} / alpha {lora.alpha} on "
             f"{list(lora.target_modules)}, kept checkpoint: {t.best_checkpoint}"]
    b, a = metrics.get("heldout_before"), metrics.get("heldout_after")
    if b and a:
        lines.append(f"- held-out pairs (n={a['n']}): preference accuracy {b['pref_accuracy']:.3f} -> "
                     f"{a['pref_accuracy']:.3f}, margin {b['reward_margin']:.2f} -> {a['reward_margin']:.2f}")
    gen = metrics.get("generation")
    if gen:
        lines.append(f"- held-out generation (the objective's generative tasks): {gen['before']['mean']:.3f} -> "
                     f"{gen['after']['mean']:.3f}")
    lines += [f"- **Warning:** {w}" for w in metrics.get("warnings", [])]
    return lines + [""]


def _final_lines(chat_scores: Mapping[str, float] | None, measure: str, measured_with: Mapping | None) -> list[str]:
    if not chat_scores:
        return []
    lines = [f"## Final measure: {measure}", "", "| model | average |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in chat_scores.items()] + [""]
    if measured_with:
        lines += [f"Rated with judge {measured_with.get('judge')}, judge prompts {measured_with.get('prompts')}, "
                  f"{measured_with.get('questions')}: scores of another judge or prompt set are not comparable.", ""]
    return lines


def write_model_card(run: RunDir, cfg_name: str, record: TrialRecord, ship: dict | None,
                     chat_scores: dict[str, float] | None, measure: str = "MT-Bench average", *, cfg=None,
                     study=None, heldout=None, dpo_metrics: Mapping | None = None,
                     measured_with: Mapping | None = None) -> Path:
    """Write ``RUN/model-card.md`` for the exported winner ``record``; ``ship`` is ``ship.json``'s content,
    ``chat_scores`` ``{model: chat average}`` of the final measure, ``cfg`` the run's config, ``study`` its study,
    ``heldout`` its :class:`~search.stages.heldout_report.HeldoutReport`, ``dpo_metrics`` ``dpo/metrics.json`` and
    ``measured_with`` the merge's ``scores.json`` entry of that name; each may be None (a run not that far)."""
    language = cfg.mtbench.language if cfg is not None else None
    lines = card_header(f"{cfg_name}: a merge of {len(sources_of(record))} models", record, run.best_yaml.name,
                        language=language)
    lines += ["Build the weights with the command above, then copy this card to `OUT/README.md` before uploading.", ""]
    lines += _search_lines(cfg, study)
    if record.scores:
        lines += ["## Search scores", "", "| task | score |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(record.scores.items()) if isinstance(v, (int, float))]
        lines.append("")
    lines += _heldout_lines(heldout, record)
    lines += dpo_lines(cfg.dpo if cfg is not None else None, dpo_metrics)
    lines += _final_lines(chat_scores, measure, measured_with)
    if ship:
        lines += ["## Model to ship", "", f"**{ship.get('model')}**: {ship.get('reason', '')}", "",
                  "```json", json.dumps(ship, indent=1), "```", ""]
    atomic.write_text(run.model_card, "\n".join(lines))
    return run.model_card


def write_dpo_card(path: Path, run_name: str, record: TrialRecord, recipe_file: str, *, language: str | None,
                   dpo_cfg, metrics: Mapping[str, Any]) -> Path:
    """``dpo/model/README.md``: the Hugging Face card beside the DPO model's weights (sources, recipe, DPO settings
    and what they did); the final measure is rated later, in the run's report."""
    lines = card_header(f"{run_name}: a merge of {len(sources_of(record))} models, after DPO", record, recipe_file,
                        language=language, tags=("dpo",))
    lines += dpo_lines(dpo_cfg, metrics)
    lines += ["The MT-Bench stage rates this model after this card is written: see the run's report.md "
              "(`merge+dpo`) and ship.json for the model to ship.", ""]
    atomic.write_text(path, "\n".join(lines))
    return path
