"""Shared set-up of training jobs: threads, seeds, device, and a description of the machine."""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

from craft.device import compute_device


def setup_torch(seed: int, threads: int | None = None) -> torch.device:
    """Seed every RNG, cap CPU threads (SLURM's allocation, or ``threads``), pick the device."""
    if threads is None:
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.device(compute_device())


def machine_description(device: torch.device) -> str:
    """The torch build, device and CPU kernel level that produced a model, for its card.

    The same seed and config give bit-equal weights on one kind of machine, but not across
    kinds: another CPU instruction set (torch dispatches AVX2 or AVX-512 kernels) or GPU model
    rounds differently, and reward finetuning amplifies that into different images. Merging
    runs from several clusters, this says which runs may differ for that reason alone.
    """
    if device.type == "cuda":
        where = f"cuda {torch.cuda.get_device_name(device)}"
    else:
        where = f"cpu {_cpu_name()}"
    threads = torch.get_num_threads()
    return (
        f"torch {torch.__version__}, {where} ({platform.machine()}, "
        f"{torch.backends.cpu.get_cpu_capability()}), {threads} thread{'s' * (threads != 1)}"
    )


def _cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or platform's best guess."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
