"""The run folder writes of export, DPO and MT-Bench, SIGKILLed at the K-th rename (``os.replace`` /
``os.rename``: where every write of search.atomic commits). :func:`in_child` runs them in a forked child
process, so a kill point costs milliseconds (used by tests/test_atomic.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from search import atomic
from search.rundir import DPOOutputs, RunDir, TrialRecord


def write_all(run: RunDir, tag: str) -> None:
    """What the export, DPO and MT-Bench stages write, in their order, through the same functions."""
    record = TrialRecord(recipe=f"merge_method: dare_ties  # {tag}\n", seed=1, number=0)
    atomic.write_text(run.best_yaml, record.recipe)  # export: best.yaml, then best.json naming its hash
    atomic.write_json(run.best_yaml.with_suffix(".json"),
                      record.sidecar("best.yaml", {}, recipe_text=record.recipe))

    def dpo_work(out: DPOOutputs) -> dict:
        for folder in (out.base, out.adapter, out.model):
            folder.mkdir(parents=True)
            (folder / "weights.safetensors").write_text(tag * 100)
        atomic.write_json(out.metrics, {"tag": tag})
        return {"tag": tag}

    atomic.build(run.dpo.root, lambda stage: dpo_work(DPOOutputs(stage)))
    for model in ("merge", "merge_dpo"):  # MT-Bench: one staged folder per model
        def answer(stage: Path) -> None:
            (stage / "answers.jsonl").write_text(tag)
            atomic.write_json(stage / "scores.json", {"tag": tag})

        atomic.build(run.mtbench_model(model), answer, keep=("cache",))


def in_child(run: Path, tag: str, kill_at: int = 0, when: str = "before") -> tuple[int, int]:
    """:func:`write_all` in a forked child, SIGKILLed before/after its ``kill_at``-th rename (0: never);
    returns ``(the child's wait status signal or exit code, renames made)``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        calls = [0]

        def counting(real):
            def rename(src, dst, *args, **kwargs):
                calls[0] += 1
                if calls[0] == kill_at and when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
                real(src, dst, *args, **kwargs)
                if calls[0] == kill_at and when == "after":
                    os.kill(os.getpid(), signal.SIGKILL)
            return rename

        os.replace, os.rename = counting(os.replace), counting(os.rename)
        try:
            write_all(RunDir(run), tag)
            os.write(write, str(calls[0]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        renames = f.read()
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, int(renames or 0)
