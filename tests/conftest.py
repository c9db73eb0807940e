"""Shared fixtures: the demo world is built once per test session (and cached across sessions).

The world lives in ``results/demo-world`` (git-ignored; the same folder ``make demo`` uses) unless
``MERGE_SEARCH_TEST_WORLD`` names another folder. Building it takes about 2-3 minutes on 2 cores; a complete
world is reused as is.

Two tiers (markers in pyproject.toml): every test that uses a fixture of ``TIER`` below (a world, a Ray
cluster, a service) is marked ``slow`` plus the fixture's own marker (``world``, ``ray``, ``service``) at
collection; ``make test-fast`` runs ``-m "not slow"`` (no world build, no Ray, no services, under 3 minutes),
``make test`` runs everything. Tests never install system packages: ``.ci/run`` installs PostgreSQL and
Chromium first, and without them their tests skip with a one-line reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# No test reaches the Hugging Face Hub: set before any test imports huggingface_hub/datasets (which read these at
# import), so a missing dataset fails at once instead of after ~23 s of HTTP retries per dataset.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# fixture -> the tier marker a test using it gets (plus ``slow``); module-local fixtures count by their name
TIER = {"world": "world", "seedlike_world": "world", "ray_local": "ray", "cluster": "ray", "job_server": "ray",
        "postgres": "service"}


# the longest module of each world (pipeline runs of several minutes): first in its world's queue
LONGEST = ("test_seedlike_pipeline.py", "test_pipeline.py")


def pytest_collection_modifyitems(config, items):
    """Mark every test using a ``TIER`` fixture (or marked ``world``/``ray``/``service`` by hand) ``slow``, and
    put the longest modules first.

    ``make test`` runs two pytest-xdist workers that take whole modules in collection order (``--dist loadscope
    --no-loadscope-reorder``): the modules of the seed-like world and of the demo world go first, alternating,
    so that the two world builds run side by side on the two workers, each with its longest module (the two
    pipeline runs, ``LONGEST``) right after it; the short modules fill in at the end. Every worker collects the
    same order (the sort is deterministic), as xdist requires.
    """
    for item in items:
        kinds = {TIER[name] for name in item.fixturenames if name in TIER}
        for kind in sorted(kinds):
            item.add_marker(kind)
        if kinds or any(item.get_closest_marker(m) for m in set(TIER.values())):
            item.add_marker("slow")
    kind: dict[str, int] = {}  # module -> 0 seed-like world, 1 demo world, 2 other slow, 3 fast
    for item in items:
        names, module = set(item.fixturenames), item.nodeid.split("::")[0]
        rank = 0 if "seedlike_world" in names else 1 if "world" in names else 2 if item.get_closest_marker("slow") else 3
        kind[module] = min(rank, kind.get(module, 3))
    modules = sorted(kind, key=lambda m: (kind[m], Path(m).name not in LONGEST))  # stable: collection order
    place = {}
    for rank in range(4):
        for i, m in enumerate(m for m in modules if kind[m] == rank):
            place[m] = (0, i, rank) if rank < 2 else (rank, i, 0)  # the two worlds' modules alternate
    items.sort(key=lambda item: place[item.nodeid.split("::")[0]])  # stable: the order within a module is kept


@pytest.fixture(scope="session")
def world():
    from demoworld.build import build_world

    path = Path(os.environ.get("MERGE_SEARCH_TEST_WORLD", REPO / "results" / "demo-world"))
    return build_world(path, seed=0, quiet=True)


@pytest.fixture(scope="session")
def seedlike_world():
    """The seedlike world (``demoworld.seedlike``, about 4 minutes on 2 cores), built once into
    ``results/seedlike-world`` (or ``MERGE_SEARCH_TEST_SEEDLIKE_WORLD``) and reused."""
    from demoworld.build import build_world

    path = Path(os.environ.get("MERGE_SEARCH_TEST_SEEDLIKE_WORLD", REPO / "results" / "seedlike-world"))
    return build_world(path, seed=0, quiet=True, kind="seedlike")


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


def _pg_bin() -> Path | None:
    """Debian's server programs (initdb, pg_ctl, createdb side by side), else a folder on PATH holding all three."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    folder = Path(found).parent if found else None
    return folder if folder and all((folder / p).exists() for p in ("initdb", "createdb")) else None


def _ensure_postgres() -> Path:
    """The folder of PostgreSQL's server programs; the test skips when it is not installed (never installs it)."""
    found = _pg_bin()
    if found is None:
        pytest.skip("PostgreSQL not installed: apt-get install postgresql (.ci/run does)")
    return found


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server on 127.0.0.1 (a free port, trust auth, a temp data folder), stopped at the
    end; yields ``createdb(name) -> URL``. As root the server runs as the ``postgres`` user (it refuses root)."""
    import pwd

    bin_dir = _ensure_postgres()
    home = Path(tempfile.mkdtemp(prefix="merge-search-pg-"))  # not under pytest's root-only temp folder
    data = home / "data"
    user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if user:
        pw = pwd.getpwnam("postgres")
        os.chown(home, pw.pw_uid, pw.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd: str) -> None:
        out = subprocess.run([*user, *cmd], capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-1500:]

    run(str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "--encoding=UTF8")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {data}"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "server.log"), "-w", "start")

    def createdb(name: str) -> str:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name)
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    try:
        yield createdb
    finally:
        subprocess.run([*user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120, check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def outer():
    """The caller's torch thread count set to 3 (differs from every count a test pins), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)
