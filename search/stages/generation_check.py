"""Held-out generation before and after a training stage: the objective's generative tasks (lm-eval
``generate_until``, e.g. the demo's ``demo_<skill>_gen_test`` or ``mgsm_direct_de``) scored on the held-out
documents of two saved models.

The DPO stage's own metric (preference accuracy) can rise while the answers a model *generates* get worse; this
check measures the latter on data neither the search nor DPO trained on, so the stage can say so (a warning in
``metrics.json``) before the MT-Bench stage rates the final measure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from objectives.objective import Objective, cpu_threads
from search.config import RunConfig

__all__ = ["generation_scores", "generation_warning"]


def _generative_objective(cfg: RunConfig) -> Objective | None:
    """The run's objective reduced to its generative tasks that have held-out documents (None: there are none)."""
    plain = cfg.objective.model_copy(update={"chat": None, "secondary": None, "constraints": []})
    kinds = Objective(plain).task_kinds()
    tasks = [t for t in plain.tasks if kinds.get(t.name) == "generation" and t.has_heldout]
    if not tasks:
        return None
    return Objective(plain.model_copy(update={"tasks": tasks}))


def _score(objective: Objective, folder: Path, cfg: RunConfig) -> dict[str, Any]:
    import torch
    import transformers

    dtype = getattr(torch, cfg.space.out_dtype or cfg.space.dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(cfg.device).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    with cpu_threads(cfg.objective.threads, model.device), torch.inference_mode():
        res = objective.score(model, tok, split="test")
    tasks = {name: res.tasks[name] for name in res.tasks}
    return {"mean": sum(tasks.values()) / len(tasks), "tasks": tasks, "n": sum(res.n.values())}


def generation_scores(cfg: RunConfig, before: Path, after: Path, *, log=print) -> dict[str, Any] | None:
    """``{"before": {"mean", "tasks", "n"}, "after": {...}}``: the objective's generative tasks on their held-out
    documents for the saved models ``before`` and ``after`` (None when the objective has no generative task with
    held-out documents)."""
    objective = _generative_objective(cfg)
    if objective is None:
        return None
    out = {}
    for label, folder in (("before", before), ("after", after)):
        out[label] = _score(objective, Path(folder), cfg)
        log(f"held-out generation {label}: {out[label]['mean']:.3f} over {out[label]['n']} documents")
    return out


def generation_warning(scores: dict[str, Any] | None, what: str = "DPO") -> str | None:
    """One line when held-out generation fell (exact-match means are on 0..1)."""
    if not scores or scores["after"]["mean"] >= scores["before"]["mean"]:
        return None
    return (f"held-out generation fell after {what}: {scores['before']['mean']:.3f} -> {scores['after']['mean']:.3f} "
            f"(the objective's generative tasks on their held-out documents): the answers the model generates got "
            "worse although its training metric may have improved")
