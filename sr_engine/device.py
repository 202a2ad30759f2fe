"""Device placement: which torch device the engine runs on (workers, training, reader studies)."""
from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> str:
    """`auto` → cuda:0 (the first visible GPU) when CUDA is there, else cpu; a named device is checked."""
    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} requested but CUDA is not available on this host")
        return requested
    return "cuda:0" if torch.cuda.is_available() else "cpu"
