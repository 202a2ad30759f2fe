"""Per-slice SR latency: naive reference vs srnode's Upscaler, same run, medians and ratios.

naive    = fp32 eager, batch 1, untiled, NCHW, torch.no_grad (what a plain script does)
fast     = sr_engine.upscale.Upscaler at its defaults, fp32 (runtime "auto": ONNX Runtime on CPU
           for the convolutional models, torch elsewhere)
torch    = the Upscaler forced to runtime="torch", fp32 (eager, inference_mode, NCHW on CPU)
openvino = the same ONNX export compiled by OpenVINO's CPU plugin, INFERENCE_PRECISION_HINT f32
           (bench only; needs `pip install openvino`)
compile  = torch.compile (inductor, weight freezing) of the module, fp32 (bench only)
jit      = torch.jit.trace + freeze + optimize_for_inference, fp32 (bench only)
bf16     = the Upscaler with bfloat16 autocast (CPU avx512_bf16/AMX, or CUDA), opt-in
Every fp32 variant's output is compared with naive's (max/mean abs difference in HU).
Variants are interleaved within each repetition so that load from other processes hits all
of them alike; the report gives medians and the naive/fast ratio of the same run.

    .venv/bin/python bench/sr/latency.py --models realesrgan dpsr --sizes 128 --reps 3 \
        --weights-dir ../shared/weights --json bench/sr/results/latency.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sr_engine.archs import count_parameters, create_model, load_checkpoint, load_state_dict, state_dict_for_export  # noqa: E402
from sr_engine.intensity import CT_MAPPING, modality_values  # noqa: E402
from sr_engine.interpolate import Bicubic  # noqa: E402
from sr_engine.metrics import degrade, psnr  # noqa: E402
from sr_engine.upscale import Upscaler  # noqa: E402

# The paper's GPU seconds per slice (128->512, 512->2048).
PAPER_GPU_S = {
    "dpsr": (0.028, 0.381), "realesrgan": (0.068, 1.340), "bsrgan": (0.049, 1.020),
    "swinir": (0.250, 5.840), "hat": (0.467, 10.90),
}


def _descriptor(arch: str, weights_dir: Path | None):
    if arch == "realesrgan" and weights_dir and (weights_dir / "RealESRGAN_x4plus.pth").is_file():
        return load_checkpoint(weights_dir / "RealESRGAN_x4plus.pth", "realesrgan")
    # Latency does not depend on weight values: official configuration, seeded random init.
    torch.manual_seed(0)
    return load_state_dict(state_dict_for_export(create_model(arch)), arch)


def _openvino_runner(module: torch.nn.Module, channels: int, size: int, threads: int):
    """OpenVINO CPU plugin on the same ONNX export as ONNX Runtime, fp32 forced (no silent bf16)."""
    import openvino as ov

    from sr_engine.backends.ort_runner import export_onnx

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(export_onnx(module, channels))
        model = core.read_model(str(path))
    model.reshape([1, channels, size, size])  # static shape: the fastest OpenVINO configuration here
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY",
    })
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    return lambda t: torch.from_numpy(compiled(t.numpy())[0])


def _timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def _input(size: int, ct_slice: Path | None) -> torch.Tensor:
    """LR input [1, 1, size, size] in [0, 1]: a CT slice in the HU mapping, degraded, or noise."""
    if ct_slice is None:
        torch.manual_seed(0)
        return torch.rand(1, 1, size, size)
    hu = torch.from_numpy(modality_values(pydicom.dcmread(ct_slice)))[None, None]
    unit = CT_MAPPING.to_unit(F.interpolate(hu, size=(size * 4, size * 4), mode="bicubic", antialias=True))
    return degrade(unit, 4).clamp(0, 1)


def bench_model(arch: str, size: int, variants: list[str], reps: int, tile: int, device: torch.device,
                weights_dir: Path | None, bar: tqdm, ct_slice: Path | None = None, warmup: bool = True) -> dict:
    """Median seconds per slice of every variant for one model and LR size."""
    x = _input(size, ct_slice)
    if arch == "bicubic":
        module, params, channels = Bicubic(4).to(device), 0, 1
        desc = module
    else:
        desc = _descriptor(arch, weights_dir)
        module, params, channels = desc.model.to(device).eval(), count_parameters(desc), desc.input_channels

    def naive() -> torch.Tensor:
        with torch.no_grad():
            y = module(x.to(device).expand(-1, channels, -1, -1).contiguous())
        return y.float().mean(1, keepdim=True).clamp(0, 1).cpu()

    def grey(fn):  # the naive call around another runner of the same module: grey -> RGB -> grey
        def run() -> torch.Tensor:
            with torch.no_grad():
                y = fn(x.to(device).expand(-1, channels, -1, -1).contiguous())
            return y.float().mean(1, keepdim=True).clamp(0, 1).cpu()
        return run

    runners = {"naive": naive}
    prepare_s: dict[str, float] = {}
    for name in variants:
        if name == "naive" or (arch == "bicubic" and name != "fast"):
            continue
        bar.set_postfix_str(f"{arch} {size} prepare {name}")
        t0 = time.perf_counter()
        if name == "fast":
            up = Upscaler(desc, 4, device, tile=tile, overlap=16, batch=1, precision="fp32")
            runners[name] = lambda up=up: up.upscale_unit(x)
        elif name == "torch":
            upt = Upscaler(desc, 4, device, tile=tile, overlap=16, batch=1, precision="fp32", runtime="torch")
            runners[name] = lambda upt=upt: upt.upscale_unit(x)
        elif name == "bf16":
            upb = Upscaler(desc, 4, device, tile=tile, overlap=16, batch=1, precision="bf16")
            runners[name] = lambda upb=upb: upb.upscale_unit(x)
        elif name == "openvino":
            runners[name] = grey(_openvino_runner(module, channels, size, torch.get_num_threads()))
        elif name == "compile":
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True  # constant-fold weights so oneDNN convs get prepacked weights
            runners[name] = grey(torch.compile(module))
        elif name == "jit":
            with torch.no_grad():
                traced = torch.jit.trace(module, x.expand(-1, channels, -1, -1).contiguous())
                runners[name] = grey(torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval())))
        else:
            raise SystemExit(f"unknown variant {name!r}")
        if name in ("compile", "jit"):
            runners[name]()  # compilation / optimisation happens on the first calls
        prepare_s[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in runners}
    outputs: dict[str, torch.Tensor] = {}
    # One warm-up call each (oneDNN primitive creation, cuDNN autotune) is not timed, unless
    # --no-warmup (minute-long CPU runs of the big models, where it changes little).
    for name, fn in runners.items():
        if warmup:
            bar.set_postfix_str(f"{arch} {size} warm-up {name}")
            outputs[name] = fn()
    for _ in range(reps):
        for name, fn in runners.items():
            bar.set_postfix_str(f"{arch} {size} {name}")
            t, out = _timed(fn, device)
            times[name].append(t)
            outputs.setdefault(name, out)
        bar.update(1)
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "model": arch, "lr": size, "hr": size * 4, "params": params, "reps": reps, "tile": tile, "warmup": warmup,
        "seconds": times, "median_s": med, "min_s": {k: min(v) for k, v in times.items()},
        "prepare_s": prepare_s,
        "speedup_vs_naive": {k: med["naive"] / v for k, v in med.items() if k != "naive"},
        # PSNR of each variant's output against the naive fp32 output, in the unit range and in HU (4095).
        "psnr_vs_naive_db": {k: psnr(outputs[k], outputs["naive"], 1.0).item() for k in outputs if k != "naive"},
        "max_abs_diff_hu": {k: (outputs[k] - outputs["naive"]).abs().max().item() * 4095
                            for k in outputs if k != "naive"},
        "mean_abs_diff_hu": {k: (outputs[k] - outputs["naive"]).abs().mean().item() * 4095
                             for k in outputs if k != "naive"},
    }
    paper = PAPER_GPU_S.get(arch)
    if paper:
        row["paper_gpu_s"] = paper[0] if size == 128 else paper[1] if size == 512 else None
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["bicubic", "dpsr", "realesrgan", "bsrgan", "swinir", "hat"])
    p.add_argument("--sizes", nargs="+", type=int, default=[128])
    p.add_argument("--variants", nargs="+", default=["naive", "fast", "bf16"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tile", type=int, default=64, help="Upscaler LR tile (0: untiled)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights-dir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--no-warmup", action="store_true", help="time the first call too")
    p.add_argument("--ct-slice", type=Path, default=None,
                   help="DICOM CT slice used as input (resized to 4x size, degraded) instead of noise")
    p.add_argument("--smoke", action="store_true",
                   help="bicubic and DPSR at 32², one repetition, no JSON: a quick check that it runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.sizes, args.variants = ["bicubic", "dpsr"], [32], ["naive", "fast"]
        args.reps, args.json = 1, None
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    with tqdm(total=len(args.models) * len(args.sizes) * args.reps, unit="rep", desc="latency") as bar:
        for size in args.sizes:
            for arch in args.models:
                rows.append(bench_model(arch, size, args.variants, args.reps, args.tile or None, device,
                                        args.weights_dir, bar, args.ct_slice, not args.no_warmup))
                r = rows[-1]
                tqdm.write(
                    f"{arch:>10} {size}->{size * 4}: " + ", ".join(f"{k} {v:.3f}s" for k, v in r["median_s"].items())
                    + "  speedup " + ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup_vs_naive"].items())
                )
                _write(args, device, rows)  # after every row: a long run stopped early keeps its rows
    return 0


def _write(args: argparse.Namespace, device: torch.device, rows: list[dict]) -> None:
    if not args.json:
        return
    doc = {
        "command": " ".join(sys.argv), "torch": torch.__version__, "threads": args.threads,
        "device": str(device), "cpu": platform.processor() or platform.machine(), "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    sys.exit(main())
