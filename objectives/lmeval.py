"""Score a resident (in-memory) model on lm-eval tasks: no save and reload per candidate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["evaluate_tasks", "TaskScore"]

TaskScore = dict[str, Any]  # {"score": float, "stderr": float | None, "n": int, "metric": str}


def _quiet_lm_eval() -> None:
    for name in ("lm-eval", "lm_eval", "lm_eval.evaluator", "lm_eval.api.task"):
        logging.getLogger(name).setLevel(logging.ERROR)


def evaluate_tasks(
    model,
    tokenizer,
    tasks: list[str],
    *,
    include_path: str | Path | None = None,
    metric: dict[str, str] | None = None,
    batch_size: int = 32,
    samples: dict[str, list[int]] | None = None,
    device: str | None = None,
) -> dict[str, TaskScore]:
    """Evaluate ``model`` (a ``PreTrainedModel`` already on its device) on ``tasks``.

    ``metric`` maps a task to its lm-eval metric key (default ``acc,none``); ``samples`` restricts a task to
    the given document ids (lm-eval's ``samples``). Returns ``{task: {"score", "stderr", "n", "metric"}}``.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              device=device or str(next(model.parameters()).device))
    tm = TaskManager(include_path=str(include_path) if include_path else None, verbosity="ERROR")
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, samples=samples,
                                  log_samples=False, bootstrap_iters=0, verbosity="ERROR")
    results = {}
    for task in tasks:
        key = (metric or {}).get(task, "acc,none")
        res = out["results"][task]
        name, _, filt = key.partition(",")
        stderr = res.get(f"{name}_stderr,{filt}")
        results[task] = {
            "score": float(res[key]),
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            "n": int(out["n-samples"][task]["effective"]),
            "metric": key,
        }
    return results
