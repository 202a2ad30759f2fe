"""Quality, fidelity and speed of the CT models tried (issues 15 and 20): one table and one PNG.

Per model of `--config` (plus the built-in bicubic and lanczos):
- PSNR/SSIM at 128→512 on the test series (`srnode evaluate`, the RESULTS.md protocol);
- noise and edge ratios at native 512→2048 against lanczos (`srnode evaluate --native`, centre
  crops of evenly spaced slices of the same never-trained-on series);
- seconds per 512² slice x4 (to 2048²): a bare forward pass in this process, median of
  `--repeats`, after one warm-up (the `srnode sr` side-by-side is bench/sr/fast_vs_rrdb.py).
The left panel is the speed/quality frontier, the right one the noise/sharpness trade-off with
the issue-20 targets drawn in.

    .venv/bin/python -m bench.sr.frontier --config bench/sr/frontier_models.yaml \
        --out bench/sr/results/frontier
    .venv/bin/python -m bench.sr.frontier --smoke   # CI: bicubic and lanczos on small crops
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.sr.common import CT_ROOT, REPO, markdown_table, write_results  # noqa: E402

TEST_SERIES = CT_ROOT / "lung-pet-ct-dx_Lung_Dx-A0002_chest"
BUILTINS = ("bicubic", "lanczos")


def _srnode(args: list[str], threads: int) -> None:
    cmd = [sys.executable, "-m", "srnode", *args, "--threads", str(threads)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")


def psnr_at_128(name: str, config: Path, slices: int, threads: int, work: Path) -> dict[str, float]:
    out = work / f"eval-{name}.json"
    _srnode(["evaluate", "--model", name, "--config", str(config), "--max-slices", str(slices),
             "--json", str(out), str(TEST_SERIES)], threads)
    summary = json.loads(out.read_text())["summary"]
    return {"psnr": summary[name]["psnr_hu"]["mean"], "ssim": summary[name]["ssim_hu"]["mean"],
            "bicubic_psnr": summary["bicubic"]["psnr_hu"]["mean"]}


def native_ratios(names: list[str], config: Path, slices: int, crop: int, threads: int, work: Path) -> dict[str, Any]:
    out = work / "native"
    args = ["evaluate", "--native", "--config", str(config), "--max-slices", str(slices), "--crop", str(crop),
            "--out", str(out), str(TEST_SERIES)]
    for n in names:
        args += ["--model", n]
    _srnode(args, threads)
    doc = json.loads((out / "native.json").read_text())
    return doc["summary"]["all"] if "all" in doc["summary"] else next(iter(doc["summary"].values()))


def seconds_per_slice(name: str, config: Path, size: int, repeats: int, threads: int) -> float:
    import numpy as np
    import torch

    from config.loader import load_config
    from sr_engine import registry

    torch.set_num_threads(threads)
    cfg = load_config(config)
    model = registry.load(registry.resolve(name, cfg.models), device="cpu", tile=None)  # untiled
    hu = np.random.default_rng(0).normal(40, 20, size=(1, size, size)).astype(np.float32)
    mapping = model.mapping("CT")
    model.upscale(hu, mapping)  # warm-up: first-call allocations and kernel choice
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.upscale(hu, mapping)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def plot(points: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for name, p in points.items():
        left.scatter(p["s_per_slice"], p["psnr_gain"], s=40)
        left.annotate(name, (p["s_per_slice"], p["psnr_gain"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        if p.get("noise") is not None and p.get("edge") is not None:
            right.scatter(p["noise"], p["edge"], s=40)
            right.annotate(name, (p["noise"], p["edge"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    left.set_xscale("log")
    left.axhline(1.5, color="grey", ls="--", lw=1)
    left.set_xlabel("seconds per 512² slice x4 (bare forward, CPU)")
    left.set_ylabel("PSNR over bicubic at 128→512, test series (dB)")
    left.set_title("speed / quality")
    right.axvline(1.10, color="grey", ls="--", lw=1)
    right.axhline(1.05, color="grey", ls="--", lw=1)
    right.fill_between([0, 1.10], 1.05, 2.0, color="green", alpha=0.08, label="issue 20 target")
    right.set_xlim(left=min([0.6] + [p["noise"] for p in points.values() if p.get("noise")]) - 0.05)
    right.set_ylim(min([0.95] + [p["edge"] for p in points.values() if p.get("edge")]) - 0.01,
                   max([1.1] + [p["edge"] for p in points.values() if p.get("edge")]) + 0.01)
    right.set_xlabel("flat-tissue noise / lanczos at native 512→2048 (median)")
    right.set_ylabel("strong-edge gradient / lanczos (median)")
    right.set_title("noise / sharpness, test series")
    right.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="YAML with a models: section (weights paths relative to it)")
    p.add_argument("--out", type=Path, default=None, help="folder for frontier.json/.md/.png")
    p.add_argument("--test-slices", type=int, default=30, help="slices of the test series at 128→512")
    p.add_argument("--native-slices", type=int, default=8)
    p.add_argument("--native-crop", type=int, default=192)
    p.add_argument("--size", type=int, default=512, help="slice side for the speed figure")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="built-ins only, 2 slices, small crops")
    args = p.parse_args(argv)
    if args.smoke:
        args.test_slices, args.native_slices, args.native_crop, args.size, args.repeats = 2, 2, 64, 64, 1
    with tempfile.TemporaryDirectory(prefix="frontier-") as tmp:
        work = Path(tmp)
        models: dict[str, Any] = {}
        if args.config and not args.smoke:
            doc = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
            for name, entry in (doc.get("models") or {}).items():
                if entry.get("weights"):
                    entry["weights"] = str((args.config.parent / entry["weights"]).resolve())
                models[name] = entry
        config = work / "models.yaml"
        config.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
        names = [*BUILTINS, *models]
        points: dict[str, dict[str, Any]] = {}
        speed: dict[str, float] = {}  # per architecture: the weights do not change the time
        native = native_ratios([n for n in names if n != "lanczos"], config, args.native_slices,
                               args.native_crop, args.threads, work)
        for name in names:
            q = psnr_at_128(name, config, args.test_slices, args.threads, work)
            n = native.get(name, {}) if name != "lanczos" else {}
            arch = models.get(name, {}).get("arch", name)
            if arch not in speed:
                speed[arch] = seconds_per_slice(name, config, args.size, args.repeats, args.threads)
            points[name] = {
                "psnr": q["psnr"], "ssim": q["ssim"], "psnr_gain": q["psnr"] - q["bicubic_psnr"],
                "s_per_slice": speed[arch],
                "noise": 1.0 if name == "lanczos" else n.get("noise_ratio", {}).get("median"),
                "edge": 1.0 if name == "lanczos" else n.get("edge_ratio", {}).get("median"),
                "description": models.get(name, {}).get("description", "built-in"),
            }
            print(f"{name}: {points[name]}", flush=True)
    rows = [[n, f"{p['psnr']:.2f}", f"{p['psnr_gain']:+.2f}", f"{p['ssim']:.4f}", f"{p['s_per_slice']:.2f}",
             "-" if p["noise"] is None else f"{p['noise']:.3f}", "-" if p["edge"] is None else f"{p['edge']:.3f}",
             p["description"]] for n, p in points.items()]
    table = markdown_table(["model", "PSNR 128→512", "vs bicubic", "SSIM", f"s/slice {args.size}²x4",
                            "noise ratio", "edge ratio", "what"], rows)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python -m bench.sr.frontier " + " ".join(argv if argv is not None else sys.argv[1:])
        write_results(args.out / "frontier.json", {"command": command, "threads": args.threads,
                                                    "test_series": TEST_SERIES.name, "points": points}, table)
        plot(points, args.out / "frontier.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
