"""Zero-shot vs fine-tuned comparison: the paper's table, a bar plot and a crop grid.

Every model sees the same LR slices (the `srnode evaluate` protocol, imported from
sr_engine.evaluate); bicubic is the baseline row. Figures use a display window only for the
PNGs; metrics are computed on float HU.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Figure, not pyplot: no global backend or figure state (renders with Agg when saved).
from matplotlib.figure import Figure
from tqdm import tqdm

from sr_engine.archs import CheckpointError, load_checkpoint
from sr_engine.evaluate import Slice, crop_to_multiple, evaluate_slices, summarize
from sr_engine.intensity import IntensityMapping, mapping_for
from sr_engine.interpolate import Bicubic
from sr_engine.metrics import degrade
from sr_engine.upscale import Upscaler
from training.checkpoint import is_training_state, training_state_hint
from training.dataset_index import index_dicom_trees
from training.distributed import pick_device
from training.slice_cache import build_cache

log = logging.getLogger(__name__)

BICUBIC = "bicubic"


@dataclass(frozen=True)
class ModelPair:
    """One architecture's zero-shot and fine-tuned checkpoints."""

    name: str
    zero_shot: Path
    fine_tuned: Path


def load_test_slices(dirs: Sequence[Path], cache_dir: Path, modality: str = "CT",
                     max_slices: int = 0, crop: int = 0) -> list[Slice]:
    """HR test slices (modality values) from DICOM trees, evenly spaced when capped."""
    recs = index_dicom_trees(dirs, modalities=[modality])
    if not recs:
        raise ValueError(f"no {modality} series under {', '.join(map(str, dirs))}")
    slices: list[Slice] = []
    for cached in build_cache(recs, cache_dir, progress=False):
        vol = cached.volume()
        for z in range(vol.shape[0]):
            v = np.asarray(vol[z], dtype=np.float32)
            if crop and min(v.shape) > crop:
                y0, x0 = (v.shape[0] - crop) // 2, (v.shape[1] - crop) // 2
                v = v[y0:y0 + crop, x0:x0 + crop]
            slices.append(Slice(f"{cached.record.cache_key}#{z}", v))
    if max_slices and len(slices) > max_slices:
        keep = np.unique(np.linspace(0, len(slices) - 1, max_slices).round().astype(int))
        slices = [slices[i] for i in keep]
    return slices


def _upscalers(pairs: Sequence[ModelPair], scale: int, device: torch.device,
               tile: int) -> dict[str, Upscaler]:
    ups = {BICUBIC: Upscaler(Bicubic(scale), scale, device, tile=None, channels_last=False)}
    for p in pairs:
        for kind, path in (("zero-shot", p.zero_shot), ("fine-tuned", p.fine_tuned)):
            if is_training_state(path):  # else torch's weights_only text, which names no fix
                raise CheckpointError(training_state_hint(path))
            desc = load_checkpoint(path)
            if desc.scale != scale:
                raise ValueError(f"{path}: checkpoint is x{desc.scale}, comparison is x{scale}")
            ups[f"{p.name} {kind}"] = Upscaler(desc, scale, device, tile=tile, batch=1)
    return ups


def paper_table(summary: dict[str, dict[str, dict[str, float]]], pairs: Sequence[ModelPair],
                n_slices: int) -> str:
    """The paper's format: PSNR/SSIM zero-shot, fine-tuned and change in %, bicubic as baseline."""
    def cell(method: str, metric: str) -> float:
        return summary[method][metric]["mean"]

    lines = [
        (f"| model ({n_slices} slices) | PSNR zero-shot | PSNR fine-tuned | PSNR change % "
         "| SSIM zero-shot | SSIM fine-tuned | SSIM change % |"),
        "|---|---|---|---|---|---|---|",
        (f"| bicubic (baseline) | {cell(BICUBIC, 'psnr_hu'):.2f} | – | – "
         f"| {cell(BICUBIC, 'ssim_hu'):.4f} | – | – |"),
    ]
    for p in pairs:
        zp, fp = cell(f"{p.name} zero-shot", "psnr_hu"), cell(f"{p.name} fine-tuned", "psnr_hu")
        zs, fs = cell(f"{p.name} zero-shot", "ssim_hu"), cell(f"{p.name} fine-tuned", "ssim_hu")
        lines.append(f"| {p.name} | {zp:.2f} | {fp:.2f} | {100 * (fp - zp) / zp:+.2f} "
                     f"| {zs:.4f} | {fs:.4f} | {100 * (fs - zs) / zs:+.2f} |")
    return "\n".join(lines)


def bar_plot(summary: dict[str, dict[str, dict[str, float]]], pairs: Sequence[ModelPair],
             path: Path) -> Path:
    """bar_figure written to `path` as a PNG."""
    bar_figure(summary, pairs).savefig(path, dpi=120)
    return path


