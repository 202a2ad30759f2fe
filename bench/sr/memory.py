"""Peak memory (RSS) of upscaling CT slices under `worker.max_memory_mb` (issue 15, item 2).

Each case (model, input size, budget) runs in a fresh child process, so that peaks do not mix. The
child loads the model folder with the worker's own options (workers/model_cache.py: whole slices
unless the plan tiles, batch = worker.batch_size 4, the writer's chunk held, the budget), then runs
`--chunks` chunks of real CT slices resampled to size² the way the worker does: a chunk is
upscaled while the previous one is derived and encoded on a writer thread. Reported per case:
the plan (tile, batch, predicted working memory), the baseline RSS (libraries and model loaded),
the peak RSS of the run (VmHWM), the RSS after the worker's release_memory() (what an idle worker
keeps), and whether the peak stayed within budget + the model's own size (the issue's bound).
Budget "none" is the behaviour before planning (batch 4 whole slices, tiles only after an OOM).

    .venv/bin/python -m bench.sr.memory --json bench/sr/results/memory.json
    .venv/bin/python -m bench.sr.memory --model-dir rrdb6 --sizes 128 512 --budgets none default --chunks 1 \
        --json bench/sr/results/memory_rrdb6.json
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.sr.common import (  # noqa: E402
    DEFAULT_CT_DIR,
    ct_files,
    markdown_table,
    model_dir_arg,
    run_child,
    write_results,
)

MIB = 1 << 20


def _child(case: dict[str, Any]) -> dict[str, Any]:
    """One case, in this (fresh) process; returns the figures as a dict."""
    import numpy as np
    import pydicom
    import torch

    from bench.sr.common import load_model_dir, resampled
    from dicom_node.derive.writer import Derivation, derive_classic, encode
    from sr_engine.intensity import modality_values
    from sr_engine.memory import peak_rss_bytes, release_memory, reset_peak_rss, rss_bytes

    torch.set_num_threads(case["threads"])
    budget = case["budget_mb"]
    batch = case["batch"]
    model = load_model_dir(Path(case["model_dir"]), device="cpu", tile=None, overlap=32, batch=batch,
                           precision="fp32", max_memory_mb=budget, held_slices=batch if budget else 0)
    up = model.upscaler
    size = case["size"]
    count = batch * case["chunks"]
    files = ct_files(Path(case["ct_dir"]), count)
    datasets = [resampled(pydicom.dcmread(files[k % len(files)]), size) for k in range(count)]
    mapping = model.mapping("CT")
    derivation = Derivation(model="bench", checkpoint_sha256="0" * 64, scale=model.scale,
                            transfer_syntax=case["transfer_syntax"])

    def write(chunk: list[pydicom.Dataset], values: np.ndarray) -> int:
        size_out = 0
        for ds, v in zip(chunk, values):
            buf = io.BytesIO()
            encode(derive_classic(ds, v, derivation), derivation.transfer_syntax).save_as(buf, enforce_file_format=True)
            size_out += buf.tell()
        return size_out

    step = up.chunk_size(size, size)  # the plan is made here (baseline measured once)
    plan = up.plan(size, size)
    release_memory()
    baseline = rss_bytes()
    peak_reset = reset_peak_rss()
    pending: Future[int] | None = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        for k in range(0, count, step):
            chunk = datasets[k: k + step]
            values = model.upscale(np.stack([modality_values(ds).astype(np.float32) for ds in chunk]), mapping)
            if pending is not None:
                pending.result()
            pending = pool.submit(write, chunk, values)
            del values
        assert pending is not None
        pending.result()
        pending = None
    peak = peak_rss_bytes()
    release_memory()
    after = rss_bytes()
    params = sum(p.numel() for p in up._eager.parameters())  # noqa: SLF001 - the module the plan traced
    return {
        "plan_tile": plan.tile if plan else None, "plan_batch": plan.batch if plan else batch,
        "plan_estimate_mb": plan.estimate / MIB if plan else None, "plan_fits": plan.fits if plan else None,
        "planned_baseline_mb": (up._baseline or 0) / MIB,  # noqa: SLF001 - what the plan subtracted
        "bytes_per_pixel": up._bytes_per_pixel,  # noqa: SLF001
        "runtime": up.runtime, "baseline_mb": baseline / MIB, "peak_mb": peak / MIB, "after_release_mb": after / MIB,
        "peak_reset": peak_reset, "model_mb": params * 4 / MIB, "slices": count,
    }


def _budget(text: str) -> int | None:
    from sr_engine.memory import default_budget_mb

    if text == "none":
        return None
    return default_budget_mb() if text == "default" else int(text)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    labels = list(dict.fromkeys(r["budget"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs, ys, caps = [], [], []
        for i, size in enumerate(sizes):
            r = next((r for r in rows if r["size"] == size and r["budget"] == label), None)
            if r is None:
                continue
            xs.append(i + (j - (len(labels) - 1) / 2) * width)
            ys.append(r["peak_mb"])
            caps.append(r["budget_mb"])
        bars = ax.bar(xs, ys, width, label=f"budget {label}")
        for x, cap, bar in zip(xs, caps, bars):
            if cap:  # the budget as a tick over its bar
                ax.hlines(cap, x - width / 2, x + width / 2, colors="black", linewidth=1.5)
                bar.set_alpha(0.85)
    ax.set_xticks(range(len(sizes)), [f"{s}² → {4 * s}²" for s in sizes])
    ax.set_ylabel("peak RSS, MiB (black: budget)")
    ax.set_title(f"{rows[0]['model']}: peak RSS per input size and worker.max_memory_mb")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=model_dir_arg, default="compact",
                   help="model folder with registry.yaml, or `compact` (default; untrained weights until "
                        "models/ct-compact exists) or `rrdb6` (models/ct-realesrgan-anime6b)")
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 512, 1024], help="input sizes (square)")
    p.add_argument("--budgets", nargs="+", default=["none", "2048", "default"],
                   help="MiB, `default` (sr_engine.memory.default_budget_mb) or `none` (no plan)")
    p.add_argument("--batch", type=int, default=4, help="worker.batch_size")
    p.add_argument("--chunks", type=int, default=2, help="chunks of --batch slices per case")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--transfer-syntax", default="explicit_le", help="of the writer thread's encode")
    p.add_argument("--ct-dir", type=Path, default=DEFAULT_CT_DIR, help="folder of real CT slices")
    p.add_argument("--json", type=Path, default=None, help="write the results here (and a .md beside it)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of peak RSS against the budgets")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    p.add_argument("--smoke", action="store_true", help="64² slices, one chunk of 2, default budget: a quick check")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))), flush=True)
        return 0
    if args.smoke:
        args.sizes, args.budgets, args.batch, args.chunks = [64], ["default"], 2, 1
    from sr_engine.memory import default_budget_mb

    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        for label in args.budgets:
            case = {"model_dir": str(args.model_dir), "size": size, "budget_mb": _budget(label), "batch": args.batch,
                    "chunks": args.chunks, "threads": args.threads, "ct_dir": str(args.ct_dir),
                    "transfer_syntax": args.transfer_syntax}
            result = run_child(["-m", "bench.sr.memory", "--child", json.dumps(case)], timeout_s=args.timeout)
            row = {**case, **result, "budget": label, "model": Path(args.model_dir).name}
            bound = (row["budget_mb"] or 0) + row["model_mb"]
            row["within_bound"] = bool(row["budget_mb"]) and row["peak_mb"] <= bound
            rows.append(row)
            print(f"{size}² budget {label}: plan {row['plan_tile'] or 'whole'}/{row['plan_batch']}, baseline "
                  f"{row['baseline_mb']:.0f} MiB, peak {row['peak_mb']:.0f} MiB, after release "
                  f"{row['after_release_mb']:.0f} MiB", flush=True)
    table = markdown_table(
        ["input", "budget MiB", "plan (tile / batch)", "predicted working MiB", "baseline MiB", "peak RSS MiB",
         "budget + model MiB", "within", "after release MiB"],
        [[f"{r['size']}²", str(r["budget_mb"] or "none"),
          f"{r['plan_tile'] or 'whole'} / {r['plan_batch']}",
          f"{r['plan_estimate_mb']:.0f}" if r["plan_estimate_mb"] is not None else "-",
          f"{r['baseline_mb']:.0f}", f"{r['peak_mb']:.0f}",
          f"{r['budget_mb'] + r['model_mb']:.0f}" if r["budget_mb"] else "-",
          ("yes" if r["within_bound"] else "NO") if r["budget_mb"] else "-",
          f"{r['after_release_mb']:.0f}"] for r in rows])
    print(table)
    if args.json:
        command = " ".join(["python -m bench.sr.memory", *(argv if argv is not None else sys.argv[1:])])
        write_results(args.json, {"command": command, "machine": platform.processor() or platform.machine(),
                                  "default_budget_mb": default_budget_mb(), "rows": rows}, table)
    if args.plot:
        _plot(rows, args.plot)
    return 0 if all(r["within_bound"] for r in rows if r["budget_mb"]) else 1


if __name__ == "__main__":
    sys.exit(main())
