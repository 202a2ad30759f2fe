"""`srnode sr`: upscale every image instance under IN_DIR and write derived DICOM objects to OUT_DIR.

The engine upscales (sr_engine) and this package writes the derived objects (highdicom), so the
command sits on both, in the node: the engine imports nothing of the node. It takes the engine's
model options (`--model`, `--weights`, `--config`, ...) exactly as `srnode evaluate` does.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sr_engine.cli import _model_options

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `srnode sr`."""
    sr = subparsers.add_parser("sr", help="upscale every image instance under IN_DIR into OUT_DIR")
    _model_options(sr)
    sr.add_argument("--max-memory-mb", type=int, default=None,
                    help="memory budget (RSS, MiB) that tile size and batch are planned to fit (default: "
                         "worker.max_memory_mb of --config, else half the machine's memory, 1-4 GiB; "
                         "0: no plan, tiles shrink only after an out-of-memory error)")
    sr.add_argument("--transfer-syntax", default=None,
                    choices=("explicit_le", "jpeg2000_lossless", "jpegls_lossless", "rle"),
                    help="of the written files (default: output.transfer_syntax of --config, else the node's default)")
    sr.add_argument("in_dir", metavar="IN_DIR")
    sr.add_argument("out_dir", metavar="OUT_DIR")
    sr.set_defaults(func=cmd_sr)


def cmd_sr(args: argparse.Namespace) -> int:
    """Upscale every image instance under IN_DIR; write derived DICOM objects to OUT_DIR."""
    # Imported when the command runs: registering it must not import torch (`srnode --help`).
    from sr_engine.commands import _guard

    return int(_guard(_upscale_folder)(args))


def _transfer_syntax(args: argparse.Namespace) -> str:
    from config.schema import OutputConfig

    if args.transfer_syntax:
        return str(args.transfer_syntax)
    if args.config:
        from config.loader import load_config

        return load_config(args.config).output.transfer_syntax
    return OutputConfig().transfer_syntax


def _upscale_folder(args: argparse.Namespace) -> int:
    import pydicom
    from tqdm import tqdm

    from dicom_node.derive.writer import Derivation, derive_classic, encode
    from sr_engine.commands import _load, _threads
    from sr_engine.dicom_io import find_image_series
    from sr_engine.intensity import modality_values

    _threads(args)
    model = _load(args, plan_memory=True)
    series = find_image_series([Path(args.in_dir)])
    total = sum(len(s.files) for s in series)
    if not total:
        log.error("no image instances found under %s", args.in_dir)
        return 1
    syntax = _transfer_syntax(args)
    derivation = Derivation(model.spec.name, model.checkpoint_sha256, model.scale, transfer_syntax=syntax)
    out_root = Path(args.out_dir)
    written = failed = 0

    def read(path: Path) -> tuple[pydicom.Dataset, np.ndarray] | None:
        nonlocal failed
        try:
            ds = pydicom.dcmread(path)
            v = modality_values(ds)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the series
            log.error("cannot decode %s: %s", path, exc)
            failed += 1
            return None
        if v.ndim != 2:
            log.error("skipping %s: multi-frame objects are not handled by `srnode sr`", path)
            failed += 1
            return None
        return ds, v

    with tqdm(total=total, unit="slice", desc=f"sr {model.spec.name}", file=sys.stderr) as bar:
        for s in series:
            # Streamed in chunks of --batch slices, so memory does not grow with the series' length.
            mapping = _series_mapping(model, s.modality, s.files)
            if mapping is None:
                log.error("series %s: no readable slice to compute its intensity mapping from", s.series_uid)
                failed += len(s.files)
                bar.update(len(s.files))
                continue
            target = out_root / derivation.series_uid(s.series_uid)
            target.mkdir(parents=True, exist_ok=True)
            step = _chunk_size(model, s.files[0], args.batch)
            for k in range(0, len(s.files), step):
                chunk = s.files[k: k + step]
                slices = [r for r in map(read, chunk) if r is not None]
                bar.update(len(chunk) - len(slices))
                # One batch per size: a series' slices usually share one, but nothing guarantees it.
                for shape in dict.fromkeys(v.shape for _, v in slices):
                    group = [(ds, v) for ds, v in slices if v.shape == shape]
                    out = model.upscale(_stack([v for _, v in group]), mapping)
                    for (ds, _), up in zip(group, out):
                        derived = encode(derive_classic(ds, up, derivation), syntax)
                        derived.save_as(target / f"{derived.SOPInstanceUID}.dcm", enforce_file_format=True)
                        written += 1
                    bar.update(len(group))
    log.info("wrote %d derived instances to %s (%d skipped)", written, out_root, failed)
    return 0 if written and not failed else (2 if written else 1)


def _chunk_size(model, first: Path, batch: int) -> int:  # type: ignore[no-untyped-def]
    """Slices per call: the memory plan's batch for the series' slice size (its result buffers are
    planned per batch), else --batch."""
    import pydicom

    try:
        ds = pydicom.dcmread(first, stop_before_pixels=True)
        return model.upscaler.chunk_size(int(ds.Rows), int(ds.Columns))
    except Exception:  # noqa: BLE001 - an unreadable first slice is reported by the chunk loop
        return batch


def _series_mapping(model, modality: str, files: list[Path]):  # type: ignore[no-untyped-def]
    """The series' intensity mapping: fixed (CT), or from up to 8 slices spread over the series
    (percentile mappings), as the worker does; None when none of those slices can be read."""
    import numpy as np
    import pydicom

    from sr_engine.intensity import modality_values

    try:
        return model.mapping(modality, None)
    except ValueError:
        pick = np.unique(np.linspace(0, len(files) - 1, num=min(8, len(files))).round().astype(int))
        sample: list[np.ndarray] = []
        for i in pick:
            try:
                sample.append(modality_values(pydicom.dcmread(files[i])).ravel())
            except Exception:  # noqa: BLE001 - the chunk loop reports unreadable slices once
                continue
        return model.mapping(modality, np.concatenate(sample)) if sample else None


def _stack(values: list[np.ndarray]) -> np.ndarray:
    """Slices of one series as one float32 array [N, H, W]."""
    import numpy as np

    shapes = {v.shape for v in values}
    if len(shapes) == 1:
        return np.stack(values).astype(np.float32)
    raise ValueError(f"slices of one series differ in size: {sorted(shapes)}")
