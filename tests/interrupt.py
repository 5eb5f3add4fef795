"""Start a training script in a subprocess, wait for its first checkpoint, send SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sigterm_after_checkpoint(script: Path, args: list[str], ckpt: Path) -> tuple[int, str]:
    """Run ``script args`` from the repository (one thread), SIGTERM it once ``ckpt`` holds
    ``state.pt``; returns its exit code and stderr. Fails if it ends first or saves nothing
    within 120 s."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (ckpt / "state.pt").is_file():
            assert proc.poll() is None, f"ended early: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err
