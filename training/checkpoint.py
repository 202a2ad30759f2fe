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


# Keys of the dict the training loop saves as last.pt (training.loop): never in a weights file.
_TRAINING_STATE_KEYS = frozenset({"model", "ema", "optimizer", "scheduler", "rng", "step"})


def is_training_state(path: Path | str) -> bool:
    """Whether `path` is a training loop's last.pt (model + optimizer + RNG), not plain weights.

    Decided from the pickle's opcodes (pickletools parses, it never executes), so a file from
    elsewhere is not unpickled to find out.
    """
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return False
            data = zf.read(name)
        strings = {arg for op, arg, _ in pickletools.genops(data)
                   if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE") and isinstance(arg, str)}
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False
    return _TRAINING_STATE_KEYS <= strings


def training_state_hint(path: Path | str) -> str:
    """What to use instead of a run's last.pt where model weights are expected."""
    path = Path(path)
    present = [n for n in ("final_ema.pt", "best_ema.pt") if (path.parent / n).exists()]
    use = " or ".join(str(path.parent / n) for n in present) or \
        f"{path.parent / 'final_ema.pt'} (written when the run finishes) or best_ema.pt"
    return (f"{path}: this is a training-state checkpoint (a run's last.pt: model, optimizer and "
            f"RNG states, for resuming), not model weights; use the run's EMA weights: {use}")


def load_init_checkpoint(path: Path | str, arch: str) -> Any:
    """The spandrel descriptor of an `--init` checkpoint, refused unless it is `arch`'s.

    The architecture is detected from the keys (sr_engine.archs' spandrel registry), so a wrong
    file is named for what it is ("this is a SwinIR checkpoint, not a realesrgan one") rather
    than failing on the first missing key of the expected architecture.
    """
    from sr_engine.archs import SPANDREL_ID, CheckpointError, load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if is_training_state(path):
        raise CheckpointError(training_state_hint(path) + " (to continue that run, pass its folder as --out)")
    descriptor = load_checkpoint(path)
    got, want = str(descriptor.architecture.id), SPANDREL_ID.get(arch, arch)
    if got != want:
        ours = sorted(n for n, i in SPANDREL_ID.items() if i == got)
        hint = f"; for this file use --preset {' or '.join(ours)}" if ours else "; srnode cannot train it"
        raise CheckpointError(f"{path}: this is a {got} checkpoint, not a {arch} one{hint}")
    return descriptor
