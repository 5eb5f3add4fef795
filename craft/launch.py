"""How a job asks SLURM for what it needs, and how the align job starts its processes.

The config's ``resources`` section is the one place a job's threads, memory, runtime, GPUs and
nodes are set; :func:`rule_resources` turns one rule's entry into the resources the Snakemake
SLURM executor plugin reads. The site's profile holds only what is the site's: the account, and
a partition file (``slurm-partition-config``) from which the plugin picks, per job, a partition
that has GPUs for a job that asks for them and a CPU partition for every other job.

:func:`align_launcher` is the command prefix of the align rule: ``craft`` for one process;
``torchrun`` with one process per GPU the job was granted (``SLURM_GPUS_ON_NODE``, else the
config's count) on one node; and, over several nodes, one torchrun per node under ``srun``,
joined by a c10d rendezvous on the job's first node. The shell expands the SLURM variables when
the job runs; a dry run shows the whole command. This module imports no torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

#: Port of the c10d rendezvous on a multi-node align job's first node.
RENDEZVOUS_PORT = 29400

#: The Snakemake group of one run's evaluation jobs (score per evaluator, evaluate_oracle,
#: audit, downstream, fidelity, memorization), where ``resources.group_evaluations`` is on.
#: Each of them is a connected component of its own; the profile's ``group-components`` names
#: this template to merge a run's components into one group job (one sbatch).
EVALUATION_GROUP = "evaluate-{modality}-{method}-{seed}"
#: The resource every grouped job asks one of. The workflow offers one per group job
#: (``--resources`` of scope local: per group job, not across the workflow), so Snakemake
#: stacks a group's members one after the other: the group job asks for the most threads,
#: memory and GPUs of any member and the sum of their runtimes, and runs them one at a time.
EVALUATION_SLOT = "evaluation_slot"
#: The ``config.resources`` entries of the grouped rules.
EVALUATION_GROUP_STAGES = ("score", "downstream", "evaluate")


class Growing:
    """A resource that grows with the attempt: ``base x growth^(attempt - 1)``, rounded up.
    Snakemake calls it with the job's wildcards and attempt; a retried job (the profile's
    ``retries``) asks for more than the attempt that was killed for memory or time."""

    def __init__(self, base: int, growth: float):
        self.base, self.growth = base, growth

    def __call__(self, wildcards, attempt: int) -> int:
        return math.ceil(self.base * self.growth ** (attempt - 1))

    def __repr__(self) -> str:
        return f"Growing({self.base}, {self.growth})"


def rule_resources(r: Any) -> dict[str, Any]:
    """SLURM plugin resources of one ``config.resources`` entry (a ``Resources``): memory and
    runtime grow with the attempt where ``retry_growth`` is above 1 (:class:`Growing`)."""
    mem_mb, runtime = r.mem_mb, r.runtime
    if r.retry_growth > 1:
        mem_mb, runtime = Growing(mem_mb, r.retry_growth), Growing(runtime, r.retry_growth)
    out: dict[str, Any] = {"runtime": runtime, "mem_mb": mem_mb, "cpus_per_task": r.threads}
    if not r.gpu:
        return out
    if r.nodes > 1:
        # --gres is per node (--gpus would be the job's total, spread as SLURM likes)
        model = f"{r.gpu_model}:" if r.gpu_model else ""
        out.update(nodes=r.nodes, gres=f"gpu:{model}{r.gpu}")
        # the job's shell starts its own srun over the nodes (the plugin's 'mpi' path, one
        # task per node), instead of being wrapped in a one-task srun itself;
        # tasks_per_gpu 0 keeps the plugin from reading 'tasks' as --ntasks-per-gpu
        out.update(mpi="srun", tasks=r.nodes, tasks_per_gpu=0)
    else:
        out["gpu"] = r.gpu
        if r.gpu_model:
            out["gpu_model"] = r.gpu_model
    return out


def grouped_resources(r: Any) -> dict[str, Any]:
    """:func:`rule_resources` of a grouped evaluation rule: one evaluation slot besides."""
    return {**rule_resources(r), EVALUATION_SLOT: 1}


def align_launcher(gpus: int, nodes: int = 1) -> str:
    """The command that starts ``craft.cli`` for an align job of ``gpus`` GPUs per node on
    ``nodes`` nodes (the verb and its arguments follow it)."""
    if nodes <= 1 and gpus <= 1:
        return "craft"
    per_node = f"${{SLURM_GPUS_ON_NODE:-{max(gpus, 1)}}}"
    if nodes <= 1:
        return f"torchrun --standalone --nproc_per_node={per_node} -m craft.cli"
    head = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
    return (
        f"srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1"
        f" torchrun --nnodes={nodes} --nproc_per_node={per_node}"
        f" --rdzv_backend=c10d --rdzv_endpoint={head}:{RENDEZVOUS_PORT}"
        f' --rdzv_id="craft-$SLURM_JOB_ID" -m craft.cli'
    )


def append_to_path(folder: Path | str) -> None:
    """Put ``folder`` last on this process's PATH (once), which its jobs inherit: the
    checkout's ``bin/craft`` for environments without craft of their own (envs/craft.yaml)."""
    folder = str(folder)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if folder not in parts:
        os.environ["PATH"] = os.pathsep.join([*filter(None, parts), folder])
