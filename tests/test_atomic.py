"""All-or-nothing writes (search.atomic): a folder swapped in whole, a kill between the renames undone, files
replaced in one rename."""

from __future__ import annotations

import os

import pytest

from search import atomic


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
