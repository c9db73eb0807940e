"""The models a run compares: its sources, hand recipes and recorded trials, each loadable on demand.

Shared by the held-out stage (:mod:`search.stages.heldout`) and the search's item matrix
(:mod:`search.stages.selection`); recipes and trials are re-merged by :func:`search.merge.remerge` with one
shared :class:`~search.merge.ResidentMerger`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.config import RunConfig
from search.merge import ResidentMerger, record_of, remerge
from search.rundir import TrialRecord

__all__ = ["Candidate", "candidates"]


@dataclass
class Candidate:
    """One model to evaluate: ``load()`` returns ``(model, tokenizer)`` resident on the run's device."""

    name: str
    kind: str  # source | recipe | trial
    trial: int | None
    load: Callable[[], tuple[Any, Any]]


def _source(path: str, dtype: str, device: str) -> Callable[[], tuple[Any, Any]]:
    """A source model with its own tokenizer (sources may differ in vocabulary and template)."""
    def load():
        import torch
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        tok = transformers.AutoTokenizer.from_pretrained(path)
        return model.to(device).eval(), tok
    return load


def _merged(merger_of: Callable[[], ResidentMerger], record: TrialRecord) -> Callable[[], tuple[Any, Any]]:
    def load():
        res = remerge(record, merger=merger_of())
        return res.model, res.tokenizer
    return load


def _recipe_name(recipe: Any, i: int) -> str:
    return f"recipe:{Path(recipe).stem}" if isinstance(recipe, str) else ("seed-recipe" if i == 0
                                                                          else f"recipe:{i}")


def candidates(cfg: RunConfig, recipes: list[str], trials: list[Any], study_name: str | None = None) -> list[Candidate]:
    """Sources, the config's hand recipes plus ``recipes``, and ``trials``, in that order (merges share one
    :class:`ResidentMerger`, built on first use)."""
    space, device = cfg.space, cfg.device
    dtype = space.out_dtype or space.dtype
    merger: list[ResidentMerger] = []

    def merger_of() -> ResidentMerger:
        if not merger:
            merger.append(ResidentMerger.from_space(space, device=device))
        return merger[0]

    out = [Candidate(Path(p).name if i else f"base:{Path(p).name}", "source", None,
                     _source(p, dtype, device))
           for i, p in enumerate(space.model_paths())]
    for i, r in enumerate(list(cfg.recipes or []) + list(recipes)):
        record = record_of(r, seed=cfg.seed, label=_recipe_name(r, i))
        out.append(Candidate(_recipe_name(r, i), "recipe", None, _merged(merger_of, record)))
    for t in trials:
        out.append(Candidate(f"trial:{t.number}", "trial", t.number,
                             _merged(merger_of, TrialRecord.from_trial(t, study_name))))
    return out
