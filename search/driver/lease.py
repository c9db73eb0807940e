"""One driver per study: a lease kept in the study itself, for storages that several run folders can reach.

A run folder's writer lock (:mod:`search.writelock`) keeps two commands out of one folder. A study in a shared
storage (``search.storage: postgresql://...``, or one SQLite file named by two configs) can still be reached
from two run folders, or from two machines; two drivers on one study would each take the other's running trials
for orphans of a stopped driver (:func:`search.driver.study.fail_orphans`) and re-queue them. So the driver
holds a lease in the study's attributes: who it is (PID, host, command, run folder) and a heartbeat it renews
every :data:`BEAT_SECONDS` while it runs. A second driver finds a live lease and is refused in one line naming
the holder. A lease is stale (taken over) when its heartbeat is older than :data:`STALE_SECONDS`, when its
holder on this host is no longer running, or when it was released; a lease of the same run folder never
refuses (that folder's writer lock keeps a second writer out, so a resume after a crash on another host or in a
new container is not held up). A driver whose stale lease was taken over
by another (it stalled for longer than that) stops at its next heartbeat instead of running on beside it.

Storages have no compare-and-swap on study attributes, so two drivers starting within the same second could
both write a lease; :meth:`StudyLease.take` reads it back after writing and refuses if another writer's
lease replaced its own.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna

from objectives.errors import UserError

__all__ = ["BEAT_SECONDS", "LEASE_ATTR", "STALE_SECONDS", "LeaseHolder", "StudyLease", "lease_holder"]

LEASE_ATTR = "merge_search_writer"  # a study attribute: the driver that holds the study
BEAT_SECONDS = 20.0
STALE_SECONDS = 600.0  # generous: a driver scores its sources once before its loop beats


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a study's lease (as stored in the study)."""

    pid: int
    host: str
    command: str
    run_dir: str
    beat: float  # time.time() of the last heartbeat
    released: bool = False

    def describe(self) -> str:
        ago = max(0, round(time.time() - self.beat))
        return (f"process {self.pid} on {self.host} ({self.command}; run folder {self.run_dir}), "
                f"last heartbeat {ago} s ago")

    def refusal(self, study_name: str, where: str = "") -> str:
        """The one line that refuses a second search of ``study_name`` (``where``: e.g. " in URL")."""
        return (f"study {study_name!r}{where} is being searched by {self.describe()}: wait for it to finish or stop "
                f"it (its lease goes stale {int(STALE_SECONDS)} s after its last heartbeat), or set "
                "search.study_name to a new name")

    def is_me(self) -> bool:
        return self.pid == os.getpid() and self.host == socket.gethostname()

    def is_live(self) -> bool:
        if self.released or time.time() - self.beat > STALE_SECONDS:
            return False
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        return True


def _read(study: optuna.Study) -> LeaseHolder | None:
    raw = study.user_attrs.get(LEASE_ATTR)
    if not isinstance(raw, dict):
        return None
    try:
        return LeaseHolder(int(raw["pid"]), str(raw["host"]), str(raw["command"]), str(raw["run_dir"]),
                           float(raw["beat"]), bool(raw.get("released", False)))
    except (KeyError, TypeError, ValueError):
        return None  # unreadable: treated as no lease


def lease_holder(study: optuna.Study, run_dir: str | Path | None = None) -> LeaseHolder | None:
    """The *other* driver that holds ``study`` now, or None (no lease, a stale or released one, this process, or
    a driver of ``run_dir`` itself: that folder's writer lock already keeps a second writer out, so a resume
    after a crash, on this host or another, is never refused by the crashed driver's lease)."""
    held = _read(study)
    if held is None or held.is_me() or not held.is_live():
        return None
    if run_dir is not None and held.run_dir == str(Path(run_dir).resolve()):
        return None
    return held


class StudyLease:
    """This process's lease on a study: :meth:`take` before touching its trials, :meth:`beat` in the driver's
    loop (cheap: writes at most every :data:`BEAT_SECONDS`), :meth:`release` at the end."""

    def __init__(self, study: optuna.Study, run_dir: str, *, command: str | None = None,
                 every: float = BEAT_SECONDS) -> None:
        self.study = study
        self.every = every  # seconds between two heartbeats
        self._me = LeaseHolder(os.getpid(), socket.gethostname(), command or " ".join(sys.argv)[:300],
                               str(Path(run_dir).resolve()), 0.0)
        self._last = 0.0

    def take(self) -> None:
        """Take the lease, or raise :class:`UserError` naming the driver that holds it."""
        other = lease_holder(self.study, self._me.run_dir)
        if other is None:
            self._write()
            time.sleep(0.05)
            other = lease_holder(self.study, self._me.run_dir)  # another driver that wrote at the same moment
        if other is not None:
            raise UserError(other.refusal(self.study.study_name))

    def beat(self) -> None:
        """Renew the lease (at most every ``every`` seconds); raise :class:`UserError` if another driver took
        it over meanwhile."""
        if time.time() - self._last < self.every:
            return
        other = lease_holder(self.study, self._me.run_dir)
        if other is not None:
            raise UserError(f"study {self.study.study_name!r} was taken over by {other.describe()} while this "
                            "driver stalled: this one stops (its running trials are marked failed and re-queued)")
        self._write()

    def release(self) -> None:
        """Mark the lease released if this process still holds it. Never raises: a storage that fails here
        (the error being handled may be that very failure) leaves a lease that goes stale by itself."""
        try:
            held = _read(self.study)
            if held is not None and held.is_me():
                self._write(released=True)
        except Exception:  # noqa: BLE001 - see the docstring
            pass

    def _write(self, *, released: bool = False) -> None:
        self._last = time.time()
        me = LeaseHolder(**{**asdict(self._me), "beat": self._last, "released": released})
        self.study.set_user_attr(LEASE_ATTR, asdict(me))
