"""How the scores of a rung become the fitness: per-task scores (and the chat objective's) aggregated, and the
constraints on them. :mod:`objectives.objective` re-exports these names."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from objectives.config import CHAT, Constraint, ObjectiveConfig, ScoreSpec

if TYPE_CHECKING:
    from objectives.objective import RungResult

__all__ = ["aggregate", "bounded_value", "constraint_values", "violations"]


def aggregate(spec: ScoreSpec, scores: dict[str, float]) -> float:
    """The fitness of per-task ``scores`` under ``spec.aggregate`` (weights from ``spec.tasks``). With
    ``objective.chat`` and a :data:`~objectives.config.CHAT` score among ``scores`` the chat score is one more
    part, of weight ``chat.weight`` (a split without it, e.g. held-out without ``test_questions``: tasks only)."""
    chat = getattr(spec, "chat", None)
    parts = [(t.name, t.weight) for t in spec.tasks] + ([(CHAT, chat.weight)] if chat and CHAT in scores else [])
    if spec.aggregate == "min":
        return min(scores[name] for name, _ in parts)
    ref = spec.reference if spec.aggregate == "expert_relative" else None
    return sum(w * scores[name] / (ref[name] if ref else 1.0) for name, w in parts) / sum(w for _, w in parts)


def bounded_value(config: ObjectiveConfig, c: Constraint, primary: float, secondary: float | None,
                  scores: dict[str, float]) -> float | None:
    """The score constraint ``c`` bounds: the primary, the secondary objective's or one task's (or the chat
    score, :data:`~objectives.config.CHAT`); None: not evaluated."""
    sec_name = config.secondary.name if config.secondary else None
    return primary if c.objective == "primary" else secondary if c.objective == sec_name else scores.get(c.objective)


def constraint_values(config: ObjectiveConfig, res: RungResult) -> dict[str, float]:
    """Optuna constraint values (``<= 0`` is feasible) of ``config.constraints`` for ``res``, keyed
    ``"<index>:<objective>"``: how far the score lies outside ``[min, max]`` (negative: inside, by that much).
    Constraints on a score not evaluated at this rung are left out."""
    out = {}
    for i, c in enumerate(config.constraints):
        v = bounded_value(config, c, res.score, res.secondary, res.tasks)
        if v is not None:
            out[f"{i}:{c.objective}"] = max(c.min - v if c.min is not None else -math.inf,
                                            v - c.max if c.max is not None else -math.inf)
    return out


def violations(config: ObjectiveConfig, primary: float, secondary: float | None, scores: dict[str, float]) -> list[str]:
    """The constraints of ``config`` the scores break, as text (``"<objective> = <v> < min <m>"``)."""
    out = []
    for c in config.constraints:
        v = bounded_value(config, c, primary, secondary, scores)
        if v is None:
            continue
        if c.min is not None and v < c.min:
            out.append(f"{c.objective} = {v:.4f} < min {c.min}")
        if c.max is not None and v > c.max:
            out.append(f"{c.objective} = {v:.4f} > max {c.max}")
    return out
