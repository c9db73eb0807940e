"""Which search items a trial scores first, and what a partial rung says about the whole subset.

``objective.selection: random`` (the default) scores each task's search subset in a seeded random order, so
a rung's accuracy is an unbiased estimate of the subset's. ``informative`` orders the same subset by what the
*source models* did on it (:class:`ItemMatrix`, scored once before the search and kept in the run folder):

* items are grouped into strata by their source pattern (which sources got the item right);
* an item every source gets right (or every source gets wrong) tells little about which merge is better; a
  stratum's share of the early items grows with ``N_s * sqrt(p_s * (1 - p_s))`` (Neyman allocation; ``N_s``
  items, ``p_s = (sum + 0.5) / (S + 1)`` the sources' smoothed mean score on them), so strata where the sources
  disagree get most of the early items and strata where they all agree few, but never none;
* inside a stratum items keep their seeded random order, so every prefix (every rung) is a stratified sample.

:func:`estimate` turns a rung's per-item values into an estimate of the full-subset score with its standard
error (post-stratification: each stratum weighted by its size; a stratum not evaluated yet counts with the
sources' mean on it, the one assumption). The estimate is reported beside the raw rung score and may drive
the pruner (``objective.estimate``); a trial's final value is always the plain score on the whole subset.

The idea follows tinyBenchmarks (Polo et al., 2024: anchor items chosen by clustering the correctness patterns
of known models, full-benchmark accuracy estimated from them) and MERGE3 (Mencattini et al., ICML 2025: IRT
estimates as cheap fitness for evolutionary merging). With a handful of source models a per-item IRT fit is
under-determined (one response per source and item), so the source patterns are used directly as strata.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objectives.errors import UserError

__all__ = ["Estimate", "ItemMatrix", "estimate", "estimate_record", "informative_order", "ordered", "rung_estimates",
           "strata"]


@dataclass(frozen=True)
class ItemMatrix:
    """Per-item scores of the source models on the search subsets: ``values[task][doc id][i]`` is source
    ``sources[i]``'s metric value (0/1 for accuracy) on that document."""

    sources: tuple[str, ...]
    values: dict[str, dict[int, tuple[float, ...]]]

    def save(self, path: str | Path) -> None:
        data = {"sources": list(self.sources),
                "values": {t: {str(i): list(v) for i, v in rows.items()} for t, rows in self.values.items()}}
        Path(path).write_text(json.dumps(data) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ItemMatrix:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(tuple(data["sources"]),
                       {t: {int(i): tuple(float(x) for x in v) for i, v in rows.items()}
                        for t, rows in data["values"].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{path}: not a readable item matrix ({type(err).__name__}): delete it and it is "
                            "scored again") from None


def strata(rows: dict[int, tuple[float, ...]], ids: Sequence[int]) -> dict[tuple[float, ...], list[int]]:
    """``ids`` grouped by their source pattern, each group in the order of ``ids``."""
    out: dict[tuple[float, ...], list[int]] = {}
    for i in ids:
        out.setdefault(tuple(rows[i]), []).append(i)
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _spread(pattern: tuple[float, ...]) -> float:
    """sqrt(p (1 - p)) of the sources' smoothed mean (never 0: agreeing sources are not proof)."""
    p = min(1.0, max(0.0, (sum(pattern) + 0.5) / (len(pattern) + 1)))
    return math.sqrt(p * (1 - p))


def informative_order(rows: dict[int, tuple[float, ...]], ids: Sequence[int]) -> list[int]:
    """``ids`` (a seeded random order of one task's search subset) reordered so that every prefix is a
    Neyman-allocated stratified sample: the next item comes from the stratum with the largest
    ``N_s * sqrt(p_s (1 - p_s)) / (taken_s + 1)`` (D'Hondt), ties to the stratum seen first in ``ids``.
    Deterministic for given ``rows`` and ``ids``; O(n * strata)."""
    groups = strata(rows, ids)
    keys = list(groups)  # in order of first appearance in ids
    rank = {k: i for i, k in enumerate(keys)}
    weight = {k: len(groups[k]) * _spread(k) for k in keys}
    taken = dict.fromkeys(keys, 0)
    order: list[int] = []
    live = list(keys)
    while live:
        k = max(live, key=lambda s: (weight[s] / (taken[s] + 1), -rank[s]))
        order.append(groups[k][taken[k]])
        taken[k] += 1
        if taken[k] == len(groups[k]):
            live.remove(k)
    return order


@dataclass(frozen=True)
class Estimate:
    """An estimate of a task's score on its whole search subset from the items evaluated so far."""

    value: float
    stderr: float
    evaluated: int
    total: int


def estimate(rows: dict[int, tuple[float, ...]], subset: Sequence[int], values: dict[int, float]) -> Estimate:
    """Post-stratified estimate of the mean of ``values`` over ``subset`` from the evaluated items
    (``values``' keys). Each stratum (source pattern) counts with its share of ``subset``; its mean is the
    evaluated items' mean, or the sources' mean while none is evaluated. The standard error combines the
    strata's sampling variances with the finite-population correction (0 once all are evaluated)."""
    total, est, var = len(subset), 0.0, 0.0
    for pattern, ids in strata(rows, subset).items():
        seen = [values[i] for i in ids if i in values]
        share = len(ids) / total
        if seen:
            m = _mean(seen)
            smoothed = (sum(seen) + 0.5) / (len(seen) + 1)  # no zero variance from one lucky item
            s2 = smoothed * (1 - smoothed) if max(seen) <= 1 and min(seen) >= 0 else _sample_var(seen)
            var += share ** 2 * s2 / len(seen) * (1 - len(seen) / len(ids))
        else:
            m = _mean(pattern)
            var += share ** 2 * _spread(pattern) ** 2  # smoothed: an unseen stratum is never certain
        est += share * m
    return Estimate(value=est, stderr=math.sqrt(var), evaluated=sum(i in values for i in subset), total=total)


def _sample_var(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def ordered(subsets: dict, matrix: ItemMatrix) -> dict:
    """``subsets`` (``{task: Subset}``) with each search subset in :func:`informative_order`; a matrix that does
    not cover a task's search subset exactly is a :class:`UserError`."""
    out = {}
    for name, s in subsets.items():
        rows = matrix.values.get(name)
        if rows is None or set(rows) != set(s.search):
            raise UserError(f"the item matrix does not cover the search subset of task {name!r} (it was scored for "
                            "other tasks or subsets): delete RUN/item_matrix.json and it is scored again")
        out[name] = dataclasses.replace(s, search=informative_order(rows, s.search))
    return out


def rung_estimates(matrix: ItemMatrix, subsets: dict, values: dict[str, dict[int, float]]) -> dict[str, Estimate]:
    """:func:`estimate` of every task in ``values`` (``{task: {doc id: value}}`` of a search rung)."""
    return {name: estimate(matrix.values[name], subsets[name].search, vals) for name, vals in values.items()
            if name in subsets and name in matrix.values}


def estimate_record(estimates: dict[str, Estimate], combine: Callable[[dict[str, float]], float]) -> dict[str, Any]:
    """What a trial records of a rung's estimates: the combined fitness estimate (``combine`` = the objective's
    aggregation) with a standard error propagated per task by finite differences, and each task's estimate."""
    point = {t: e.value for t, e in estimates.items()}
    value = combine(point)
    h, var = 1e-4, 0.0
    for t, e in estimates.items():  # central differences: ties under `min` share the slope
        slope = (combine({**point, t: e.value + h}) - combine({**point, t: e.value - h})) / (2 * h)
        var += (slope * e.stderr) ** 2
    return {"value": value, "stderr": math.sqrt(var), "items": sum(e.evaluated for e in estimates.values()),
            "tasks": {t: dataclasses.asdict(e) for t, e in estimates.items()}}
