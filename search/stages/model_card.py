"""``RUN/model-card.md`` (written by the report stage): what a user publishing the merge needs (as LazyMergekit and ``mergekit-yaml`` write):
the recipe, the sources with their licences, the scores, the model to ship and how to reproduce it.

A source's licence is read from its model card's YAML front matter (``README.md``: ``license:``), locally or from
the Hugging Face cache; "unknown" where there is none (check it before publishing: a merge inherits every
source's terms).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from search import atomic
from search.merge.sources import is_local
from search.rundir import RunDir, TrialRecord

__all__ = ["licence", "write_model_card"]


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


def write_model_card(run: RunDir, cfg_name: str, record: TrialRecord, ship: dict | None,
                     chat_scores: dict[str, float] | None, measure: str = "MT-Bench average") -> Path:
    """Write ``RUN/model-card.md`` for the exported winner ``record``; ``ship`` is ``ship.json``'s content and
    ``chat_scores`` ``{model: chat average}`` of the final measure (either may be None before MT-Bench)."""
    recipe = yaml.safe_load(record.recipe) or {}
    models = [m.get("model") for m in recipe.get("models", []) if isinstance(m, dict)]
    base = recipe.get("base_model")
    sources = list(dict.fromkeys([m for m in [base, *models] if m]))
    lines = [f"# {cfg_name}: a merge of {len(sources)} models", "",
             f"Made with merge-search ({recipe.get('merge_method', '?')}, trial {record.number}, merge seed "
             f"{record.seed}).", "", "## Sources", "", "| model | licence |", "|---|---|"]
    lines += [f"| {m} | {licence(m)} |" for m in sources]
    lines += ["", "A merge is bound by the terms of every source: check each licence before publishing.", "",
              "## Recipe (stock mergekit)", "", "```yaml", record.recipe.rstrip(), "```", "",
              f"Reproduce: `{record.reproduce_command(run.best_yaml.name)}` (weights_sha256 {record.weights_sha256}).", ""]
    if record.scores:
        lines += ["## Search scores", "", "| task | score |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(record.scores.items()) if isinstance(v, (int, float))]
        lines.append("")
    if chat_scores:
        lines += [f"## Final measure: {measure}", "", "| model | average |",
                  "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in chat_scores.items()] + [""]
    if ship:
        lines += ["## Model to ship", "", f"**{ship.get('model')}**: {ship.get('reason', '')}", "",
                  "```json", json.dumps(ship, indent=1), "```", ""]
    atomic.write_text(run.model_card, "\n".join(lines))
    return run.model_card
