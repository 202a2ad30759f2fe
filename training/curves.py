"""Training curves from a run's log.csv: L1 loss and validation PSNR against bicubic, as a PNG."""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

# Figure, not pyplot: no global backend or figure state (renders with Agg when saved).
from matplotlib.figure import Figure


def read_log(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Series of (step, value) per key from a run's log.csv."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with Path(path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            series[row["key"]].append((int(row["step"]), float(row["value"])))
    return dict(series)


def plot_curves(log_csv: Path, out_png: Path, title: str = "") -> Path:
    """Two panels: training L1 (log scale) and validation PSNR with the bicubic baseline."""
    s = read_log(log_csv)
    fig = Figure(figsize=(9, 3.5))
    a, b = fig.subplots(1, 2)
    if s.get("train/l1"):
        a.plot(*zip(*s["train/l1"]), color="#1f77b4")
        a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("L1 (model range [0, 1])")
    if s.get("val/psnr"):
        b.plot(*zip(*s["val/psnr"]), marker="o", color="#1f77b4", label="model (EMA)")
    if s.get("val/bicubic_psnr"):
        base = s["val/bicubic_psnr"][-1][1]
        b.axhline(base, color="#d62728", ls="--", label=f"bicubic {base:.2f} dB")
    b.set_xlabel("step")
    # A line over steps, not bars: the axis stays zoomed on the data, and says so.
    b.set_ylabel("validation PSNR (dB, HU range)\naxis zoomed, not from 0", fontsize=9)
    b.legend(fontsize=8)
    fig.suptitle(title or Path(log_csv).parent.name)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png
