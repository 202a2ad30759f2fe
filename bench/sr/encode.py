"""Encode time and size of derived CT slices per output transfer syntax (issue 15, item 3).

Real CT slices (`--ct-dir`, 512²) are upscaled x4 (built-in `lanczos` by default, or a model folder
with a registry.yaml: its real output has the model's texture), derived with the worker's own code
(`dicom_node.derive.writer.derive_classic` + `encode`) and written as Part 10 bytes. Per syntax:
median seconds of the pixel conversion + encode (`encode_s`), of writing the file bytes
(`write_s`), the file size and the ratio to explicit VR little endian; every encoded slice is
decoded again and must give the same HU (lossless check). The plugins are interleaved per slice.

    .venv/bin/python -m bench.sr.encode --slices 8 --json bench/sr/results/encode_2048.json
    .venv/bin/python -m bench.sr.encode --model-dir models/ct-realesrgan-anime6b --slices 3 \
        --json bench/sr/results/encode_2048_rrdb6.json
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.sr.common import (
    DEFAULT_CT_DIR,
    ct_files,
    load_model_dir,
    markdown_table,
    model_dir_arg,
    write_results,
)
from dicom_node.derive.writer import (
    TRANSFER_SYNTAXES,
    Derivation,
    derive_classic,
    encode,
)
from sr_engine import registry
from sr_engine.intensity import modality_values


def _case(src: pydicom.Dataset, up: np.ndarray, syntax: str) -> dict:
    derivation = Derivation(model="bench", checkpoint_sha256="0" * 64, scale=4, transfer_syntax=syntax)
    t0 = time.perf_counter()
    ds = derive_classic(src, up, derivation)
    t1 = time.perf_counter()
    encode(ds, syntax)
    t2 = time.perf_counter()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    t3 = time.perf_counter()
    data = buf.getvalue()
    t4 = time.perf_counter()
    back = modality_values(pydicom.dcmread(io.BytesIO(data)))
    t5 = time.perf_counter()
    expected = modality_values(derive_classic(src, up, Derivation(model="bench", checkpoint_sha256="0" * 64, scale=4)))
    return {"derive_s": t1 - t0, "encode_s": t2 - t1, "write_s": t3 - t2, "decode_s": t5 - t4, "bytes": len(data),
            "lossless": bool(np.array_equal(back, expected))}


def plot(docs: list[dict], path: Path) -> None:
    """Size per slice against encode time, one point per syntax and result file (model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    markers = "os^D"
    for k, doc in enumerate(docs):
        for j, (syntax, v) in enumerate(doc["summary"].items()):
            ax.scatter(v["encode_s"], v["mb"], color=f"C{j}", marker=markers[k % len(markers)],
                       label=f"{syntax} ({doc['model']})")
            ax.annotate(f"{v['ratio']:.2f}x", (v["encode_s"], v["mb"]), textcoords="offset points", xytext=(5, 3),
                        fontsize=7)
    ax.set_xlabel("encode s per 2048² slice (median, one core)")
    ax.set_ylabel("MB per slice")
    ax.set_ylim(bottom=0)
    ax.set_title("Derived CT slice encoding: size vs time (labels: ratio to explicit LE)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ct-dir", type=Path, default=DEFAULT_CT_DIR, help="folder of 512² CT slices")
    p.add_argument("--model-dir", type=model_dir_arg, default=None,
                   help="model folder with registry.yaml, or `compact` / `rrdb6` (default: built-in lanczos x4)")
    p.add_argument("--slices", type=int, default=6, help="source slices (spread over the folder)")
    p.add_argument("--syntaxes", nargs="+", default=list(TRANSFER_SYNTAXES), choices=list(TRANSFER_SYNTAXES))
    p.add_argument("--threads", type=int, default=2, help="torch threads for the upscale (not timed)")
    p.add_argument("--json", type=Path, default=None, help="write the results here (and a .md beside it)")
    p.add_argument("--smoke", action="store_true", help="2 slices, no model: a quick check that it runs")
    p.add_argument("--plot", type=Path, default=None, help="PNG of size against encode time")
    p.add_argument("--plot-from", nargs="+", type=Path, default=None,
                   help="plot these JSON results of earlier runs (to --plot) instead of running")
    args = p.parse_args(argv)
    if args.plot_from:
        plot([json.loads(f.read_text(encoding="utf-8")) for f in args.plot_from], args.plot or Path("encode.png"))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    if args.smoke:
        args.slices, args.model_dir = 2, None
    model = load_model_dir(args.model_dir) if args.model_dir else registry.load(registry.resolve("lanczos"))
    files = ct_files(args.ct_dir, args.slices)
    rows: dict[str, list[dict]] = {s: [] for s in args.syntaxes}
    for path in files:
        src = pydicom.dcmread(path)
        values = modality_values(src)
        up = model.upscale(values, model.mapping(str(src.Modality)))
        for syntax in args.syntaxes:  # interleaved: machine load hits every syntax alike
            rows[syntax].append(_case(src, up, syntax))
        print(f"{path.name}: " + ", ".join(f"{s} {rows[s][-1]['bytes'] / 1e6:.2f} MB {rows[s][-1]['encode_s']:.3f} s"
                                           for s in args.syntaxes), flush=True)
    base = statistics.median(r["bytes"] for r in rows.get("explicit_le", rows[args.syntaxes[0]]))
    summary = {}
    for syntax, rs in rows.items():
        summary[syntax] = {
            "uid": str(TRANSFER_SYNTAXES[syntax]),
            "encode_s": statistics.median(r["encode_s"] for r in rs),
            "write_s": statistics.median(r["write_s"] for r in rs),
            "decode_s": statistics.median(r["decode_s"] for r in rs),
            "derive_s": statistics.median(r["derive_s"] for r in rs),
            "mb": statistics.median(r["bytes"] for r in rs) / 1e6,
            "ratio": base / statistics.median(r["bytes"] for r in rs),
            "lossless": all(r["lossless"] for r in rs),
        }
    table = markdown_table(
        ["syntax", "UID", "encode s (median)", "write s", "decode s", "MB per slice", "ratio", "lossless"],
        [[s, v["uid"], f"{v['encode_s']:.3f}", f"{v['write_s']:.3f}", f"{v['decode_s']:.3f}", f"{v['mb']:.2f}",
          f"{v['ratio']:.2f}", "yes" if v["lossless"] else "NO"] for s, v in summary.items()])
    print(table)
    if args.json:
        write_results(args.json, {
            "command": " ".join(["python -m bench.sr.encode", *(argv if argv is not None else sys.argv[1:])]),
            "model": model.spec.name, "slices": [f.name for f in files],
            "shape": list(up.shape), "machine": platform.processor() or platform.machine(),
            "torch_threads": args.threads, "summary": summary, "per_slice": rows,
        }, table)
    if args.plot and args.json:
        plot([json.loads(args.json.read_text(encoding="utf-8"))], args.plot)
    return 0 if all(v["lossless"] for v in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
