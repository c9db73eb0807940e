"""Storage that fails under a run: a disk that fills up while the search writes (one line that says so, exit 2,
no traceback; the same command resumes once space is free: the run folder on a small tmpfs, filled after the
first finished trial), and a world on a read-only mount (a run reads its inputs and never writes them)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo_configs import write_config  # tests/demo_configs.py

pytestmark = pytest.mark.ray  # each search starts a private local Ray

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def mount(*args: str) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if res.returncode:
        pytest.skip(f"cannot mount here (root and mount rights needed): {res.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt))
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def read_only_world(world, tmp_path):
    """A copy of the demo world (its task files pointing into the copy), then bind-mounted read-only onto itself."""
    from demoworld.build import load_manifest

    copy = tmp_path / "ro-world"
    shutil.copytree(world.root, copy)
    load_manifest(copy)  # rewrites the copied task YAMLs' data paths, while it is still writable
    mount("--bind", str(copy), str(copy))
    try:
        mount("-o", "remount,bind,ro", str(copy))
        yield load_manifest(copy)
    finally:
        subprocess.run(["umount", "-l", str(copy)], check=False)


def finished(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # the schema is being created
        return 0


def fill(folder: Path) -> Path:
    """Write a file until the disk is full, down to the last page."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


def test_a_full_disk_stops_the_search_in_one_line_and_it_resumes(world, small_disk, tmp_path):
    cfg = write_config(world, tmp_path / "cfg.yaml", n_trials=6, max_retries=1)
    run = small_disk / "run"
    cmd = [str(BIN / "merge-search"), "search", str(cfg), "--out", str(run), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while finished(run / "study.db") == 0:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no trial finished within 300 s"
            time.sleep(0.2)
        filler = fill(small_disk)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("merge-search: error: a disk filled up while writing") and "run the same command" in last
    done = finished(run / "study.db")
    assert 1 <= done < 6

    filler.unlink()
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert finished(run / "study.db") == 6


def test_a_world_on_a_read_only_mount_is_searched_without_writing_to_it(read_only_world, tmp_path):
    with pytest.raises(OSError):  # the mount is really read-only, even for root
        (read_only_world.root / "probe").write_text("x")
    cfg = write_config(read_only_world, tmp_path / "cfg.yaml", n_trials=2)
    res = subprocess.run([str(BIN / "merge-search"), "search", str(cfg), "--out", str(tmp_path / "run"),
                          "--no-progress"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([str(BIN / "merge-search"), "demo-world", "build", "--out", str(read_only_world.root)],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and "world ready" in res.stdout, res.stderr[-2000:]  # a complete world: a no-op
