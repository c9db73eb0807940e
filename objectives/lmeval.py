"""Score a resident (in-memory) model on lm-eval tasks: no save and reload per candidate.

Two levels:

* :func:`evaluate_tasks` — one call, task names in, ``{task: {"score", "stderr", "n", "metric"}}`` out;
* :func:`run_tasks` + :func:`doc_values` — the building blocks :class:`objectives.objective.Objective` uses:
  already-loaded ``Task`` objects (datasets load once per run, not once per candidate) and per-document
  metric values (so a later rung of successive halving only evaluates the documents the earlier one did not).

lm-eval's ``samples={task: ids}`` labels the i-th selected document with ``ids[i]`` while iterating the
documents in dataset order, so ids are always passed sorted here.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "TaskScore",
    "doc_values",
    "evaluate_tasks",
    "make_lm",
    "mean_and_stderr",
    "run_tasks",
    "task_manager",
]

TaskScore = dict[str, Any]  # {"score": float, "stderr": float | None, "n": int, "metric": str}


def _quiet_lm_eval() -> None:
    for name in ("lm-eval", "lm_eval", "lm_eval.evaluator", "lm_eval.api.task"):
        logging.getLogger(name).setLevel(logging.ERROR)


def task_manager(include_paths: list[str | Path] | None = None, include_defaults: bool = True):
    """An lm-eval ``TaskManager`` over the built-in tasks (optional) and ``include_paths``."""
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    paths = [str(p) for p in include_paths or []]
    return TaskManager(include_path=paths or None, include_defaults=include_defaults)


@functools.cache
def _resident_lm_class() -> type:
    """lm-eval's ``HFLM`` whose request loops take ``progress`` from the instance (lm-eval's ``evaluate`` gives
    them no way to turn their bars off); built on first use, so importing this module stays cheap."""
    from lm_eval.models.huggingface import HFLM

    class ResidentHFLM(HFLM):
        progress = False

        def loglikelihood(self, requests, disable_tqdm: bool | None = None):
            return super().loglikelihood(requests, disable_tqdm=not self.progress if disable_tqdm is None
                                         else disable_tqdm)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool | None = None):
            return super().loglikelihood_rolling(requests, disable_tqdm=not self.progress if disable_tqdm is None
                                                 else disable_tqdm)

        def generate_until(self, requests, disable_tqdm: bool | None = None):
            return super().generate_until(requests, disable_tqdm=not self.progress if disable_tqdm is None
                                          else disable_tqdm)

    return ResidentHFLM


def make_lm(model, tokenizer, batch_size: int = 32, device: str | None = None, progress: bool | None = None):
    """lm-eval's ``HFLM`` wrapping the resident ``model`` (a ``PreTrainedModel`` already on its device).

    ``progress``: lm-eval's per-request progress bars (default: only when ``MERGE_SEARCH_VERBOSE`` is set,
    as ``merge-search --verbose`` does)."""
    _quiet_lm_eval()
    lm = _resident_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                              device=device or str(next(model.parameters()).device))
    lm.progress = bool(os.environ.get("MERGE_SEARCH_VERBOSE")) if progress is None else progress
    return lm


def run_tasks(lm, tasks: list, samples: dict[str, list[int]] | None, *, task_manager=None,
              apply_chat_template: bool = False, fewshot_as_multiturn: bool = False,
              bootstrap_iters: int = 0, log_samples: bool = True) -> dict:
    """lm-eval's evaluation of ``tasks`` (names or loaded ``Task`` objects) restricted to ``samples``.

    The same steps as ``lm_eval.simple_evaluate`` with its defaults (seeds: python 0, numpy/torch/few-shot 1234,
    reset on every call, so two calls on the same model and documents give the same numbers; ``num_fewshot``
    from the task, else 0), then ``lm_eval.evaluator.evaluate``. ``simple_evaluate`` itself also collects
    environment information on every call (``pip list``, ``git``, ... in subprocesses: about 0.2 s, a
    fifth of a demo trial); ``tests/objectives/test_objective.py`` checks both give identical results.
    Returns ``evaluate``'s dict (``results``, ``samples`` when ``log_samples``, ...).
    """
    import random

    import numpy as np
    from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import set_torch_seed

    _quiet_lm_eval()
    samples = {t: sorted(ids) for t, ids in samples.items()} if samples is not None else None
    random.seed(DEFAULT_RANDOM_SEED)
    np.random.seed(DEFAULT_OTHER_SEED)
    set_torch_seed(DEFAULT_OTHER_SEED)
    loaded = (task_manager or TaskManager()).load(list(tasks))
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    # lm-eval draws a progress bar per task while it builds requests, with no switch to turn it off: unless
    # asked for (``lm.progress``), what it writes to stderr during the call is dropped (errors still raise)
    quiet = contextlib.nullcontext() if getattr(lm, "progress", True) else contextlib.redirect_stderr(io.StringIO())
    with quiet:
        return evaluate(lm=lm, task_dict=loaded, samples=samples, bootstrap_iters=bootstrap_iters,
                        log_samples=log_samples, apply_chat_template=apply_chat_template,
                        fewshot_as_multiturn=fewshot_as_multiturn)


def doc_values(out: dict, task: str, metric: str) -> dict[int, float]:
    """``{doc id: value}`` of ``metric`` (``name,filter``) for ``task`` from a ``log_samples`` result."""
    name, _, filt = metric.partition(",")
    return {int(s["doc_id"]): float(s[name]) for s in out["samples"][task]
            if s["filter"] == filt and name in s}


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error (sample standard deviation / sqrt(n), as lm-eval's ``mean_stderr``)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


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
    include_defaults: bool = True,
) -> dict[str, TaskScore]:
    """Evaluate ``model`` (a ``PreTrainedModel`` already on its device) on ``tasks``.

    ``metric`` maps a task to its lm-eval metric key (default ``acc,none``); ``samples`` restricts a task to
    the given document ids (lm-eval's ``samples``). ``include_defaults=False`` skips indexing lm-eval's
    built-in tasks (about 5 s a call) when every task comes from ``include_path``.
    Returns ``{task: {"score", "stderr", "n", "metric"}}``.
    """
    lm = make_lm(model, tokenizer, batch_size=batch_size, device=device)
    tm = task_manager([include_path] if include_path else None, include_defaults=include_defaults)
    out = run_tasks(lm, tasks, samples, task_manager=tm, bootstrap_iters=100, log_samples=False)
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
