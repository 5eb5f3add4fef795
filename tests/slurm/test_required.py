"""Where a usable cluster is required (CRAFT_REQUIRE_SLURM=1, as .ci/run sets it), its absence
fails the SLURM tests instead of skipping them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run_without_sinfo(tmp_path: Path, require: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CRAFT_REQUIRE_SLURM"}
    env["PATH"] = str(tmp_path)  # no sinfo there
    if require:
        env["CRAFT_REQUIRE_SLURM"] = "1"
    test = "tests/slurm/test_slurm_workflow.py::test_workflow_on_slurm_matches_local"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_cluster_skips_unless_one_is_required(tmp_path):
    skipped = _run_without_sinfo(tmp_path, require=False)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-500:]
    failed = _run_without_sinfo(tmp_path, require=True)
    assert failed.returncode == 1, failed.stdout[-500:]
    assert "CRAFT_REQUIRE_SLURM=1 but sinfo is not on PATH" in failed.stdout
