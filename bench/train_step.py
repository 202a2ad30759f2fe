"""Training step time per preset (forward + L1 + backward + Adam), the paper's batch 24.

GPU (the issue's goal): .venv/bin/python bench/train_step.py --device cuda --amp bf16
CPU check of the script itself: .venv/bin/python bench/train_step.py --device cpu --batch 1 --hr-patch 32 --presets dpsr
Prints a Markdown table beside the paper's step times and writes --json if given.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.loop import _amp_dtype, build_model, forward_grey  # noqa: E402
from training.presets import PRESETS  # noqa: E402

# The paper's reported seconds per training step at batch 24.
PAPER_S: dict[str, float] = {"dpsr": 0.054, "realesrgan": 1.870, "bsrgan": 0.524, "swinir": 1.170, "hat": 2.200}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_time(name: str, device: torch.device, batch: int, hr_patch: int | None, amp: str,
              steps: int, warmup: int, channels_last: bool) -> dict[str, float]:
    """Median seconds per optimisation step of preset `name` on random data."""
    preset = PRESETS[name]
    hr = hr_patch or preset.hr_patch
    model = build_model(preset, None).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=preset.lr)
    dtype = _amp_dtype(amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    lr_b = torch.rand(batch, 1, hr // preset.scale, hr // preset.scale, device=device)
    hr_b = torch.rand(batch, 1, hr, hr, device=device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            sr = forward_grey(model, lr_b)
        loss = torch.nn.functional.l1_loss(sr.float(), hr_b)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"median_s": statistics.median(times), "min_s": min(times), "hr_patch": hr,
            "params": sum(p.numel() for p in model.parameters()), "max_mem_gib": mem}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--hr-patch", type=int, help="HR patch (default: the preset's, 256)")
    ap.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results = {}
    name_dev = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"CPU ({torch.get_num_threads()} threads)")
    print(f"| preset | params | batch | HR patch | AMP | s/step (median) | paper s/step | faster |  device: {name_dev}")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.presets:
        r = step_time(name, device, args.batch, args.hr_patch, args.amp, args.steps, args.warmup,
                      args.channels_last)
        results[name] = r
        paper = PAPER_S[name]
        amp = str(_amp_dtype(args.amp, device) or "off").replace("torch.", "")
        print(f"| {name} | {r['params']:,} | {args.batch} | {r['hr_patch']} | {amp} | {r['median_s']:.3f} "
              f"| {paper:.3f} | {'yes' if r['median_s'] < paper else 'no'} |", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name_dev, "batch": args.batch, "amp": args.amp,
                                               "results": results, "paper_s": PAPER_S}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
