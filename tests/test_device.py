"""A job SLURM gave GPUs stops when torch sees none, instead of running on the CPU for days."""

import pytest

from craft.device import ALLOW_CPU, GPU_VARIABLES, compute_device, granted_gpus
from craft.errors import CraftError


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    for name in (*GPU_VARIABLES, ALLOW_CPU):
        monkeypatch.delenv(name, raising=False)


def test_a_job_without_gpus_runs_on_the_cpu():
    assert granted_gpus() is None and compute_device() == "cpu"
    import os

    os.environ["SLURM_GPUS_ON_NODE"] = "0"  # SLURM's way of saying none
    try:
        assert granted_gpus() is None and compute_device() == "cpu"
    finally:
        del os.environ["SLURM_GPUS_ON_NODE"]


@pytest.mark.parametrize("name", GPU_VARIABLES)
def test_a_job_given_gpus_that_torch_cannot_see_stops_with_what_to_check(monkeypatch, name):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the job would use it")
    monkeypatch.setenv(name, "0" if name != "SLURM_GPUS_ON_NODE" else "2")  # index 0: a GPU
    with pytest.raises(CraftError, match=rf"SLURM gave this job GPU\(s\) \({name}=") as err:
        compute_device()
    assert "nvidia-smi" in str(err.value) and "CRAFT_ALLOW_CPU=1" in str(err.value)
    monkeypatch.setenv(ALLOW_CPU, "1")
    assert compute_device() == "cpu"


def test_the_job_log_says_once_where_it_computes(capsys, monkeypatch):
    import craft.device as device

    monkeypatch.setattr(device, "_said", set())
    compute_device()
    compute_device()
    said = capsys.readouterr().err
    assert said.count("computing on ") == 1 and "torch " in said
