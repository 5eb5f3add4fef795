"""The lock a killed controller leaves: removed only when its holder is known dead."""

import json
import os
import socket
import subprocess
import sys

from craft import controller
from craft.controller import RECORD, _started, clear_stale_lock, lock_state, record


def _locked(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("results/data/x.h5\n")
    (locks / "0.output.lock").write_text("results/report/index.html\n")
    return locks


def _holder(tmp_path, **fields):
    (tmp_path / RECORD).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / RECORD).write_text(json.dumps(fields))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_no_lock_is_left_alone_and_the_process_that_will_take_it_records_itself(tmp_path):
    assert lock_state(tmp_path).kind == "free" and clear_stale_lock(tmp_path) is None
    assert json.loads((tmp_path / RECORD).read_text())["pid"] == os.getpid()
    (tmp_path / "locks").mkdir()  # Snakemake's folder, empty after a clean exit
    assert clear_stale_lock(tmp_path) is None and (tmp_path / "locks").is_dir()


def test_the_lock_of_a_dead_controller_on_this_host_is_removed(tmp_path, monkeypatch):
    """...and the SLURM jobs it left running from this folder are cancelled (the real
    cancelling: tests/slurm/test_slurm_workflow.py)."""
    asked = []
    monkeypatch.setattr(controller, "cancel_orphans", lambda w: asked.append(w) or "cancelled")
    locks = _locked(tmp_path)
    _holder(tmp_path, host=socket.gethostname(), pid=_dead_pid(), started=1, since="then")
    line = clear_stale_lock(tmp_path)
    assert "removed the lock left by a controller that was killed" in line
    assert line.endswith("\ncancelled") and asked == [tmp_path.resolve().parent]
    assert not locks.exists()
    assert json.loads((tmp_path / RECORD).read_text())["pid"] == os.getpid()


def test_the_lock_of_a_live_controller_stays(tmp_path):
    locks = _locked(tmp_path)
    record(tmp_path)  # this process: alive
    assert lock_state(tmp_path).kind == "alive"
    assert "in use by a running controller" in clear_stale_lock(tmp_path)
    assert sorted(p.name for p in locks.iterdir()) == ["0.input.lock", "0.output.lock"]


def test_a_pid_taken_by_another_process_since_is_a_dead_controller(tmp_path):
    """The pid is alive, but it is not the process that took the lock (another start time)."""
    _locked(tmp_path)
    started = _started(os.getpid())
    if started is None:  # no /proc: the pid alone decides
        return
    _holder(tmp_path, host=socket.gethostname(), pid=os.getpid(), started=started + 1)
    assert lock_state(tmp_path).kind == "stale"


def test_a_lock_from_another_host_or_without_a_record_stays_and_says_to_unlock(tmp_path):
    locks = _locked(tmp_path)
    line = clear_stale_lock(tmp_path)
    assert "left no record" in line and "--unlock" in line and locks.is_dir()
    _holder(tmp_path, host=socket.gethostname() + "-login2", pid=_dead_pid(), since="x")
    line = clear_stale_lock(tmp_path)
    assert "-login2" in (tmp_path / RECORD).read_text()  # the holder's record stays
    assert "another host" in line and "-login2" in line and "--unlock" in line
    assert locks.is_dir()
    (tmp_path / RECORD).write_text("{not json")
    assert lock_state(tmp_path).kind == "unknown" and locks.is_dir()


def test_no_answer_from_slurm_is_said_not_taken_for_no_jobs(tmp_path, monkeypatch):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, body in (("squeue", "echo 'Unable to contact slurm controller' >&2; exit 1"),
                       ("scancel", "exit 0")):  # fmt: skip
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    line = controller.cancel_orphans(tmp_path)
    assert "could not ask SLURM" in line and "Unable to contact" in line
    # squeue lists one plugin job from this folder, one from another, one not the plugin's
    listing = f"11|{tmp_path}|rule_adapt_wildcards_x\n12|/elsewhere|rule_adapt\n13|{tmp_path}|mine"
    (bin_ / "squeue").write_text(
        f"#!/bin/sh\nif [ -f {tmp_path}/gone ]; then exit 0; fi\nprintf '{listing}\\n'\n"
    )
    (bin_ / "scancel").write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/cancelled; touch {tmp_path}/gone\n'
    )
    line = controller.cancel_orphans(tmp_path, poll_s=0.01)
    assert (tmp_path / "cancelled").read_text().split() == ["11"]
    assert "cancelled 1 SLURM job(s)" in line and "(11)" in line


def test_a_folder_this_user_cannot_write_is_planned_without_a_record(tmp_path, monkeypatch):
    def refused(_):
        raise PermissionError("read-only")

    monkeypatch.setattr(controller, "record", refused)
    assert clear_stale_lock(tmp_path) is None  # free: nothing to say, nothing written
    assert not (tmp_path / RECORD).exists()
