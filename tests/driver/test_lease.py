"""One driver per study (search.driver.lease): a live holder is refused, a dead, stale or released one is taken over."""

from __future__ import annotations

import socket
import subprocess
import time

import optuna
import pytest

from objectives.errors import UserError
from search.driver.lease import LEASE_ATTR, STALE_SECONDS, StudyLease, lease_holder


@pytest.fixture
def study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'shared.db'}")


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def plant(study, pid, *, host=None, beat=None, released=False):
    study.set_user_attr(LEASE_ATTR, {"pid": pid, "host": host or socket.gethostname(), "command": "merge-search search c.yaml",
                                     "run_dir": "/runs/a", "beat": time.time() if beat is None else beat,
                                     "released": released})


def test_a_live_driver_on_this_host_is_refused_with_its_name(study, live_pid):
    plant(study, live_pid)
    assert lease_holder(study).pid == live_pid
    with pytest.raises(UserError) as err:
        StudyLease(study, "/runs/b").take()
    msg = str(err.value)
    assert f"process {live_pid} on {socket.gethostname()} (merge-search search c.yaml; run folder /runs/a)" in msg
    assert "search.study_name" in msg and "\n" not in msg
    assert study.user_attrs[LEASE_ATTR]["pid"] == live_pid  # the holder's lease is left as it was


def test_a_lease_of_the_same_run_folder_never_refuses(study, live_pid):
    """A resume after a crash on another host or in a new container: that folder's writer lock guards it."""
    plant(study, live_pid, host="node-7")  # run_dir /runs/a
    assert lease_holder(study, "/runs/a") is None and lease_holder(study, "/runs/b").pid == live_pid
    StudyLease(study, "/runs/a").take()
    assert study.user_attrs[LEASE_ATTR]["host"] == socket.gethostname()


def test_another_hosts_fresh_lease_is_refused_and_its_stale_one_taken_over(study):
    plant(study, 1, host="node-7")
    with pytest.raises(UserError, match="process 1 on node-7"):
        StudyLease(study, "/runs/b").take()
    plant(study, 1, host="node-7", beat=time.time() - STALE_SECONDS - 5)  # no heartbeat for too long
    StudyLease(study, "/runs/b").take()
    assert study.user_attrs[LEASE_ATTR]["run_dir"] == "/runs/b"


@pytest.mark.parametrize("case", ["dead", "released"])
def test_a_dead_or_released_holder_is_taken_over(study, case):
    if case == "dead":
        proc = subprocess.Popen(["true"])
        proc.wait()
        plant(study, proc.pid)  # killed drivers leave their lease behind
    else:
        plant(study, 1, host="node-7", released=True)
    assert lease_holder(study) is None
    lease = StudyLease(study, "/runs/b")
    lease.take()
    assert lease_holder(study) is None  # this process holds it now
    lease.release()
    assert study.user_attrs[LEASE_ATTR]["released"] is True


def test_a_driver_whose_lease_was_taken_over_stops_at_its_next_heartbeat(study, live_pid):
    lease = StudyLease(study, "/runs/b", every=0.0)  # every poll beats
    lease.take()
    before = study.user_attrs[LEASE_ATTR]["beat"]
    time.sleep(0.01)
    lease.beat()
    assert study.user_attrs[LEASE_ATTR]["beat"] > before  # renewed while it holds the lease
    plant(study, live_pid)  # another driver took the study while this one stalled
    with pytest.raises(UserError, match="taken over by process"):
        lease.beat()
    lease.release()  # releasing leaves the other driver's lease alone
    assert study.user_attrs[LEASE_ATTR]["pid"] == live_pid
