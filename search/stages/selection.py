"""The sources' item matrix for ``objective.selection: informative`` (see :mod:`objectives.selection`).

Before the first trial of such a search, every source model (the base and each model of the space) is scored
once on the whole search subset of every task, with the same documents, metric and batch size the trials use.
The per-item values are kept in ``RUN/item_matrix.json`` (:attr:`search.rundir.RunDir.item_matrix`) and reused
when the search resumes, so a resumed search orders its items exactly as before. Cost: one full-fidelity
evaluation per source, paid once per run folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from objectives.progress import progress_bar

from objectives.errors import UserError
from objectives.objective import Objective, cpu_threads
from objectives.selection import ItemMatrix, ordered
from search.config import RunConfig
from search.rundir import RunDir
from search.stages.candidates import candidates

__all__ = ["item_matrix", "matrix_items"]


def matrix_items(matrix: ItemMatrix) -> int:
    """Items the sources were scored on to build ``matrix`` (what informative selection costs up front)."""
    return len(matrix.sources) * sum(len(rows) for rows in matrix.values.values())


def _load(path: Path, names: list[str], objective: Objective) -> ItemMatrix:
    matrix = ItemMatrix.load(path)
    if list(matrix.sources) != names:
        raise UserError(f"{path}: scored for sources {list(matrix.sources)}, not this config's {names}: delete "
                        "the file (it is scored again) or use another run folder")
    ordered(objective.subsets, matrix)  # covers every search subset, or one clear error here (not in a worker)
    return matrix


def _free() -> None:
    """Give the scored sources' memory back (the caller dropped its references first), so the next source and
    the workers find the GPU empty."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def item_matrix(cfg: RunConfig, run: RunDir, *, progress: bool = True) -> ItemMatrix | None:
    """The item matrix of ``cfg`` in ``run`` (scored now when the folder has none); ``None`` unless
    ``objective.selection`` is ``informative``."""
    if cfg.objective.selection != "informative":
        return None
    sources = [c for c in candidates(cfg, [], []) if c.kind == "source"]
    names = [c.name for c in sources]
    # random order: the same documents, scored in full; the chat objective has no items to order (and its judge
    # calls would be spent outside the search's budget)
    objective = Objective(cfg.objective.model_copy(update={"chat": None}))
    if run.item_matrix.is_file():
        return _load(run.item_matrix, names, objective)
    per_source = []
    for c in progress_bar(sources, desc="item matrix: scoring the sources", unit="model", disable=not progress):
        model, tok = c.load()
        with cpu_threads(cfg.objective.threads, model.device):
            per_source.append(objective.score(model, tok, split="search", rung=-1).values)
        del model, tok
        _free()
    values = {task: {i: tuple(float(v[task][i]) for v in per_source) for i in sorted(per_source[0][task])}
              for task in per_source[0]}
    matrix = ItemMatrix(tuple(names), values)
    tmp = run.item_matrix.with_name(f".{run.item_matrix.name}.{os.getpid()}")
    matrix.save(tmp)
    tmp.replace(run.item_matrix)
    return matrix
