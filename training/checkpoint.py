"""Atomic training checkpoints: model, EMA, optimizer, scheduler, step and every RNG state."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Snapshot of the Python, NumPy and torch (CPU and CUDA) random generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: Path | str) -> Path:
    """torch.save to a temporary file and rename it into place (never a torn checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_training_state(path: Path | str) -> dict[str, Any]:
    """Load a training-state checkpoint written by save_atomic (trusted: our own file)."""
    # weights_only=False: the state holds optimizer/RNG objects; only load your own run's files.
    return torch.load(Path(path), map_location="cpu", weights_only=False)
