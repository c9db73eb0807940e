"""Checks made before anything is created, shared by the stages: each returns a list of problems (empty:
fine); :func:`raise_problems` turns them into one :class:`~objectives.errors.UserError`.

A command that starts work calls these in the driver process before it creates a run folder, a study or an
output, so a bad input costs seconds and leaves nothing behind. Each stage gathers its own checks in its
``problems(cfg, run)`` (:mod:`search.stages.base`); :func:`search.pipeline.check_run` adds the run-wide ones.

* :func:`storage_problems`, :func:`ray_problems`, :func:`output_problems`, :func:`device_problems`: one input
  or output each.
* :func:`config_diff` and :func:`as_read_back`: how a stored config is compared with a new one (run-folder and
  study ownership).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from pathlib import Path

import yaml

from objectives.errors import UserError, first_line
from objectives.schema import schema_default
from search.config import RunConfig
from search.merge.sources import is_local

__all__ = [
    "REMOVED_KEYS",
    "RENAMED_KEYS",
    "RESOURCE_KEYS",
    "as_read_back",
    "config_diff",
    "device_problems",
    "disk_full",
    "disk_problems",
    "folder_bytes",
    "local_models",
    "output_problems",
    "raise_problems",
    "ray_problems",
    "storage_problems",
]

# How much is run, not what a trial computes: a search may be extended or run wider with another value.
RESOURCE_KEYS = {"search.n_trials", "search.workers", "search.worker_cpus", "search.worker_gpus",
                 "space.cache_sources",  # where source tensors live between merges; the weights are identical
                 "search.max_retries", "search.max_failures_in_a_row",
                 "objective.threads",  # trials run at Ray's pinning; only held-out/evaluate read it
                 "objective.chat.max_judge_calls", "objective.chat.judge.concurrency"}  # what the chat judge may spend
# Keys renamed since a config was stored: a stored tree is read with the new names.
RENAMED_KEYS = {"objective.stages": "objective.rungs"}
# Keys removed from the schema since: what a stored tree holds there is no difference.
REMOVED_KEYS = {"world"}


def raise_problems(problems: list[str], what: str) -> None:
    """One :class:`UserError` listing every problem (nothing when the list is empty)."""
    if len(problems) == 1:
        raise UserError(f"{what}: {problems[0]}")
    if problems:
        raise UserError(f"{what}: {len(problems)} problems: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------ pieces


def storage_problems(url: str, *, creating: Path | None = None) -> list[str]:
    """A storage URL that Optuna cannot use: not a URL, no driver installed, a missing folder, a damaged or
    unreachable database. ``creating``: the run folder that will hold a default SQLite file (may not exist)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    where = f"search.storage {url!r}"
    if "://" not in url:
        return [f"{where} is not a URL: use sqlite:///PATH/study.db or postgresql://USER@HOST/DB"]
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError as err:
        return [f"{where} cannot be parsed ({err}): use sqlite:///PATH/study.db or postgresql://USER@HOST/DB"]
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_problems(where, parsed.database, creating)
    try:
        engine = sqlalchemy.create_engine(url, connect_args=_timeout(parsed))
        with engine.connect():
            pass
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as err:
        return [f"{where}: its database driver is not installed ({err}): pip install the driver (for PostgreSQL: "
                "pip install 'merge-search[postgres]')"]
    except sqlalchemy.exc.SQLAlchemyError as err:
        return [f"{where}: cannot connect ({first_line(err)}): check host, port, user and database"]
    return []


def _timeout(parsed) -> dict:
    return {"connect_timeout": 10} if parsed.get_backend_name() in ("postgresql", "mysql") else {}


