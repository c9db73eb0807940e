"""Shared fixtures: the demo world is built once per test session (and cached across sessions).

The world lives in ``results/demo-world`` (git-ignored; the same folder ``make demo`` uses) unless
``MERGE_SEARCH_TEST_WORLD`` names another folder. Building it takes about 2-3 minutes on 2 cores; a complete
world is reused as is.
"""

from __future__ import annotations

import os
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
