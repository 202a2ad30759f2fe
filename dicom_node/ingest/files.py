"""The instance files: written atomically and fsynced (one directory fsync per directory for a
batch), and removed again when the instance is refused."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dicom_node.storage import atomic_write, fsync_dir


def write_instance(target: Path, data: bytes, root: Path) -> int:
    """Write one file (atomic, fsynced, its directory too); its size. `target` is resolved inside `root`."""
    return atomic_write(target, data, root=root)


def write_instances(targets: Sequence[Path], items: Sequence[bytes], root: Path) -> list[int]:
    """Write each file (atomic, fsynced), then fsync each directory once; their sizes."""
    sizes = [atomic_write(target, data, root=root, sync_dir=False) for target, data in zip(targets, items)]
    for directory in dict.fromkeys(target.parent for target in targets):
        fsync_dir(directory)
    return sizes


def remove_new(targets: list[Path]) -> None:
    # Not acknowledged and not indexed: leave nothing behind.
    for target in targets:
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass
