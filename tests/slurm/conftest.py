"""Fixtures of the SLURM tests: a real cluster (scripts/slurm/up.sh) and the craft venv on PATH.

The tests are skipped, with the reason, when ``sinfo`` is not on the PATH or the cluster does
not answer; CI (``make test``, as root) runs scripts/slurm/up.sh before pytest and sets
CRAFT_REQUIRE_SLURM=1, under which a cluster that is not usable fails the tests instead.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UP = "scripts/slurm/up.sh"


@dataclass(frozen=True)
class Cluster:
    """What the tests submit to: the cluster that scripts/slurm/up.sh starts."""

    account: str = "root"
    partition: str = "cpu"
    gpu_partition: str = "gpu"


def _unusable(reason: str):
    """Skip, or fail where a usable cluster is required (CRAFT_REQUIRE_SLURM=1, as in CI)."""
    if os.environ.get("CRAFT_REQUIRE_SLURM") == "1":
        pytest.fail(f"CRAFT_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def _out(cmd: list[str], timeout: float = 20) -> tuple[int, str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"{cmd[0]} timed out after {timeout:.0f} s"
    except OSError as err:
        return 127, str(err)
    return r.returncode, (r.stdout + r.stderr).strip()


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    """The local test cluster, or a skip naming what is missing."""
    if shutil.which("sinfo") is None:
        _unusable(f"sinfo is not on PATH: no SLURM on this machine (as root, {UP} starts one)")
    want = Cluster()
    rc, out = _out(["sinfo", "-h", "-o", "%P|%a|%T"])
    if rc != 0:
        _unusable(f"SLURM cluster is not up (sinfo: {' '.join(out.split())[:200]}); run {UP}")
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 2]
    partitions = {p.rstrip("*") for p, _, _ in rows}
    ready = {
        p.rstrip("*")
        for p, avail, state in rows
        if avail == "up" and state.rstrip("*~#") in ("idle", "mixed", "allocated")
    }
    for p in (want.partition, want.gpu_partition):
        if p not in partitions:
            _unusable(
                f"SLURM partition '{p}' does not exist ({sorted(partitions)}): "
                f"not the cluster of {UP}"
            )
        if p not in ready:
            _unusable(f"SLURM partition '{p}' has no usable node ({out!r}); run {UP}")
    rc, out = _out(["sacct", "-n", "-X", "-S", "now-1minutes", "-o", "JobID"])
    if rc != 0:
        _unusable(f"sacct does not work (no accounting: {out[:200]}); run {UP}")
    rc, out = _out(
        ["sacctmgr", "-n", "-P", "-s", "list", "user", getpass.getuser(), "format=account"]
    )
    if rc != 0 or want.account not in out.split():
        _unusable(
            f"user {getpass.getuser()} has no SLURM account '{want.account}' "
            f"(sacctmgr: {out[:200]!r}); run {UP} as root"
        )
    return want


@pytest.fixture(scope="session")
def craft_env() -> dict[str, str]:
    """The environment of snakemake and of its jobs: the craft venv first on PATH.

    sbatch passes it on (--export=ALL), so jobs find ``craft`` and the venv's python.
    """
    dirs = [str(Path(sys.executable).parent)]
    venv_bin = REPO / ".venv" / "bin"
    if venv_bin.is_dir() and str(venv_bin) not in dirs:
        dirs.append(str(venv_bin))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(dirs + [env.get("PATH", "")])
    env.pop("SNAKEMAKE_PROFILE", None)
    # the test cluster's GPUs are /dev/null clones: its GPU jobs run on the CPU by consent
    # (craft.device; a real cluster's GPU job whose torch sees no GPU stops instead)
    env["CRAFT_ALLOW_CPU"] = "1"
    # never submit from inside a job: the plugin then strips SLURM_* but be explicit
    for key in [k for k in env if k.startswith("SLURM_")]:
        env.pop(key)
    for tool in ("snakemake", "craft"):
        if shutil.which(tool, path=env["PATH"]) is None:
            pytest.fail(f"{tool} is not on PATH ({env['PATH']}); set up the venv (make venv)")
    return env
