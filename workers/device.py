"""Device placement: which torch device a worker process runs its models on."""
from __future__ import annotations

import os

import torch


def pick_device(requested: str = "auto") -> str:
    """`auto` → cuda:N (CUDA_VISIBLE_DEVICES order, first) when CUDA is there, else cpu."""
    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} requested but CUDA is not available on this host")
        return requested
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def limit_cpu_threads(device: str, threads: int | None = None) -> None:
    """On CPU keep torch to a few threads so the node's own threads are not starved."""
    if device == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))
