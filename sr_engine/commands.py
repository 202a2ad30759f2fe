"""What `srnode models list` and `srnode evaluate` do (imported only when run); `srnode sr`, which
writes DICOM, is dicom_node.derive.sr_command."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from tqdm import tqdm

from sr_engine import registry
from sr_engine.archs import CheckpointError
from sr_engine.dicom_io import find_image_series
from sr_engine.evaluate import Slice, evaluate_slices, format_table, slice_source, summarize
from sr_engine.intensity import modality_values
from sr_engine.model_entry import ModelEntry
from sr_engine.native_eval import NativeSeries, centre_crop, evaluate_native, evenly_spaced, write_native_report

log = logging.getLogger(__name__)


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command so user errors are one line, not a trace."""
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (CheckpointError, registry.UnknownModelError, ValueError, FileNotFoundError) as exc:
            log.error("%s", exc)
            return 1
    return run


def _node_config(args: argparse.Namespace) -> Any:
    """The node YAML of `--config`, read by the function the CLI assembly hands every command
    (`args.load_config`, srnode/cli.py): the engine reads configs without importing them."""
    reader = getattr(args, "load_config", None)
    if reader is None:
        raise ValueError("--config is read by the srnode command line (args.load_config is not set)")
    return reader(args.config)


def _models_config(args: argparse.Namespace) -> dict[str, ModelEntry]:
    if not getattr(args, "config", None):
        return {}
    return dict(_node_config(args).models)


def _spec(args: argparse.Namespace, name: str | None = None) -> registry.ModelSpec:
    spec = registry.resolve(name or args.model, _models_config(args))
    changes: dict[str, Any] = {}
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


def _memory_budget(args: argparse.Namespace) -> int | None:
    """`--max-memory-mb`, else the config's `worker.max_memory_mb`, else the machine's default;
    0 turns planning off (tiles then shrink only after an out-of-memory error)."""
    from sr_engine.memory import default_budget_mb

    budget = getattr(args, "max_memory_mb", None)
    if budget is None and getattr(args, "config", None):
        budget = _node_config(args).worker.max_memory_mb
    if budget == 0:
        return None
    return budget or default_budget_mb()


def _load(args: argparse.Namespace, name: str | None = None, plan_memory: bool = False) -> registry.LoadedModel:
    # plan_memory: `srnode sr` fits tiles and batch into a budget like the worker; `evaluate` keeps
    # its fixed --tile so that its figures stay comparable between runs and machines.
    return registry.load(
        _spec(args, name), args.device, tile=args.tile or None, overlap=args.overlap, batch=args.batch,
        precision=args.precision, max_memory_mb=_memory_budget(args) if plan_memory else None,
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
    header = ("name", "arch", "scale", "status", "sha256", "weights")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(6)]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


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


def _native_series(dirs: list[Path], per_series: int | None, crop: int | None) -> list[NativeSeries]:
    """CT series under `dirs`, `per_series` evenly spaced native slices each, centre-cropped."""
    out: list[NativeSeries] = []
    for s in find_image_series(dirs):
        if s.modality != "CT":
            log.info("skipping series %s: modality %s (native metrics are in HU, CT only)",
                     s.series_uid, s.modality or "?")
            continue
        # Label: the series' folder as given on the command line, never DICOM patient attributes.
        entry = NativeSeries(label=s.files[0].parent.name or str(s.files[0].parent))
        for i in evenly_spaced(len(s.files), per_series):
            path = s.files[i]
            try:
                v = modality_values(pydicom.dcmread(path))
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the series
                log.error("cannot decode %s: %s", path, exc)
                continue
            frames = [v] if v.ndim == 2 else list(v)
            picks = [0] if v.ndim == 2 else evenly_spaced(len(frames), per_series)
            for f in picks:
                entry.sources.append(slice_source(path, None if v.ndim == 2 else f))
                entry.slices.append(centre_crop(frames[f], crop).astype(np.float32))
        if entry.slices:
            if any(e.label == entry.label for e in out):
                entry.label = f"{entry.label}#{len(out) + 1}"
            out.append(entry)
    return out


def _evaluate_native(args: argparse.Namespace) -> int:
    """Native slices -> each model and lanczos -> noise/edge ratios; table, JSON, plot, crops."""
    if args.project:
        raise ValueError("--project belongs to the 128→512 protocol, not to --native")
    if not args.out:
        raise ValueError("--native needs --out DIR (table, JSON, plot and crops are written there)")
    if len(args.model) > 1 and (args.weights or args.sha256):
        raise ValueError("--weights/--sha256 apply to one model; name several models in a --config instead")
    if args.crop is not None and args.crop < 32:
        raise ValueError(f"--crop {args.crop}: at least 32 native pixels (the masks use 9x9 windows)")
    models = [_load(args, name) for name in args.model]
    scales = {m.scale for m in models}
    if len(scales) != 1:
        raise ValueError(f"the models differ in scale ({sorted(scales)}); compare models of one scale")
    scale = scales.pop()
    series = _native_series([Path(d) for d in args.dirs], args.max_slices, args.crop)
    if not series:
        log.error("no CT slices found under %s", ", ".join(args.dirs))
        return 1
    upscalers = {m.spec.name: (lambda v, m=m: m.upscale(v, m.mapping("CT"))) for m in models}
    total = sum(len(s.slices) for s in series)
    t0 = time.perf_counter()
    with tqdm(total=total, unit="slice", desc="evaluate --native", file=sys.stderr) as bar:
        rows, showcases = evaluate_native(series, upscalers, scale, batch=args.batch, progress=bar.update,
                                          on_series=lambda label: bar.set_postfix_str(label))
    elapsed = time.perf_counter() - t0
    meta = {
        "models": {m.spec.name: {"arch": m.spec.arch, "checkpoint_sha256": m.checkpoint_sha256,
                                 "weights": str(m.spec.weights) if m.spec.weights else None} for m in models},
        "crop": args.crop, "max_slices_per_series": args.max_slices, "seconds": elapsed,
        "threads": torch.get_num_threads(),
    }
    paths = write_native_report(Path(args.out), rows, showcases, scale, meta)
    if args.json:
        Path(args.json).write_text(paths["json"].read_text())
    print(paths["table"].read_text())
    print(f"{total} slices of {len(series)} series in {elapsed:.1f} s ({elapsed / total:.2f} s/slice, "
          f"{torch.get_num_threads()} threads); written to {args.out}")
    return 0


@_guard
def cmd_evaluate(args: argparse.Namespace) -> int:
    """HR -> degrade -> model and bicubic -> PSNR/SSIM in HU; print a table, write per-slice JSON.

    With --native: no ground truth; native slices against lanczos (see sr_engine.native_eval).
    """
    _threads(args)
    if args.native:
        return _evaluate_native(args)
    if len(args.model) > 1:
        raise ValueError("the 128→512 protocol scores one --model per run; repeat --model only with --native")
    if args.crop or args.out:
        raise ValueError("--crop and --out belong to --native")
    model = _load(args, args.model[0])
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
