"""The fast CT model's forward pass on CPU: eager torch against ONNX Runtime, per thread count.

Compact 48x16 (1 channel, x4; the model folder's weights: speed does not depend on them) on one
size² input, fp32; the runtimes are interleaved within each repetition so that load from other
processes hits both alike; medians, and the largest difference of ORT's output from eager's in the
model's [0, 1] range (why ORT is the CPU default for Compact: sr_engine/backends).

    .venv/bin/python -m bench.sr.compact_runtimes --size 512 --threads 1 2 --reps 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.sr.common import load_model_dir, model_dir_arg  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=model_dir_arg, default="compact", help="model folder, or `compact`")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="32², 1 thread, 1 repetition")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.threads, args.reps = 32, [1], 1
    import torch

    from sr_engine.backends import build_runner

    x = torch.rand(1, 1, args.size, args.size)
    result: dict[int, dict[str, float]] = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        model = load_model_dir(args.model_dir, tile=None, precision="fp32", runtime="torch")
        eager = model.upscaler._eager  # noqa: SLF001 - the plain module
        runners = {"torch": eager, "onnxruntime": build_runner(eager, "onnxruntime", model.upscaler.channels, threads)}
        with torch.inference_mode():
            reference = eager(x)
            for run in runners.values():
                run(x)  # warm-up
            times: dict[str, list[float]] = {k: [] for k in runners}
            for _ in range(args.reps):
                for name, run in runners.items():
                    t0 = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - t0)
            diff = (runners["onnxruntime"](x) - reference).abs().max().item()
        result[threads] = {**{k: round(statistics.median(v), 3) for k, v in times.items()}, "max_abs_diff_unit": diff}
        print(f"{threads} thread(s), {args.size}²: " + ", ".join(f"{k} {v}" for k, v in result[threads].items()),
              flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
