"""From a recorded candidate back to weights: :func:`remerge` (the one re-merge with its hash check) and
:func:`save_merge` (a merged model as a folder stock tools read).

Every stage that needs a scored candidate's weights calls :func:`remerge` with the candidate's
:class:`~search.rundir.TrialRecord`: held-out evaluation (in memory, one merger for many trials), the DPO
stage and ``merge-search dpo --recipe`` (saved to a folder), ``merge-search mtbench run --model RECIPE``,
``merge-search export --verify`` and ``merge-search merge``. The record's recipe is parsed and validated once,
into the :class:`~search.merge.recipe_value.Recipe` it carries on to the merger (:func:`record_of`,
:func:`with_recipe`). A saved folder holds the model, the tokenizer, ``mergekit_config.yml`` (the recipe) and
``merge.json`` (seed, device, threads, versions, recipe, hash).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from objectives.errors import UserError
from search.merge.engine import MergeResult, ResidentMerger
from search.merge.hashing import hash_model_dir
from search.merge.recipe import recipe_yaml
from search.merge.recipe_value import Recipe
from search.rundir import TrialRecord

__all__ = ["merge_to_dir", "record_of", "remerge", "save_merge", "versions", "with_recipe"]

RECIPE_FILE = "mergekit_config.yml"  # the name stock mergekit gives the recipe in its output folder
SIDECAR_FILE = "merge.json"


def versions() -> dict[str, str]:
    """Installed versions of the packages that determine merged weights and scores (for sidecar files)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("merge-search", "mergekit", "torch", "transformers", "optuna", "lm-eval"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def record_of(recipe, *, seed: int = 0, device: str = "cpu", threads: int | None = None,
              weights_sha256: str | None = None, label: str | None = None) -> TrialRecord:
    """A :class:`TrialRecord` for a recipe given by hand (a :class:`Recipe`, or what :meth:`Recipe.of` takes:
    path, dict or ``MergeConfiguration``), carrying that recipe (``label``: default the recipe's)."""
    recipe = Recipe.of(recipe)
    return TrialRecord(recipe=recipe.text, seed=seed, merge_device=device, merge_threads=threads,
                       weights_sha256=weights_sha256, label=label or recipe.label, parsed=recipe)


def with_recipe(record: TrialRecord) -> TrialRecord:
    """``record`` carrying its :class:`Recipe` (``record.parsed``): parsed and validated now, unless it already
    carries one."""
    if record.parsed is not None:
        return record
    return replace(record, parsed=Recipe.from_text(record.recipe, record.label or "recipe"))


def remerge(record: TrialRecord, *, out: str | Path | None = None,
            merger: ResidentMerger | None = None) -> MergeResult:
    """Re-create the weights of ``record`` (recipe, seed, merge device and threads) and check their hash.

    ``merger``: a :class:`ResidentMerger` that holds the recipe's models (the held-out stage re-merges several
    trials with one); default: one built for the recipe on ``record.merge_device``. ``out``: also save the
    model there (:func:`save_merge`). A re-merge whose ``weights_sha256`` differs from the recorded one is a
    :class:`UserError`, raised after saving, so the differing model can be inspected. The recipe is the one
    ``record`` carries (:func:`with_recipe`), parsed and validated at most once here.
    """
    recipe = with_recipe(record).parsed
    merger = merger or ResidentMerger.from_recipe(recipe, device=record.merge_device)
    check = record.weights_sha256 is not None
    res = merger.merge(recipe, record.seed, compute_hash=check or out is not None, threads=record.merge_threads)
    if out is not None:
        save_merge(res, out)
    if check and res.weights_sha256 != record.weights_sha256:
        raise UserError(f"{record.label or 'recipe'}: re-merged (seed {record.seed}, {res.device}) to weights_sha256 "
                        f"{res.weights_sha256}, but the recorded weights_sha256 is {record.weights_sha256}: use the "
                        f"trial's seed, merge device and merge_threads ({res.threads} now), and unchanged source "
                        "models")
    return res


def save_merge(res: MergeResult, out: str | Path) -> dict[str, Any]:
    """Save a merge to ``out`` (safetensors, config, tokenizer, recipe, ``merge.json``); returns the sidecar.

    The saved safetensors are hashed again and must equal the in-memory ``weights_sha256``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res.model.save_pretrained(out, safe_serialization=True)
    res.tokenizer.save_pretrained(out)
    text = recipe_yaml(res.merge_config)
    (out / RECIPE_FILE).write_text(text, encoding="utf-8")
    saved = hash_model_dir(out)
    if res.weights_sha256 is not None and saved != res.weights_sha256:
        raise RuntimeError(f"saved weights hash {saved} differs from the in-memory merge {res.weights_sha256}")
    meta = {"seed": res.seed, "device": res.device, "merge_threads": res.threads, "versions": versions(),
            "recipe": text, "weights_sha256": saved, "merge_seconds": round(res.seconds, 3)}
    (out / SIDECAR_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def merge_to_dir(recipe, out: str | Path, seed: int = 0, device: str = "cpu",
                 threads: int | None = None, expect_sha256: str | None = None) -> dict[str, Any]:
    """Merge a recipe (a :class:`Recipe`, a path, a dict, ...) in memory and save it to ``out``
    (``merge-search merge``): :func:`remerge` of a :func:`record_of` the recipe. ``expect_sha256``: the
    recorded hash a re-merge must reproduce. Returns the ``merge.json`` sidecar."""
    record = record_of(recipe, seed=seed, device=device, threads=threads, weights_sha256=expect_sha256)
    remerge(record, out=out)
    return json.loads((Path(out) / SIDECAR_FILE).read_text(encoding="utf-8"))
