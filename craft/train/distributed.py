"""Data-parallel reward finetuning with DeepSpeed ZeRO (stage 1 or 2), or none.

Launched by torchrun (``torchrun --nproc_per_node=N -m craft.cli align ...``), which sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a single process with ZeRO gets
defaults for them. Each rank draws the same seeded global batch and keeps its share
(images ``rank::world``), so N ranks average to the gradient that one process computes on the
whole batch: the same run, split. ZeRO 1/2 partitions optimizer state (and, in stage 2,
gradients); the LoRA weights stay whole on every rank, so rank 0 writes the outputs.
On CPU (tests) DeepSpeed runs with ``DS_ACCELERATOR=cpu`` and the gloo backend.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch

from craft.device import compute_device
from craft.errors import CraftError


@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    zero_stage: int = 0  # 0: plain PyTorch, no DeepSpeed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, zero_stage: int) -> Parallel:
        """Read torchrun's environment; a lone ZeRO process gets rank 0 of 1 on a free port."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and zero_stage == 0:
            raise CraftError(
                f"WORLD_SIZE={world}: several processes need DeepSpeed; set "
                "methods.<name>.align.zero_stage to 1 or 2"
            )
        if zero_stage:
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        return cls(
            int(os.environ.get("RANK", "0")),
            world,
            int(os.environ.get("LOCAL_RANK", "0")),
            zero_stage,
        )

    def check_devices(self) -> torch.device:
        """The device of this rank; on GPUs, the visible ones must be the processes per node."""
        if not torch.cuda.is_available():
            return torch.device(compute_device())  # cpu, or a stop where SLURM gave GPUs
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
        visible = torch.cuda.device_count()
        if self.zero_stage and visible != per_node:
            raise CraftError(
                f"{visible} GPUs are visible but {per_node} processes run on this node; "
                "set resources.align.gpu to the GPUs per node (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def shard(self, n: int, rank: int | None = None) -> slice:
        """This rank's (or ``rank``'s) rows of a global batch of ``n``."""
        if n % self.world:
            raise CraftError(
                f"batch_size {n} does not split over {self.world} processes; use a multiple"
            )
        return slice(self.rank if rank is None else rank, None, self.world)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Mean of per-rank scalars over the ranks (for logging)."""
        if self.world == 1 or not values:
            return values
        import torch.distributed as dist

        t = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world).tolist(), strict=True))

    def barrier(self) -> None:
        if self.zero_stage:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_engine(module, params, optimizer, parallel: Parallel, micro_batch: int):
    """Wrap the trainable module and its torch optimizer in a DeepSpeed ZeRO engine."""
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": parallel.zero_stage},
        "gradient_clipping": 1.0,  # as the single-process recipe
        "zero_allow_untested_optimizer": True,  # torch AdamW, the single-process optimizer
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=params, optimizer=optimizer, config=config
    )
    return engine