def bar_figure(summary: dict[str, dict[str, dict[str, float]]], pairs: Sequence[ModelPair]) -> Figure:
    """Grouped bars of PSNR and SSIM (zero-shot vs fine-tuned), bicubic as a dashed line."""
    fig = Figure(figsize=(4 + 2.2 * len(pairs), 4))
    axes = fig.subplots(1, 2)
    x = np.arange(len(pairs))
    # Bars encode values by their length, so the axes start at zero: a zoomed axis made a
    # 0.3 dB gain look several times taller. Each bar is labelled with its value instead.
    for ax, metric, label, fmt in ((axes[0], "psnr_hu", "PSNR (dB, HU range)", "{:.2f}"),
                                   (axes[1], "ssim_hu", "SSIM (HU range)", "{:.3f}")):
        zs = [summary[f"{p.name} zero-shot"][metric]["mean"] for p in pairs]
        ft = [summary[f"{p.name} fine-tuned"][metric]["mean"] for p in pairs]
        base = summary[BICUBIC][metric]["mean"]
        for bars in (ax.bar(x - 0.2, zs, 0.4, label="zero-shot", color="#999999"),
                     ax.bar(x + 0.2, ft, 0.4, label="fine-tuned", color="#1f77b4")):
            ax.bar_label(bars, labels=[fmt.format(v) for v in bars.datavalues], fontsize=7, padding=2)
        ax.axhline(base, color="#d62728", ls="--", label=f"bicubic {fmt.format(base)}")
        ax.set_xticks(x, [p.name for p in pairs])
        ax.set_ylabel(label)
        lo, top = min([*zs, *ft, base]), max([*zs, *ft, base])
        # Headroom above the bars for the value labels and the legend; below zero only for a
        # negative SSIM (an untrained model).
        ax.set_ylim(min(0.0, 1.1 * lo), max(1.0, 1.3 * top) if metric == "ssim_hu" else 1.3 * top)
        ax.legend(fontsize=7, loc="upper center", ncol=3, frameon=False)
    fig.suptitle("x4 SR on unseen CT: zero-shot vs fine-tuned")
    fig.tight_layout()
    return fig


def _busiest_window(hr: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the `size` window with the most gradient energy (edges to look at)."""
    g = np.abs(np.diff(hr, axis=0))[:, :-1] + np.abs(np.diff(hr, axis=1))[:-1, :]
    best, where = -1.0, (0, 0)
    step = max(8, size // 4)
    for y in range(0, g.shape[0] - size + 1, step):
        for x in range(0, g.shape[1] - size + 1, step):
            e = float(g[y:y + size, x:x + size].mean())
            if e > best:
                best, where = e, (y, x)
    return where


def crop_grid(slices: Sequence[Slice], ups: dict[str, Upscaler], mapping: IntensityMapping,
              scale: int, path: Path, n: int = 3, size: int = 128,
              window: tuple[float, float] = (-1000.0, 1000.0)) -> Path:
    """PNG grid: one row per slice, columns HR, bicubic, each model; display window for viewing."""
    picks = [slices[i] for i in np.unique(np.linspace(0, len(slices) - 1, min(n, len(slices))).round().astype(int))]
    cols = ["HR"] + list(ups)
    fig = Figure(figsize=(2.2 * len(cols), 2.3 * len(picks)))
    axes = fig.subplots(len(picks), len(cols), squeeze=False)
    for r, s in enumerate(picks):
        hr = np.array(crop_to_multiple(s.values, scale), dtype=np.float32)
        lr = degrade(torch.from_numpy(hr).double()[None, None], scale)[0, 0].float().numpy()
        y, x = _busiest_window(hr, size)
        images = {"HR": hr}
        for name, up in ups.items():
            images[name] = up.upscale_slices(lr, mapping)
        for c, name in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(images[name][y:y + size, x:x + size], cmap="gray", vmin=window[0], vmax=window[1])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle(f"{size}x{size} HR crops, display window [{window[0]:.0f}, {window[1]:.0f}] HU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def compare(pairs: Sequence[ModelPair], data: Sequence[Path], out: Path, scale: int = 4,
            modality: str = "CT", max_slices: int = 0, crop: int = 0, device: str = "auto",
            tile: int = 128) -> dict[str, object]:
    """Run the comparison, write table.md, results.json, bars.png and crops.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    # Checkpoints first: a wrong file fails in seconds, not after the test slices are decoded.
    ups = _upscalers(pairs, scale, dev, tile)
    slices = load_test_slices(data, out / "cache", modality, max_slices, crop)
    mapping = mapping_for(modality)
    bar = tqdm(total=len(slices), desc="compare", unit="slice")
    rows = evaluate_slices(slices, {k: u.upscale_slices for k, u in ups.items()}, scale, batch=2,
                           mapping=mapping, progress=bar.update)
    bar.close()
    summary = summarize(rows)
    table = paper_table(summary, pairs, len(slices))
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"summary": summary, "per_slice": rows}, indent=1))
    bar_plot(summary, pairs, out / "bars.png")
    crop_grid(slices, ups, mapping, scale, out / "crops.png")
    return {"table": table, "summary": summary, "n_slices": len(slices)}


def compare_cli(args: argparse.Namespace) -> int:
    """`srnode compare`: print the table, write the files."""
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = [ModelPair(n, Path(z), Path(f)) for n, z, f in args.pair]
    result = compare(pairs, [Path(d) for d in args.data], Path(args.out), max_slices=args.max_slices,
                     crop=args.crop, device=args.device)
    print(result["table"])
    print(f"wrote {args.out}/table.md, results.json, bars.png, crops.png")
    return 0