def _sqlite_problems(where: str, database: str | None, creating: Path | None) -> list[str]:
    import sqlite3

    if not database or database == ":memory:":
        return [f"{where} is an in-memory database, lost when the driver ends: give a file, sqlite:///PATH.db"]
    path = Path(database)
    if path.is_dir():
        return [f"{where} names a folder: give a file inside it, e.g. {path / 'studies.db'}"]
    if path.exists():
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
                con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.DatabaseError as err:
            return [f"{where}: {path} is not a readable SQLite database ({err}): restore it, or use another "
                    "run folder / search.storage"]
        return []
    folder = path.parent
    if not folder.is_dir() and not (creating is not None and _inside(folder, creating)):
        return [f"{where}: folder {str(folder)!r} does not exist: create it, or point the URL elsewhere"]
    return []


def ray_problems(address: str | None, timeout: float = 5.0) -> list[str]:
    """A Ray address that does not answer within ``timeout`` seconds (None: a private local Ray, fine)."""
    if not address:
        return []
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or _local_head()
        if not target:
            return ["Ray address 'auto': no Ray cluster runs on this machine: start one (ray start --head), set "
                    "RAY_ADDRESS, or pass HOST:PORT of its head"]
    hostport = target.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return [f"Ray address {address!r}: expected HOST:PORT of a Ray head (e.g. 10.0.0.1:6379) or 'auto'"]
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as conn:
            speaks = _speaks_grpc(conn, timeout)
    except OSError as err:
        return [f"Ray address {address!r}: no Ray head answers at {host}:{port} within {timeout:.0f} s "
                f"({err.strerror or err}): start a Ray head there, or fix the address"]
    if not speaks:
        return [f"Ray address {address!r}: {host}:{port} answers, but not as a Ray head (no gRPC reply within "
                f"{timeout:.0f} s): give the head's GCS port (ray start --head prints it; 6379 by default)"]
    return []


