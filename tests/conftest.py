"""Shared fixtures: the demo world is built once per test session (and cached across sessions).

The world lives in ``results/demo-world`` (git-ignored; the same folder ``make demo`` uses) unless
``MERGE_SEARCH_TEST_WORLD`` names another folder. Building it takes about 2-3 minutes on 2 cores; a complete
world is reused as is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def world():
    from demoworld.build import build_world

    path = Path(os.environ.get("MERGE_SEARCH_TEST_WORLD", REPO / "results" / "demo-world"))
    return build_world(path, seed=0, quiet=True)


@pytest.fixture(scope="session")
def ray_local():
    """One private local Ray for every in-process driver of the session (2 CPUs).

    Started once and never re-initialised: after ``ray.shutdown()`` a second ``ray.init()`` in the same
    process (Ray 2.60) gets its actors destroyed by the new cluster's GCS ("all references to the actor were
    removed"), so tests that need another cluster talk to it from a subprocess (the CLI) instead.
    """
    import ray

    from search.driver import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def fasteval_dir() -> Path:
    path = SHARED / "fasteval-mtbench"
    if not path.is_dir():
        pytest.skip("FastEval MT-Bench data not found at ../shared/fasteval-mtbench (beside the project root)")
    return path


@pytest.fixture
def kill_when():
    """``kill_when(cmd, ready, *, env, what, timeout, group=False)``: SIGKILL a command at a chosen moment.

    Starts ``cmd`` in the repository root in a session of its own, polls ``ready()`` every 0.5 s and SIGKILLs
    the process (its whole process group with ``group``) once it returns true. Fails the test if the command
    ends first or ``ready()`` stays false for ``timeout`` seconds; whatever is left is killed in any case.
    """
    def run(cmd: list[str], ready, *, env: dict, what: str, timeout: float, group: bool = False) -> None:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.time() + timeout
            while not ready():
                assert proc.poll() is None, f"the command ended before this held: {what}"
                if time.time() > deadline:
                    pytest.fail(f"not within {timeout} s: {what}")
                time.sleep(0.5)
            (os.killpg if group else os.kill)(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)

    return run
