"""Shared set-up of training jobs: threads, seeds, device."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def setup_torch(seed: int, threads: int | None = None) -> torch.device:
    """Seed every RNG, cap CPU threads (SLURM's allocation, or ``threads``), pick the device."""
    if threads is None:
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
    if threads:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
