"""`srnode evaluate --native`: models at native resolution against lanczos, no ground truth.

Every native slice (optionally centre-cropped first, to bound CPU time) is upscaled by each model
and by lanczos (sr_engine.interpolate, the `lanczos` model's own kernel, clipped to the CT range
the models see); sr_engine.native_metrics gives the noise ratio in flat soft tissue, the edge
ratio at the strongest native edges and an edge-spread MTF50 where a clean straight edge exists.
Results: per slice, per series (median and mean) and over all series; a Markdown table, JSON, a
plot of the two ratios beside each other for every model, and PNG crops of a flat region and an
edge (display window for the PNG only: the arrays stay float HU).
"""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sr_engine import native_metrics as nm
from sr_engine.intensity import CT_RANGE
from sr_engine.interpolate import lanczos_upscale
from sr_engine.metrics import HU_WINDOW

NOISE_TARGET = 1.10  # issue 20: at most 10% more flat-tissue noise than lanczos
EDGE_TARGET = 1.05  # and strong edges at least 5% steeper
FLAT_DISPLAY: tuple[float, float] = HU_WINDOW  # soft tissue, W400 L40
EDGE_DISPLAY: tuple[float, float] = (-1000.0, 1000.0)  # wide: air, soft tissue and bone edges
CROP_NATIVE = 32  # native pixels per side of a PNG crop (128 output pixels at x4)

Upscale = Callable[[np.ndarray], np.ndarray]  # native HU [N, h, w] -> upscaled HU [N, sh, sw]


@dataclass
class NativeSeries:
    """The native slices (HU, float32, cropped if asked) of one series and where they came from."""

    label: str
    sources: list[str] = field(default_factory=list)
    slices: list[np.ndarray] = field(default_factory=list)


def centre_crop(values: np.ndarray, size: int | None) -> np.ndarray:
    """The central size x size pixels of a 2-D slice (the whole slice if it is smaller)."""
    if not size:
        return values
    h, w = values.shape
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return values[y0: y0 + size, x0: x0 + size]


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """k indices spread over range(n) (all of them when k is None or >= n)."""
    if not k or k >= n:
        return list(range(n))
    return sorted({round(i) for i in np.linspace(0, n - 1, k)})


@dataclass
class _Showcase:
    """The slice of a series kept for the PNG crops: the one with the most flat tissue."""

    flat_pixels: int = -1
    native: np.ndarray | None = None
    images: dict[str, np.ndarray] = field(default_factory=dict)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def evaluate_native(
    series: list[NativeSeries],
    upscalers: Mapping[str, Upscale],
    scale: int,
    batch: int = 4,
    progress: Callable[[int], None] | None = None,
    on_series: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, _Showcase]]:
    """Per-slice rows (ratios and MTF50 of every model) and the crop slice of every series."""
    rows: list[dict[str, Any]] = []
    showcases: dict[str, _Showcase] = {}
    for s in series:
        if on_series:
            on_series(s.label)
        show = showcases.setdefault(s.label, _Showcase())
        for k in range(0, len(s.slices), batch):
            natives = s.slices[k: k + batch]
            shapes = {v.shape for v in natives}
            # One model call per batch of equal-sized slices; a series of mixed sizes goes one by one.
            groups = [natives] if len(shapes) == 1 else [[v] for v in natives]
            outputs: dict[str, list[np.ndarray]] = {name: [] for name in upscalers}
            for group in groups:
                stack = np.stack(group).astype(np.float32)
                for name, up in upscalers.items():
                    outputs[name].extend(up(stack))
            for i, native in enumerate(natives):
                lz = lanczos_upscale(native, scale, clip=CT_RANGE)
                sites = nm.find_edge_sites(native)
                row: dict[str, Any] = {
                    "series": s.label, "source": s.sources[k + i], "native_shape": list(native.shape),
                    "lanczos_mtf50": _finite(nm.edge_mtf50(lz, scale, sites)), "edge_sites": len(sites),
                    "models": {}}
                for name in upscalers:
                    sr = outputs[name][i]
                    r = nm.native_ratios(native, sr, lz, scale)
                    row["flat_pixels"], row["edge_pixels"] = r.flat_pixels, r.edge_pixels
                    row["models"][name] = {"noise_ratio": _finite(r.noise_ratio), "edge_ratio": _finite(r.edge_ratio),
                                           "mtf50": _finite(nm.edge_mtf50(sr, scale, sites))}
                rows.append(row)
                if row.get("flat_pixels", 0) > show.flat_pixels:
                    show.flat_pixels = row.get("flat_pixels", 0)
                    show.native = native
                    show.images = {"lanczos": lz, **{name: outputs[name][i] for name in upscalers}}
            if progress:
                progress(len(natives))
    return rows, showcases


