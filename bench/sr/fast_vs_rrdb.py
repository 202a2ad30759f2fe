"""The fast CT model against the RRDB-6 CT model through the same `srnode sr` command (issue 15).

Both models upscale the same real 512² CT slices x4 (to 2048²) in fresh `srnode sr` processes,
run alternately in one session so that machine load hits both alike. Per model and round: the
command's wall time on 1 slice and on `--slices` slices; the per-slice time is their difference
divided by the extra slices (process start and model load cancel out), and the peak RSS of the
command (ru_maxrss of the child, what `/usr/bin/time -v` reports).

    .venv/bin/python -m bench.sr.fast_vs_rrdb --slices 4 --rounds 2 \
        --json bench/sr/results/fast_vs_rrdb.json
    .venv/bin/python -m bench.sr.fast_vs_rrdb --smoke   # CI: built-in interpolators, 2 small slices
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.sr.common import REPO, RRDB6_DIR, build_series, markdown_table, model_entries, write_results  # noqa: E402

FAST_DIR = REPO / "models" / "ct-compact"


def run_sr(model: str, config: Path, in_dir: Path, out_dir: Path, threads: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `srnode sr` process."""
    cmd = [sys.executable, "-m", "srnode", "sr", "--model", model, "--config", str(config),
           "--threads", str(threads), "--batch", "1", str(in_dir), str(out_dir)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=4, help="slices of the longer run (the short run has 1)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size", type=int, default=512, help="native slice size (512: the real job)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fast-dir", type=Path, default=FAST_DIR)
    p.add_argument("--slow-dir", type=Path, default=RRDB6_DIR)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="bicubic vs lanczos on 2 slices of 64²: checks the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.slices, args.rounds, args.size = 2, 1, 64
    with tempfile.TemporaryDirectory(prefix="srbench-") as tmp:
        work = Path(tmp)
        if args.smoke:
            models: dict[str, Any] = {}
            names = ["lanczos", "bicubic"]
        else:
            models = {**model_entries(args.fast_dir), **model_entries(args.slow_dir)}
            names = list(models)
        config = work / "models.yaml"
        config.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
        one, many = work / "one", work / "many"
        build_series(one, 1, size=args.size)
        build_series(many, args.slices, size=args.size)
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names:  # alternated: load drifts hit both models alike
                w1, m1 = run_sr(name, config, one, work / f"out-{name}-{r}-1", args.threads)
                wn, mn = run_sr(name, config, many, work / f"out-{name}-{r}-n", args.threads)
                per = (wn - w1) / (args.slices - 1)
                runs[name].append({"wall_1": w1, "wall_n": wn, "per_slice_s": per, "peak_rss_mib": max(m1, mn)})
                print(f"round {r + 1} {name}: {per:.2f} s/slice, command {wn:.1f} s for {args.slices} slices, "
                      f"peak RSS {max(m1, mn):.0f} MiB", flush=True)
    summary = {n: {"per_slice_s": statistics.median(x["per_slice_s"] for x in v),
                   "command_s": statistics.median(x["wall_n"] for x in v),
                   "startup_s": statistics.median(x["wall_1"] - x["per_slice_s"] for x in v),
                   "peak_rss_mib": max(x["peak_rss_mib"] for x in v)} for n, v in runs.items()}
    slowest = max(summary.values(), key=lambda s: s["per_slice_s"])["per_slice_s"]
    rows = [[n, f"{s['per_slice_s']:.2f}", f"{slowest / s['per_slice_s']:.1f}x", f"{s['startup_s']:.1f}",
             f"{s['command_s']:.1f}", f"{s['peak_rss_mib']:.0f}"] for n, s in summary.items()]
    table = markdown_table(["model", f"s/slice {args.size}→{args.size * 4}", "speed-up", "start + load s",
                            f"command s ({args.slices} slices)", "peak RSS MiB"], rows)
    print(table)
    if args.json:
        command = "python -m bench.sr.fast_vs_rrdb " + " ".join(argv if argv is not None else sys.argv[1:])
        write_results(args.json, {"command": command, "machine": platform.node(), "cpus": os.cpu_count(),
                                  "threads": args.threads, "size": args.size, "slices": args.slices,
                                  "runs": runs, "summary": summary}, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
