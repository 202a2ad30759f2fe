"""PNG plots of the SR benchmark and evaluation JSON files.

    .venv/bin/python bench/sr/plots.py --latency bench/sr/results/latency_cpu_128.json ... \
        --evaluate bench/sr/results/zero_shot_realesrgan_ct.json --out bench/sr/results
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_latency(files: list[Path], out: Path) -> Path:
    """Median seconds per slice, one group of bars per model and size, log scale."""
    rows = [r for f in files for r in json.loads(f.read_text())["rows"]]
    labels = [f"{r['model']}\n{r['lr']}->{r['hr']}" for r in rows]
    variants = ["naive", "fast", "bf16"]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4))
    width = 0.8 / (len(variants) + 1)
    for i, v in enumerate(variants + ["paper GPU"]):
        xs = [k + (i - 1.5) * width for k in range(len(rows))]
        ys = [r.get("paper_gpu_s") if v == "paper GPU" else r["median_s"].get(v) for r in rows]
        ax.bar([x for x, y in zip(xs, ys) if y], [y for y in ys if y], width, label=v)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per slice (median)")
    ax.set_title("SR latency per slice, CPU (2 shared cores) vs the paper's GPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "latency.png"
    fig.savefig(path, dpi=120)
    return path


def plot_runtimes(files: list[Path], out: Path) -> Path:
    """Speed-up over naive (median) of every variant, one panel per run (model, size, threads)."""
    docs = [json.loads(f.read_text()) for f in files]
    panels = [(d, r) for d in docs for r in d["rows"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (doc, r) in zip(axes[0], panels):
        names = list(r["speedup_vs_naive"])
        ax.bar(names, [r["speedup_vs_naive"][n] for n in names],
               color=["tab:red" if n == "bf16" else "tab:blue" for n in names])
        ax.axhline(1, color="k", lw=1)
        ax.axhline(2, color="k", lw=1, ls="--", label="goal 2x")
        ax.set_title(f"{r['model']} {r['lr']}->{r['hr']}, {doc['threads']} thr, tile {r['tile'] or 'none'}", fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.set_ylabel("speed-up vs naive fp32 (median)")
        ax.legend(fontsize=8)
    fig.suptitle("CPU runtimes, same run each (red: bf16, not exact)")
    fig.tight_layout()
    path = out / "runtimes.png"
    fig.savefig(path, dpi=120)
    return path


def plot_evaluate(file: Path, out: Path) -> Path:
    """Per-slice PSNR (HU range) of the model against bicubic on the same slice."""
    doc = json.loads(file.read_text())
    model = doc["model"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = ((axes[0], "psnr_hu", "PSNR, HU [-1024, 3071]"), (axes[1], "psnr_win", "PSNR, window [-160, 240]"))
    for ax, metric, title in panels:
        b = [s["bicubic"][metric] for s in doc["slices"]]
        m = [s[model][metric] for s in doc["slices"]]
        ax.scatter(b, m, s=12)
        lo, hi = min(b + m), max(b + m)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="equal")
        ax.set_xlabel("bicubic (dB)")
        ax.set_ylabel(f"{model} (dB)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"zero-shot {model} vs bicubic, {len(doc['slices'])} CT slices (below the line: worse)")
    fig.tight_layout()
    path = out / f"zero_shot_{model}.png"
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency", nargs="*", type=Path, default=[])
    p.add_argument("--runtimes", nargs="*", type=Path, default=[])
    p.add_argument("--evaluate", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("bench/sr/results"))
    p.add_argument("--smoke", action="store_true",
                   help="plot the committed result files of bench/sr/results into a temporary folder")
    args = p.parse_args(argv)
    if args.smoke:
        import tempfile

        results = Path(__file__).resolve().parent / "results"
        args.latency = [results / "latency_cpu_128_final.json"]
        args.runtimes = [results / "runtimes_cpu_128_quiet.json"]
        args.evaluate = results / "zero_shot_realesrgan_ct.json"
        args.out = Path(tempfile.mkdtemp(prefix="srnode-plots-"))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.latency:
        print(plot_latency(args.latency, args.out))
    if args.runtimes:
        print(plot_runtimes(args.runtimes, args.out))
    if args.evaluate:
        print(plot_evaluate(args.evaluate, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
