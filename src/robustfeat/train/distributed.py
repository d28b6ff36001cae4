"""Distributed setup: which process this is (rank, world size, local GPU) and joining the
process group when torchrun launched it (DDP over NCCL on GPUs, gloo on CPU)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    joined: bool = False  # in a process group (launched by torchrun, one process or more)

    @property
    def main(self) -> bool:
        return self.rank == 0


TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def setup_distributed(device: torch.device, timeout_s: float = 300.0) -> Distributed:
    """Join the process group when launched by torchrun (its env:// variables are set), with one
    process too: DDP over NCCL on a single GPU runs the multi-GPU code path."""
    if not all(name in os.environ for name in TORCHRUN_ENV):
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), True
    )
