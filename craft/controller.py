"""The Snakemake controller of a results folder, and the lock it leaves when it is killed.

Snakemake locks a working directory while it runs (``.snakemake/locks/``) and removes the lock
when it exits. A controller killed hard (``kill -9``, a dropped login session, a node or OOM
kill) cannot remove it, and the next run stops with Snakemake's LockException until someone
runs ``snakemake --unlock``. The workflow records who holds the lock (:func:`record`, from its
``onstart`` hook, which runs while the lock is held) and, when it is started again, clears a
lock whose holder is known to be dead (:func:`clear_stale_lock`): recorded on this host, and its
process gone (or its pid now another process's). A lock held by a live controller, by one on
another host, or by one that left no record is left alone; the line then says whose it is and
what to run.

Standard library only: the workflow calls this at parse time on the login node.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from craft.atomic import atomic_write_text

#: The record of the controller that holds (or last held) a working directory's lock.
RECORD = "craft/controller.json"


def _started(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with
    the pid it names one process, whatever reuses the pid later. None without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[19])  # fields after "(comm)" start at 3


def _alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = _started(pid)
    return started is None or now is None or now == started


def record(snakemake_dir: Path | str = ".snakemake") -> Path:
    """Write who this controller is (host, pid, the pid's start time, when) beside the lock it
    holds. Called from the workflow's ``onstart`` hook, after Snakemake took the lock."""
    pid = os.getpid()
    data = {
        "host": socket.gethostname(),
        "pid": pid,
        "started": _started(pid),
        "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
    }
    return atomic_write_text(Path(snakemake_dir) / RECORD, json.dumps(data) + "\n")


def _record_if_writable(snakemake_dir: Path | str) -> None:
    """:func:`record`, skipped in a folder this user cannot write (a dry run in someone else's
    finished run): such a process takes no lock either."""
    try:
        record(snakemake_dir)
    except OSError:
        pass


@dataclass(frozen=True)
class LockState:
    """What holds a working directory's lock: ``kind`` is ``free`` (no lock), ``stale``
    (its controller, recorded on this host, is dead), ``alive`` (it runs on this host),
    ``elsewhere`` (recorded on another host) or ``unknown`` (no record of who took it)."""

    kind: str
    holder: dict | None = None

    def describe(self) -> str:
        h = self.holder or {}
        return f"host {h.get('host')}, pid {h.get('pid')}, since {h.get('since')}"


def lock_state(snakemake_dir: Path | str = ".snakemake") -> LockState:
    locks = Path(snakemake_dir) / "locks"
    if not locks.is_dir() or not any(locks.glob("*.lock")):
        return LockState("free")
    try:
        holder = json.loads((Path(snakemake_dir) / RECORD).read_text())
        host, pid = str(holder["host"]), int(holder["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return LockState("unknown")
    if host != socket.gethostname():
        return LockState("elsewhere", holder)
    if _alive(pid, holder.get("started")):
        return LockState("alive", holder)
    return LockState("stale", holder)


def clear_stale_lock(snakemake_dir: Path | str = ".snakemake") -> str | None:
    """Remove the lock of a dead controller (:func:`lock_state` ``stale``) and say so in one
    line; for a lock it leaves, one line saying whose it is and what to run; None when there
    is no lock.

    Where the lock is free or was stale, this process is about to take it: it records itself
    at once (and again from ``onstart``, once it holds the lock), so that a controller killed
    before its ``onstart`` is not mistaken for its live predecessor's lock's holder. A process
    that finds the lock held writes nothing.
    """
    state = lock_state(snakemake_dir)
    if state.kind == "free":
        _record_if_writable(snakemake_dir)
        return None
    if state.kind == "stale":
        shutil.rmtree(Path(snakemake_dir) / "locks", ignore_errors=True)
        _record_if_writable(snakemake_dir)
        lines = [
            f"craft: removed the lock left by a controller that was killed ({state.describe()}); "
            "jobs it had started are rerun where their outputs are incomplete"
        ]
        orphans = cancel_orphans(Path(snakemake_dir).resolve().parent)
        if orphans:
            lines.append(orphans)
        return "\n".join(lines)
    if state.kind == "alive":
        return (
            f"craft: this folder is in use by a running controller ({state.describe()}); "
            "wait for it, or stop it, then run the same command again"
        )
    where = (
        f"a controller on another host ({state.describe()})"
        if state.kind == "elsewhere"
        else "a controller that left no record of itself"
    )
    return (
        f"craft: this folder is locked by {where}; if it is no longer running, add --unlock to "
        "your command once, then run the command again"
    )


class _NoAnswer(Exception):
    """SLURM's queue could not be read."""


def _queued_here(workdir: Path | str) -> list[str]:
    """This user's SLURM jobs, queued or running, that the Snakemake SLURM plugin submitted
    from ``workdir`` (their working directory, and the plugin's ``rule_...`` comment).
    Snakemake keeps no cluster job id of a submitted job (its incomplete markers hold none
    for SLURM jobs), so SLURM is asked."""
    try:
        r = subprocess.run(
            ["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%Z|%k"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        raise _NoAnswer("squeue did not answer within 60 s") from None
    if r.returncode != 0:
        raise _NoAnswer(f"squeue: {(r.stderr or r.stdout).strip()[:200]}")
    out = r.stdout
    here = os.path.realpath(workdir)
    jobs = []
    for line in out.splitlines():
        jobid, _, rest = line.partition("|")
        folder, _, comment = rest.partition("|")
        if comment.startswith("rule_") and os.path.realpath(folder) == here:
            jobs.append(jobid.strip())
    return jobs


def cancel_orphans(workdir: Path | str = ".", wait_s: float = 300, poll_s: float = 2) -> str | None:
    """Cancel the SLURM jobs a killed controller left queued or running (:func:`_queued_here`),
    and wait until they are gone: no controller collects their outputs any more, and the run
    about to start submits each again. A cancelled training job saves a checkpoint on
    SIGTERM, which its resubmission resumes from. Called only once the folder's controller is
    known dead. One line saying what was cancelled, or None (no SLURM here, or nothing left)."""
    if shutil.which("squeue") is None or shutil.which("scancel") is None:
        return None
    try:
        left = _queued_here(workdir)
    except _NoAnswer as err:
        return (
            f"craft: could not ask SLURM for jobs the killed controller left running ({err}); "
            "if `squeue --me` lists any from this folder, scancel them"
        )
    if not left:
        return None
    subprocess.run(["scancel", *left], capture_output=True, timeout=60)
    deadline, still = time.monotonic() + wait_s, left
    while time.monotonic() < deadline:
        try:
            still = sorted(set(_queued_here(workdir)) & set(left))
        except _NoAnswer:
            still = left  # ask again
        if not still:
            break
        time.sleep(poll_s)
    if still:
        raise SystemExit(
            f"craft: error: the killed controller's SLURM job(s) {', '.join(still)} are still "
            f"there {wait_s:.0f} s after scancel; wait until `squeue -j {','.join(still)}` "
            "lists none, then run the same command again"
        )
    return (
        f"craft: cancelled {len(left)} SLURM job(s) the killed controller had left running "
        f"({', '.join(left)}); they are submitted again, and training resumes from its checkpoint"
    )
