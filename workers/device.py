"""Device placement: which torch device a worker process runs its models on."""
from __future__ import annotations

import os

import torch


def limit_cpu_threads(device: str, threads: int | None = None) -> None:
    """On CPU keep torch to a few threads so the node's own threads are not starved."""
    if device == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))
