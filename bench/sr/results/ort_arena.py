"""ONNX Runtime CPU arena variants for RRDB-6 at 128² (BENCHMARKS.md, "Memory"): speed interleaved
(medians of N repetitions) and, per variant in its own process, the RSS still held after one 256²
pass and release_memory() (what an idle worker would keep).

    .venv/bin/python bench/sr/results/ort_arena.py 7
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bench.sr.common import RRDB6_DIR, load_model_dir  # noqa: E402
from sr_engine.backends.ort_runner import export_onnx  # noqa: E402
from sr_engine.memory import release_memory, rss_bytes  # noqa: E402

VARIANTS = ("arena", "no_arena", "arena_shrink")


def session(onnx: bytes, variant: str) -> tuple[Any, Any]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = variant != "no_arena"
    run = ort.RunOptions()
    if variant == "arena_shrink":
        run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"]), run


def main() -> None:
    torch.set_num_threads(2)
    model = load_model_dir(RRDB6_DIR)
    onnx = export_onnx(model.upscaler._eager.cpu().eval(), model.upscaler.channels)
    if len(sys.argv) > 2:  # child: RSS kept after one 256² pass
        sess, run = session(onnx, sys.argv[2])
        name = sess.get_inputs()[0].name
        release_memory()
        base = rss_bytes()
        sess.run(None, {name: np.random.rand(1, 3, 256, 256).astype(np.float32)}, run)
        release_memory()
        print(json.dumps({"kept_mb": (rss_bytes() - base) / 2**20}))
        return
    sessions = {v: session(onnx, v) for v in VARIANTS}
    name = sessions["arena"][0].get_inputs()[0].name
    x = np.random.rand(1, 3, 128, 128).astype(np.float32)
    for sess, run in sessions.values():
        sess.run(None, {name: x}, run)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 7):
        for v, (sess, run) in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, {name: x}, run)
            times[v].append(time.perf_counter() - t0)
    kept = {}
    for v in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "0", v], capture_output=True, text=True, check=True).stdout
        kept[v] = json.loads(out.splitlines()[-1])["kept_mb"]
    print({v: {"median_s": round(statistics.median(times[v]), 3), "kept_mb_after_256": round(kept[v])}
           for v in VARIANTS})


if __name__ == "__main__":
    main()
