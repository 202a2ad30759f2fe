"""Zero-shot evaluation on HR slices: LR = degrade(HR), SR = model(LR), metrics in HU.

Per slice: PSNR/SSIM on HU clipped to [-1024, 3071] (data range 4095) and in the window
[-160, 240], plus the LR-consistency PSNR (degrade(SR) against LR, HU range).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sr_engine.intensity import CT_MAPPING, IntensityMapping
from sr_engine.metrics import (
    HU_RANGE,
    degrade,
    lr_consistency_psnr,
    project_consistent,
    psnr_hu,
    psnr_window,
    ssim_hu,
    ssim_window,
)

METRICS: tuple[str, ...] = ("psnr_hu", "ssim_hu", "psnr_win", "ssim_win", "lr_psnr")


@dataclass
class Slice:
    """One HR slice in modality values with where it came from."""

    source: str
    values: np.ndarray  # [H, W] float32 HU


def crop_to_multiple(values: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so both sides are multiples of `scale` (LR size is then exact)."""
    h, w = values.shape[-2:]
    return values[..., : h - h % scale, : w - w % scale]


def _scores(sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor, scale: int) -> dict[str, list[float]]:
    lr_c = lr.clamp(*HU_RANGE)
    return {
        "psnr_hu": psnr_hu(sr, hr).tolist(),
        "ssim_hu": ssim_hu(sr, hr).tolist(),
        "psnr_win": psnr_window(sr, hr).tolist(),
        "ssim_win": ssim_window(sr, hr).tolist(),
        "lr_psnr": lr_consistency_psnr(sr.clamp(*HU_RANGE), lr_c, scale, HU_RANGE[1] - HU_RANGE[0]).tolist(),
    }


def evaluate_slices(
    slices: Iterable[Slice],
    upscalers: Mapping[str, Callable[[np.ndarray, IntensityMapping], np.ndarray]],
    scale: int,
    batch: int = 4,
    mapping: IntensityMapping = CT_MAPPING,
    project: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Per-slice metrics of every named upscaler (e.g. the model and bicubic) on the same LR."""
    results: list[dict[str, Any]] = []
    pending: list[Slice] = []

    def flush() -> None:
        hr = torch.from_numpy(np.stack([crop_to_multiple(s.values, scale) for s in pending])).unsqueeze(1)
        lr = degrade(hr.double(), scale).float()
        rows: list[dict[str, Any]] = [{"source": s.source, "hr_shape": list(hr.shape[-2:])} for s in pending]
        for name, up in upscalers.items():
            sr = torch.from_numpy(up(lr[:, 0].numpy(), mapping)).unsqueeze(1)
            variants = {name: sr}
            if project:
                variants[f"{name}+proj"] = project_consistent(sr, lr, scale)
            for label, out in variants.items():
                scores = _scores(out, hr, lr, scale)
                for i, row in enumerate(rows):
                    row[label] = {m: scores[m][i] for m in METRICS}
        results.extend(rows)
        if progress:
            progress(len(pending))
        pending.clear()

    for s in slices:
        pending.append(s)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return results


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, median and standard deviation of every metric of every method."""
    methods = [k for k in results[0] if isinstance(results[0][k], dict)] if results else []
    out: dict[str, dict[str, dict[str, float]]] = {}
    for m in methods:
        out[m] = {}
        for metric in METRICS:
            vals = [r[m][metric] for r in results if math.isfinite(r[m][metric])]
            out[m][metric] = {
                "mean": statistics.fmean(vals) if vals else float("nan"),
                "median": statistics.median(vals) if vals else float("nan"),
                "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
                "n": len(vals),
            }
    return out


def format_table(summary: dict[str, dict[str, dict[str, float]]], n_slices: int) -> str:
    """A Markdown table: one row per method, mean ± std of each metric."""
    head = (
        f"| method ({n_slices} slices) | PSNR HU [-1024,3071] | SSIM HU | PSNR [-160,240] | SSIM [-160,240] "
        "| LR-consistency PSNR |\n|---|---|---|---|---|---|"
    )
    lines = [head]
    for method, stats in summary.items():
        cells = []
        for metric in METRICS:
            s = stats[metric]
            digits = 4 if metric.startswith("ssim") else 2
            cells.append(f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slice_source(path: Path, frame: int | None = None) -> str:
    """A log/JSON-safe description of a slice: its file path (and frame), never patient data."""
    return f"{path}" if frame is None else f"{path}#frame{frame}"
