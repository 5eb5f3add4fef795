"""Where a job computes: the GPU when torch sees one, and a clear stop when SLURM gave the job
GPUs that torch cannot use (a CPU build of torch, or a driver older than its CUDA), instead of a
silent run on the CPU that takes days.

Imports torch only when asked for the device.
"""

from __future__ import annotations

import os

from craft.errors import CraftError

#: Set to 1 to let a job that SLURM gave GPUs run on the CPU (the test cluster's fake GPUs).
ALLOW_CPU = "CRAFT_ALLOW_CPU"
#: What SLURM sets in a job that was given GPUs.
GPU_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


def granted_gpus() -> str | None:
    """``NAME=value`` of the first SLURM variable saying this job was given GPUs, else None."""
    for name in GPU_VARIABLES:
        value = os.environ.get(name, "").strip()
        # SLURM_JOB_GPUS and SLURM_STEP_GPUS list GPU indices ("0" is the first GPU);
        # SLURM_GPUS_ON_NODE counts them
        if value and not (name == "SLURM_GPUS_ON_NODE" and value == "0"):
            return f"{name}={value}"
    return None


def compute_device() -> str:
    """``cuda`` when torch sees a GPU; else ``cpu``, unless SLURM gave this job GPUs (then a
    CraftError saying why torch sees none and what to check; ``CRAFT_ALLOW_CPU=1`` runs on the
    CPU anyway)."""
    import torch

    if torch.cuda.is_available():
        _say_once(f"computing on cuda ({torch.cuda.get_device_name(0)}, torch {torch.__version__})")
        return "cuda"
    granted = granted_gpus()
    if granted and os.environ.get(ALLOW_CPU) != "1":
        build = torch.version.cuda
        what = f"built for CUDA {build}" if build else "a CPU-only build"
        raise CraftError(
            f"SLURM gave this job GPU(s) ({granted}) but torch {torch.__version__} ({what}) "
            "sees none; run `nvidia-smi` in a job and check that the node's driver supports "
            f"that CUDA (docs/troubleshooting.md), or set {ALLOW_CPU}=1 to run on the CPU"
        )
    _say_once(f"computing on the CPU (torch {torch.__version__})")
    return "cpu"


_said: set[str] = set()


def _say_once(line: str) -> None:
    """Each job's log says once where it computes (the walkthrough's smoke run reads it)."""
    if line not in _said:
        _said.add(line)
        from craft.progress import log

        log(line)
