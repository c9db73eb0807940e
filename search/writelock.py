"""One writer per output folder: :func:`writer_lock`, an exclusive lock with the holder's PID, host and command.

Every command that writes a run folder (``run``, ``search``, ``evaluate``, ``dpo``, ``mtbench run``, ``export``
into a run folder) holds the folder's lock while it writes: ``PARENT/.NAME.lock`` beside ``PARENT/NAME`` (beside,
not inside, so that a stage may swap a whole output folder in while holding it). The lock is an OS advisory lock
(``fcntl.flock``) on that file, so it goes with the process: a writer that was killed (SIGKILL, a crash, a
reboot) leaves no lock behind, only a stale file that the next writer takes over. The file holds who took it
(PID, host, command, start time): a second writer is refused with one line naming the holder. Readers
(``report``, ``dashboard``, ``export`` to another folder, ``mtbench compare``) never take it.

On a network filesystem the lock is as good as the filesystem's ``flock`` (NFSv4 maps it to a byte-range lock);
a holder on another host is named with its host so that a user can check it there.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from objectives.errors import UserError

__all__ = ["held_problems", "holder", "lock_file", "writer_lock"]

_HELD: dict[Path, int] = {}  # lock files this process holds -> how many nested writer_lock blocks hold each


def lock_file(folder: str | Path) -> Path:
    """The lock file of output folder ``folder``: ``.NAME.lock`` beside it."""
    root = Path(folder).resolve()
    return root.parent / f".{root.name}.lock"


def holder(folder: str | Path) -> dict | None:
    """Who else holds ``folder``'s writer lock now (``{"pid", "host", "command", "since"}``), or None when
    nobody does (no lock file, a stale one left by a writer that is gone, or this process holds it)."""
    path = lock_file(folder)
    if path in _HELD:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def held_problems(folder: str | Path) -> list[str]:
    """The one-line refusal when another process is writing ``folder`` (checked before the slower checks of a
    command, so a second writer is told at once); [] otherwise."""
    info = holder(folder)
    return [_refusal(Path(folder), info)] if info is not None else []


def _refusal(folder: Path, info: dict) -> str:
    return f"{folder} is being written by {_describe(info)}: wait for it to finish or stop it, or write to another folder"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def _describe(info: dict) -> str:
    who = f"process {info.get('pid', '?')} on {info.get('host', '?')}"
    since = f" since {info['since']}" if info.get("since") else ""
    command = f" ({info['command']})" if info.get("command") else ""
    return who + since + command


@contextmanager
def writer_lock(folder: str | Path, command: str | None = None) -> Iterator[Path]:
    """Hold ``folder``'s writer lock for the ``with`` block (the folder itself is not created); yields the lock
    file.

    Refused at once with a :class:`~objectives.errors.UserError` naming the holder when another process holds
    it. ``command`` is what the holder line shows (default: this process's command line). Nested blocks of one
    process on the same folder share the outermost lock (a pipeline stage calling a library writer).
    """
    root = Path(folder).resolve()
    path = lock_file(root)
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield path
        finally:
            _HELD[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(_refusal(Path(folder), _read(path))) from None
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        _HELD[path] = 1
        yield path
    finally:
        _HELD.pop(path, None)
        os.close(fd)  # closing the last descriptor releases the flock
