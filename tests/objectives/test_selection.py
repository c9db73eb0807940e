"""Informative item order and post-stratified estimates (objectives.selection)."""

from __future__ import annotations

import math
import random

import pytest

from objectives.errors import UserError
from objectives.selection import Estimate, ItemMatrix, estimate, estimate_record, informative_order, strata


def _rows(n: int, seed: int = 0) -> dict[int, tuple[float, ...]]:
    """Four sources: the 'expert' (source 1) right on 90 %, the others at chance (1/3)."""
    rng = random.Random(seed)
    return {i: (float(rng.random() < 1 / 3), float(rng.random() < 0.9), float(rng.random() < 1 / 3),
                float(rng.random() < 1 / 3)) for i in range(n)}


def _weight(pattern: tuple[float, ...], size: int) -> float:
    p = (sum(pattern) + 0.5) / (len(pattern) + 1)
    return size * math.sqrt(p * (1 - p))


def test_order_is_a_deterministic_permutation_keeping_the_seeded_order_inside_strata():
    rows = _rows(200)
    ids = random.Random(1).sample(range(200), 200)
    order = informative_order(rows, ids)
    assert order == informative_order(rows, list(ids)) and sorted(order) == sorted(ids)
    for pattern, members in strata(rows, ids).items():
        assert [i for i in order if rows[i] == pattern] == members


@pytest.mark.parametrize("k", [12, 60, 150])
def test_every_prefix_is_a_neyman_allocated_stratified_sample(k):
    rows = _rows(300)
    ids = list(range(300))
    order = informative_order(rows, ids)
    groups = strata(rows, ids)
    weights = {p: _weight(p, len(m)) for p, m in groups.items()}
    total = sum(weights.values())
    for pattern, members in groups.items():
        quota = k * weights[pattern] / total
        got = sum(rows[i] == pattern for i in order[:k])
        assert math.floor(quota) - 1 <= got <= min(len(members), math.ceil(quota) + 1), (pattern, quota, got)
    agreed = [i for i in ids if len(set(rows[i])) == 1]  # agreeing sources: fewer early items, but some
    assert sum(i in agreed for i in order[:60]) / 60 < len(agreed) / 300


def test_one_source_or_all_agreeing_still_gives_a_mixed_prefix():
    rows = {i: (float(i % 4 == 0),) for i in range(100)}  # one source: 25 right, 75 wrong
    first = informative_order(rows, list(range(100)))[:20]
    assert 0 < sum(rows[i][0] for i in first) < 20


def _noisy_truth(rows, seed: int) -> dict[int, float]:
    """A 'merge' that is right with a probability depending on the pattern (noise inside every stratum)."""
    rng = random.Random(seed)
    return {i: float(rng.random() < 0.15 + 0.7 * sum(r) / len(r)) for i, r in rows.items()}


def test_estimate_is_exact_on_the_whole_subset_and_covers_the_truth_on_prefixes():
    rows = _rows(400, seed=3)
    ids = list(range(400))
    order = informative_order(rows, ids)
    inside = 0
    for seed in range(20):
        truth = _noisy_truth(rows, seed)
        full = estimate(rows, ids, truth)
        assert full.value == pytest.approx(sum(truth.values()) / 400) and full.stderr == 0
        part = estimate(rows, ids, {i: truth[i] for i in order[:80]})
        assert part.evaluated == 80 and part.total == 400 and part.stderr > 0
        inside += abs(part.value - full.value) <= 2 * part.stderr
    assert inside >= 16  # a 2-stderr interval holds the whole-subset value in most runs


def test_record_propagates_errors_through_the_aggregation():
    ests = {"a": Estimate(0.5, 0.1, 10, 100), "b": Estimate(0.5, 0.2, 10, 100)}
    mean = estimate_record(ests, lambda v: (v["a"] + v["b"]) / 2)
    assert mean["value"] == pytest.approx(0.5) and mean["stderr"] == pytest.approx(math.sqrt(0.01 + 0.04) / 2)
    tied = estimate_record(ests, lambda v: min(v.values()))  # a tie under `min` keeps an error
    assert tied["stderr"] > 0 and mean["items"] == 20 and set(mean["tasks"]) == {"a", "b"}


def test_matrix_round_trips_and_a_damaged_file_is_one_clear_error(tmp_path):
    m = ItemMatrix(("base", "zahlen"), {"demo_zahlen_search": {3: (1.0, 0.0), 7: (0.0, 1.0)}})
    m.save(tmp_path / "m.json")
    assert ItemMatrix.load(tmp_path / "m.json") == m
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="delete it"):
        ItemMatrix.load(tmp_path / "bad.json")
