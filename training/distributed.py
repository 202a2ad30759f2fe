"""DDP setup for `torchrun` (single process when WORLD_SIZE is unset)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sr_engine.device import pick_device as engine_pick_device


@dataclass(frozen=True)
class DistInfo:
    """This process' place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        return self.rank == 0


def pick_device(requested: str = "auto") -> torch.device:
    """The engine's device choice (sr_engine.device), as a torch.device."""
    return torch.device(engine_pick_device(requested))


def init_distributed(requested_device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(requested_device)
    if world <= 1:
        return DistInfo(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op when single process)."""
    if info.world_size > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
