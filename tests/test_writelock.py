"""One writer per output folder (search.writelock): a second process is refused naming the holder; a killed
holder leaves a stale file that the next writer takes over; nested holds in one process share the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from objectives.errors import UserError
from search.writelock import held_problems, holder, lock_file, writer_lock

HOLD = textwrap.dedent("""
    import sys, time
    from search.writelock import writer_lock
    with writer_lock(sys.argv[1], command="holder-cmd"):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def other_writer(tmp_path):
    """A second Python process holding the lock of ``tmp_path / "run"`` until killed."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(other_writer):
    folder, proc = other_writer
    info = holder(folder)
    assert info["pid"] == proc.pid and info["command"] == "holder-cmd"
    [line] = held_problems(folder)
    assert f"process {proc.pid}" in line and "holder-cmd" in line and "\n" not in line
    t0 = time.time()
    with pytest.raises(UserError, match=f"being written by process {proc.pid}"):
        with writer_lock(folder):
            pytest.fail("the lock was taken twice")
    assert time.time() - t0 < 5  # refused at once, never waits


def test_a_killed_writer_leaves_a_stale_lock_that_the_next_writer_takes(other_writer):
    folder, proc = other_writer
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock_file(folder).is_file()  # the file stays behind ...
    assert holder(folder) is None and held_problems(folder) == []  # ... but nobody holds it
    with writer_lock(folder, command="next") as path:
        assert path == lock_file(folder)
        assert holder(folder) is None  # this process's own hold is no conflict


def test_nested_holds_in_one_process_share_the_lock_and_release_it(tmp_path):
    folder = tmp_path / "run"
    with writer_lock(folder):
        with writer_lock(folder):  # a pipeline stage calling a library writer
            pass
        probe = subprocess.run([sys.executable, "-c", "import sys; from search.writelock import holder; "
                                "print(holder(sys.argv[1]) is not None)", str(folder)],
                               capture_output=True, text=True, check=True)
        assert probe.stdout.strip() == "True"  # still held after the inner block ended
    assert not folder.exists()  # the lock sits beside the folder and creates nothing in it
    probe = subprocess.run([sys.executable, "-c", "import sys; from search.writelock import holder; "
                            "print(holder(sys.argv[1]) is None)", str(folder)], capture_output=True, text=True,
                           check=True)
    assert probe.stdout.strip() == "True"
