"""All-or-nothing writes (search.atomic): a folder swapped in whole, a kill between the renames undone, files
replaced in one rename."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from objectives.errors import UserError
from search import atomic
from search.rundir import TrialRecord
from tests.kill_writes import in_child


def _tree(root):
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_staged_folder_replaces_the_old_one_only_when_swapped_in(tmp_path):
    target = tmp_path / "dpo"
    target.mkdir()
    (target / "metrics.json").write_text("old")
    stage = atomic.staging(target)
    assert stage.parent == tmp_path and stage.name.startswith(".") and list(stage.iterdir()) == []
    (stage / "metrics.json").write_text("new")
    assert _tree(target) == {"metrics.json": "old"}  # untouched until the swap
    atomic.swap_in(stage, target)
    assert _tree(target) == {"metrics.json": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo"]  # no staging or old folder left


def test_a_failed_attempt_leaves_the_old_folder_and_the_next_attempt_starts_clean(tmp_path):
    target = tmp_path / "dpo"
    target.mkdir()
    (target / "model").write_text("old")
    stage = atomic.staging(target)
    (stage / "half").write_text("written before a crash")
    # the crash: no swap_in. The next attempt:
    stage = atomic.staging(target)
    assert list(stage.iterdir()) == []
    assert _tree(target) == {"model": "old"}


@pytest.mark.parametrize("kill_after", ["aside", "in"])
def test_a_kill_between_the_two_renames_is_undone(tmp_path, kill_after):
    target = tmp_path / "dpo"
    target.mkdir()
    (target / "f").write_text("old")
    stage = atomic.staging(target)
    (stage / "f").write_text("new")
    os.replace(target, atomic.old_name(target))  # swap_in's first rename
    if kill_after == "in":
        os.replace(stage, target)  # its second rename; killed before removing the old folder
    atomic.recover(target)
    assert _tree(target) == {"f": "old" if kill_after == "aside" else "new"}
    assert not atomic.old_name(target).exists()


def test_write_text_replaces_a_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("old")
    atomic.write_text(path, "new")
    atomic.write_json(tmp_path / "x.json", {"a": 1})
    assert path.read_text() == "new" and (tmp_path / "x.json").read_text() == '{\n "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.yaml", "x.json"]



def _state(run: Path) -> dict:
    """What a later run would accept: the export (or the refusal of a mixed pair), DPO's and MT-Bench's
    results, after the recovery the next attempt makes."""
    for target in (run / "dpo", run / "mtbench" / "merge", run / "mtbench" / "merge_dpo"):
        atomic.recover(target)
    try:
        export = TrialRecord.load_export(run / "best.yaml").recipe.split("# ")[1].strip()
    except UserError as err:
        export = "refused" if "not from one export" in str(err) else str(err)
    def tag(path: Path):
        return json.loads(path.read_text())["tag"] if path.is_file() else None
    return {"export": export, "dpo": tag(run / "dpo" / "metrics.json"),
            "dpo_complete": sorted(p.name for p in (run / "dpo").iterdir()) if (run / "dpo").is_dir() else None,
            "merge": tag(run / "mtbench" / "merge" / "scores.json"),
            "merge_dpo": tag(run / "mtbench" / "merge_dpo" / "scores.json")}


def test_a_sigkill_at_any_rename_leaves_old_or_new_results_never_a_mix(tmp_path):
    """SIGKILL before and after each rename of export, DPO and MT-Bench writes (20+ points): every result is
    the earlier complete one or the new complete one, a mixed export pair is refused, and the next attempt
    finishes with everything new."""
    ref = tmp_path / "ref"
    ref.mkdir()
    for _ in range(2):  # the second time over earlier results, as the attempts below
        code, renames = in_child(ref, "old")
        assert code == 0
    assert renames >= 8  # 16+ kill points
    complete = ["adapter", "base", "metrics.json", "model"]
    for k in range(1, renames + 1):
        for when in ("before", "after"):
            run = tmp_path / f"k{k}{when}"
            shutil.copytree(ref, run)
            assert in_child(run, "new", k, when)[0] == -signal.SIGKILL, (k, when)
            state = _state(run)
            assert state["export"] in ("old", "new", "refused"), (k, when, state)
            assert state["dpo"] in ("old", "new") and state["dpo_complete"] == complete, (k, when, state)
            assert state["merge"] in ("old", "new") and state["merge_dpo"] in ("old", "new"), (k, when, state)
            assert in_child(run, "new")[0] == 0
            assert _state(run) == {"export": "new", "dpo": "new", "dpo_complete": complete, "merge": "new",
                                   "merge_dpo": "new"}
            assert not [p.name for p in run.rglob(".*")]  # no staging, old or temporary file left
