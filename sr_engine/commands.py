"""What `srnode models list`, `srnode sr` and `srnode evaluate` do (imported only when run)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from tqdm import tqdm

from config.schema import ModelEntry
from sr_engine import registry
from sr_engine.archs import CheckpointError
from sr_engine.dicom_io import find_image_series
from sr_engine.evaluate import Slice, evaluate_slices, format_table, slice_source, summarize
from sr_engine.intensity import modality_values

log = logging.getLogger(__name__)


def _guard(func):  # noqa: ANN001, ANN202 - wraps a command so user errors are one line, not a trace
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (CheckpointError, registry.UnknownModelError, ValueError, FileNotFoundError) as exc:
            log.error("%s", exc)
            return 1
    return run


def _models_config(args: argparse.Namespace) -> dict[str, ModelEntry]:
    if not getattr(args, "config", None):
        return {}
    from config.loader import load_config

    return load_config(args.config).models


def _spec(args: argparse.Namespace) -> registry.ModelSpec:
    spec = registry.resolve(args.model, _models_config(args))
    changes: dict = {}
    if args.weights:
        changes["weights"] = Path(args.weights)
        changes["sha256"] = args.sha256  # a config sha256 belongs to the config's file
    elif args.sha256:
        changes["sha256"] = args.sha256
    if args.scale:
        changes["scale"] = args.scale
    return dataclasses.replace(spec, **changes) if changes else spec


def _threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def _load(args: argparse.Namespace) -> registry.LoadedModel:
    return registry.load(
        _spec(args), args.device, tile=args.tile or None, overlap=args.overlap, batch=args.batch,
        precision=args.precision,
    )


@_guard
def cmd_models_list(args: argparse.Namespace) -> int:
    """Print every model the node can resolve."""
    rows = []
    for s in registry.all_specs(_models_config(args)):
        weights = str(s.weights) if s.weights else "-"
        status = "built-in" if s.arch in ("bicubic", "lanczos") else (
            "ok" if s.weights and s.weights.is_file() else "no weights")
        rows.append((s.name, s.arch, f"x{s.scale}", status, (s.sha256 or "-")[:12], weights))
    widths = [max(len(r[i]) for r in rows + [("name", "arch", "scale", "status", "sha256", "weights")]) for i in range(6)]
    for r in [("name", "arch", "scale", "status", "sha256", "weights")] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


@_guard
def cmd_sr(args: argparse.Namespace) -> int:
    """Upscale every image instance under IN_DIR; write derived DICOM objects to OUT_DIR."""
    from dicom_node.derive.writer import Derivation, derive_classic

    _threads(args)
    model = _load(args)
    series = find_image_series([Path(args.in_dir)])
    total = sum(len(s.files) for s in series)
    if not total:
        log.error("no image instances found under %s", args.in_dir)
        return 1
    derivation = Derivation(model.spec.name, model.checkpoint_sha256, model.scale)
    out_root = Path(args.out_dir)
    written = failed = 0
    with tqdm(total=total, unit="slice", desc=f"sr {model.spec.name}", file=sys.stderr) as bar:
        for s in series:
            datasets, values = [], []
            for path in s.files:
                try:
                    ds = pydicom.dcmread(path)
                    v = modality_values(ds)
                except Exception as exc:  # noqa: BLE001 - one bad file must not stop the series
                    log.error("cannot decode %s: %s", path, exc)
                    failed += 1
                    bar.update(1)
                    continue
                if v.ndim != 2:
                    log.error("skipping %s: multi-frame objects are not handled by `srnode sr`", path)
                    failed += 1
                    bar.update(1)
                    continue
                datasets.append(ds)
                values.append(v)
            if not values:
                continue
            mapping = model.mapping(s.modality, values=_stack(values))
            target = out_root / derivation.series_uid(s.series_uid)
            target.mkdir(parents=True, exist_ok=True)
            for k in range(0, len(values), args.batch):
                out = model.upscale(_stack(values[k: k + args.batch]), mapping)
                for ds, up in zip(datasets[k: k + args.batch], out):
                    derived = derive_classic(ds, up, derivation)
                    derived.save_as(target / f"{derived.SOPInstanceUID}.dcm", enforce_file_format=True)
                    written += 1
                bar.update(len(out))
    log.info("wrote %d derived instances to %s (%d skipped)", written, out_root, failed)
    return 0 if written and not failed else (2 if written else 1)


def _stack(values: list[np.ndarray]) -> np.ndarray:
    """Slices of one series as one float32 array [N, H, W]."""
    shapes = {v.shape for v in values}
    if len(shapes) == 1:
        return np.stack(values).astype(np.float32)
    raise ValueError(f"slices of one series differ in size: {sorted(shapes)}")


def _ct_slices(dirs: list[Path], limit: int | None) -> list[Slice]:
    slices: list[Slice] = []
    for s in find_image_series(dirs):
        if s.modality != "CT":
            log.info("skipping series %s: modality %s (evaluation is in HU, CT only)", s.series_uid, s.modality or "?")
            continue
        for path in s.files:
            try:
                v = modality_values(pydicom.dcmread(path))
            except Exception as exc:  # noqa: BLE001
                log.error("cannot decode %s: %s", path, exc)
                continue
            frames = [v] if v.ndim == 2 else list(v)
            for i, f in enumerate(frames):
                slices.append(Slice(slice_source(path, None if v.ndim == 2 else i), f))
                if limit and len(slices) >= limit:
                    return slices
    return slices


@_guard
def cmd_evaluate(args: argparse.Namespace) -> int:
    """HR -> degrade -> model and bicubic -> PSNR/SSIM in HU; print a table, write per-slice JSON."""
    _threads(args)
    model = _load(args)
    baseline = registry.load(registry.resolve("bicubic"))
    baseline = registry.load(dataclasses.replace(baseline.spec, scale=model.scale))
    slices = _ct_slices([Path(d) for d in args.dirs], args.max_slices)
    if not slices:
        log.error("no CT slices found under %s", ", ".join(args.dirs))
        return 1
    upscalers = {model.spec.name: model.upscale}
    if model.spec.name != "bicubic":
        upscalers["bicubic"] = baseline.upscale
    t0 = time.perf_counter()
    with tqdm(total=len(slices), unit="slice", desc=f"evaluate {model.spec.name}", file=sys.stderr) as bar:
        results = evaluate_slices(
            slices, upscalers, model.scale, batch=args.batch, project=args.project, progress=bar.update
        )
    elapsed = time.perf_counter() - t0
    summary = summarize(results)
    print(format_table(summary, len(results)))
    print(f"\n{len(results)} slices in {elapsed:.1f} s ({elapsed / len(results):.2f} s/slice, "
          f"{torch.get_num_threads()} threads); checkpoint sha256 {model.checkpoint_sha256}")
    if args.json:
        doc = {
            "model": model.spec.name,
            "arch": model.spec.arch,
            "weights": str(model.spec.weights) if model.spec.weights else None,
            "checkpoint_sha256": model.checkpoint_sha256,
            "scale": model.scale,
            "lr_operator": "F.interpolate(hr, scale_factor=1/scale, mode='bicubic', antialias=True)",
            "seconds": elapsed,
            "summary": summary,
            "slices": results,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
        log.info("per-slice results written to %s", args.json)
    return 0