def _stats(values: list[float | None]) -> dict[str, float | int | None]:
    vals = [v for v in values if v is not None]
    return {"median": statistics.median(vals) if vals else None,
            "mean": statistics.fmean(vals) if vals else None, "n": len(vals)}


def summarize_native(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{series label or "all": {model: {noise_ratio, edge_ratio, mtf50, lanczos_mtf50: stats}}}."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["series"], []).append(r)
    if len(groups) > 1:
        groups["all"] = rows
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for label, members in groups.items():
        out[label] = {}
        for model in members[0]["models"]:
            out[label][model] = {
                "slices": len(members),
                **{m: _stats([r["models"][model][m] for r in members]) for m in ("noise_ratio", "edge_ratio", "mtf50")},
                "lanczos_mtf50": _stats([r["lanczos_mtf50"] for r in members]),
            }
    return out


def _fmt(s: dict[str, Any], digits: int = 3) -> str:
    if s["median"] is None:
        return "–"
    return f"{s['median']:.{digits}f} ({s['mean']:.{digits}f})"


def meets_targets(stats: dict[str, Any]) -> bool | None:
    """Both issue-20 targets on the medians (None when a ratio could not be measured)."""
    noise, edge = stats["noise_ratio"]["median"], stats["edge_ratio"]["median"]
    if noise is None or edge is None:
        return None
    return noise <= NOISE_TARGET and edge >= EDGE_TARGET


def format_native_table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: one row per series and model, medians (means) and whether both targets hold."""
    lines = [
        (f"| series | model | slices | noise ratio (≤ {NOISE_TARGET:.2f}) | edge ratio (≥ {EDGE_TARGET:.2f}) "
         "| MTF50 model / lanczos (cycles per native px) | targets met |"),
        "|---|---|---|---|---|---|---|",
    ]
    for label, models in summary.items():
        for model, st in models.items():
            ok = meets_targets(st)
            mtf = (f"{st['mtf50']['median']:.3f} / {st['lanczos_mtf50']['median']:.3f}"
                   if st["mtf50"]["median"] is not None and st["lanczos_mtf50"]["median"] is not None else "–")
            lines.append(f"| {label} | {model} | {st['slices']} | {_fmt(st['noise_ratio'])} | {_fmt(st['edge_ratio'])} "
                         f"| {mtf} | {'–' if ok is None else ('yes' if ok else 'no')} |")
    lines.append("\nRatios: median (mean) over slices, SR / lanczos of the same native slice.")
    return "\n".join(lines)


def plot_native(rows: list[dict[str, Any]], summary: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """Noise ratio and edge ratio beside each other, every model, series medians, targets drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(rows[0]["models"])
    series = [label for label in summary if label != "all"]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(models), 4.2), sharex=True)
    markers = "osD^vP*X"
    for ax, metric, target, title in (
        (axes[0], "noise_ratio", NOISE_TARGET, f"flat-tissue noise / lanczos (target ≤ {NOISE_TARGET:.2f})"),
        (axes[1], "edge_ratio", EDGE_TARGET, f"strong-edge gradient / lanczos (target ≥ {EDGE_TARGET:.2f})"),
    ):
        for j, model in enumerate(models):
            vals = [r["models"][model][metric] for r in rows if r["models"][model][metric] is not None]
            jitter = np.random.default_rng(j).uniform(-0.18, 0.18, len(vals))
            ax.scatter(j + jitter, vals, s=6, color="0.75", zorder=1)  # every slice
            for k, label in enumerate(series):
                med = summary[label][model][metric]["median"]
                if med is not None:
                    ax.scatter(j + (k - (len(series) - 1) / 2) * 0.12, med, marker=markers[k % len(markers)],
                               color=f"C{k % 10}", s=40, zorder=3, label=label if j == 0 else None)
        ax.axhline(1.0, color="0.4", lw=0.8, ls=":", label="lanczos" if metric == "noise_ratio" else None)
        ax.axhline(target, color="tab:red", lw=1.2, ls="--", label="target")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _densest(mask: np.ndarray, size: int) -> tuple[int, int] | None:
    """Centre of the size x size window holding the most mask pixels (None: empty mask)."""
    if not mask.any():
        return None
    density = nm.box_mean(mask.astype(np.float64), size | 1)
    y, x = np.unravel_index(int(np.argmax(density)), density.shape)
    return int(y), int(x)