# HTTP/2's client connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS) answers with a frame
# of its own whose type byte (the 4th) is SETTINGS (4); other services answer otherwise, or not at all.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _speaks_grpc(conn: socket.socket, timeout: float) -> bool:
    """Whether the peer of ``conn`` answers an HTTP/2 preface as a gRPC server does (see :data:`_H2_PREFACE`)."""
    conn.settimeout(timeout)
    try:
        conn.sendall(_H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except OSError:
        return False
    return len(head) == 9 and head[3] == 4


def _local_head() -> str | None:
    """The address of the Ray head this machine started last (what ``ray.init(address='auto')`` finds)."""
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    return current.read_text(encoding="utf-8").strip() or None if current.is_file() else None


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(path).expanduser().resolve(), Path(folder).expanduser().resolve()
    return path == folder or folder in path.parents


def _writable(path: Path) -> str | None:
    """Why ``path`` (a folder, maybe not there yet) cannot be created or written, or None."""
    p = Path(path).expanduser().absolute()
    existing = next((a for a in [p, *p.parents] if a.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{str(existing or p)!r} is not a folder"
    try:  # by trying: permission bits say nothing about read-only mounts or /proc
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"{str(existing)!r} is not writable ({err.strerror or err})"
    return None


def output_problems(out: str | Path, *, what: str, inputs: list[str | Path] = (), own: set[str] | None = None,
                    marker: str | None = None, file: bool = False) -> list[str]:
    """An output that would damage something: ``out`` is or lies inside one of the ``inputs`` (source models, a
    run's storage), cannot be written, or (a folder) is not empty and not an earlier output of the same command:
    one holding ``marker``, or only names in ``own``."""
    out = Path(out)
    problems = [f"{what} {str(out)!r} is inside the input {str(i)!r}: outputs never overwrite inputs; choose "
                "another folder" for i in inputs if i is not None and _inside(out, Path(i))]
    reason = _writable(out.parent if file else out)
    if reason:
        problems.append(f"{what} {str(out)!r}: {reason}: choose a writable place")
    if file and out.is_dir():
        problems.append(f"{what} {str(out)!r} is a folder: give a file name")
    if not file and out.is_dir() and not (marker and (out / marker).exists()) and (own is not None or marker):
        foreign = sorted(p.name for p in out.iterdir() if own is None or p.name not in own)
        if foreign:
            problems.append(f"{what} {str(out)!r} is not empty and not an earlier output of this command (it holds "
                            f"{', '.join(foreign[:3])}): choose a new or empty folder")
    return problems


def local_models(models: list[str]) -> list[str]:
    """The local folders among model references (hub ids are never written to)."""
    return [m for m in models if is_local(m)]


# ------------------------------------------------------------------------------------------------ run folders


_ABSENT = object()


def config_diff(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain run-config trees. A key the stored (``old``) tree
    lacks is no difference when the new one holds its schema default (a key added to the schema later), nor
    is one the schema no longer has (:data:`REMOVED_KEYS`): neither makes an older run folder or study another
    config's. Renamed keys (:data:`RENAMED_KEYS`) are compared under their new names."""
    if not prefix and isinstance(old, dict):
        old = _renamed(old)
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new), key=str)
                for k in config_diff(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{prefix}{key}.")]
    key = prefix.rstrip(".")
    if old is _ABSENT and new == schema_default(RunConfig, key):
        return []
    if new is _ABSENT and key in REMOVED_KEYS:
        return []
    old, new = (None if v is _ABSENT else v for v in (old, new))
    return [] if old == new else [key]


def _renamed(tree: dict) -> dict:
    """``tree`` with :data:`RENAMED_KEYS` moved to their new names (a copy; the input is not changed)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for old, new in RENAMED_KEYS.items():
        (s_old, k_old), (s_new, k_new) = old.split("."), new.split(".")
        section = out.get(s_old)
        if isinstance(section, dict) and k_old in section and k_new not in section:
            out.setdefault(s_new, {})[k_new] = section.pop(k_old)
    return out


def as_read_back(cfg: RunConfig) -> dict:
    """``cfg`` as plain data, exactly as its saved ``resolved.yaml`` reads back (what comparisons compare)."""
    return yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))


def device_problems(cfg: RunConfig, address: str | None) -> list[str]:
    """GPUs asked for that a local run does not have (a cluster's GPUs are its own business)."""
    import torch

    if address:
        return []
    gpus = torch.cuda.device_count()
    problems = []
    if cfg.device == "cuda" and gpus == 0:
        problems.append("device is 'cuda' but torch sees no CUDA device here: set device: cpu (or auto), or pass "
                        "the Ray address of a GPU cluster")
    if cfg.search.worker_gpus and cfg.search.worker_gpus > gpus:
        problems.append(f"search.worker_gpus {cfg.search.worker_gpus} but this machine has {gpus} GPU(s): a local "
                        "search would wait forever; lower it, or give the Ray address of a GPU cluster")
    return problems


def folder_bytes(model: str | Path) -> int:
    """The size of a local model folder's weight files (``*.safetensors``, ``*.bin``); 0 for a hub id."""
    p = Path(model).expanduser()
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in p.glob(pattern))


def disk_problems(out: str | Path, need: int, what: str) -> list[str]:
    """Too little free space where ``out`` will be written for ``need`` bytes (an estimate the caller makes)."""
    p = Path(out).expanduser().absolute()
    existing = next((a for a in [p, *p.parents] if a.is_dir()), None)
    if existing is None or need <= 0:
        return []
    free = shutil.disk_usage(existing).free
    if free >= need:
        return []
    return [f"{what}: {str(existing)!r} has {free / 2**30:.1f} GiB free but about {need / 2**30:.1f} GiB are needed: "
            "free some space, or write the run folder elsewhere"]


_FULL = ("database or disk is full", "no space left on device", "disk quota exceeded")


def disk_full(err: BaseException) -> str | None:
    """The first line of the error in ``err``'s chain (``__cause__``/``__context__``) that says a disk filled up
    (``ENOSPC``/``EDQUOT``, or SQLite's "database or disk is full" as Optuna's storage wraps it); None when none
    does. The caller turns it into one line: free space, then resume."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{err.strerror}" + (f": {err.filename}" if err.filename else "")
        line = next((ln for ln in str(err).splitlines() if any(m in ln.lower() for m in _FULL)), None)
        if line is not None:
            return line.strip()[:200]
        err = err.__cause__ or err.__context__
    return None