def _window_box(centre: tuple[int, int], shape: tuple[int, int], size: int) -> tuple[int, int]:
    y, x = centre
    return (min(max(0, y - size // 2), max(0, shape[0] - size)), min(max(0, x - size // 2), max(0, shape[1] - size)))


def save_crops(label: str, show: _Showcase, scale: int, path: Path) -> bool:
    """PNG: a flat-tissue crop and an edge crop, native (pixel-replicated), lanczos and each model."""
    if show.native is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    native = show.native
    size = min(CROP_NATIVE, *native.shape)
    sites = nm.find_edge_sites(native)
    flat_c = _densest(nm.flat_tissue_mask(native), size)
    edge_c = (sites[0].y, sites[0].x) if sites else _densest(nm.strong_edge_mask(native), size)
    panels = [(what, centre, display) for what, centre, display in
              (("flat tissue", flat_c, FLAT_DISPLAY), ("edge", edge_c, EDGE_DISPLAY)) if centre is not None]
    if not panels:
        return False
    columns = {"native": np.kron(native, np.ones((scale, scale), dtype=np.float32)), **show.images}
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(2.4 * len(columns), 2.6 * len(panels)),
                             squeeze=False)
    for i, (what, centre, (lo, hi)) in enumerate(panels):
        y0, x0 = _window_box(centre, native.shape, size)
        for j, (name, image) in enumerate(columns.items()):
            crop = image[y0 * scale: (y0 + size) * scale, x0 * scale: (x0 + size) * scale]
            ax = axes[i][j]
            ax.imshow(crop, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")  # display only
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}" if i == 0 else "", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{what}\n[{lo:.0f}, {hi:.0f}] HU", fontsize=8)
    fig.suptitle(f"{label}: {size}x{size} native px at x{scale}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_native_report(
    out_dir: Path, rows: list[dict[str, Any]], showcases: dict[str, _Showcase], scale: int, meta: dict[str, Any]
) -> dict[str, Path]:
    """native.md, native.json, native.png and crops/<series>.png under out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize_native(rows)
    paths = {"table": out_dir / "native.md", "json": out_dir / "native.json", "plot": out_dir / "native.png"}
    paths["table"].write_text(format_native_table(summary) + "\n")
    doc = {
        **meta,
        "scale": scale,
        "protocol": {
            "reference": "lanczos-3 of the same native slice (sr_engine.interpolate), clipped to [-1024, 3071] HU",
            "noise_ratio": f"std of (x - {nm.NOISE_WINDOW}x{nm.NOISE_WINDOW} mean on the output grid) over the "
                           "flattest 20% of soft tissue ([-150, 250] HU, 9x9 native local std), SR / lanczos",
            "edge_ratio": "mean gradient magnitude (HU per native pixel) over the 5% strongest native edges "
                          "inside the body, SR / lanczos",
            "mtf50": "edge-spread MTF50 in cycles per native pixel at clean straight native edges (null: none)",
            "targets": {"noise_ratio_max": NOISE_TARGET, "edge_ratio_min": EDGE_TARGET},
        },
        "summary": summary,
        "slices": rows,
    }
    paths["json"].write_text(json.dumps(doc, indent=1))
    plot_native(rows, summary, paths["plot"])
    crops = out_dir / "crops"
    crops.mkdir(exist_ok=True)
    for i, (label, show) in enumerate(showcases.items()):
        target = crops / f"{i + 1:02d}_{_safe(label)}.png"
        if save_crops(label, show, scale, target):
            paths[f"crops:{label}"] = target
    return paths


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:80]
