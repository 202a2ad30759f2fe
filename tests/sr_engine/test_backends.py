"""CPU runtimes: the ONNX Runtime export matches eager fp32, "auto" chooses sensibly, fallbacks are clean."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

from sr_engine.archs import create_model, load_checkpoint, load_state_dict, state_dict_for_export
from sr_engine.backends import available, choose_runtime
from sr_engine.intensity import CT_MAPPING
from sr_engine.metrics import degrade
from sr_engine.upscale import Upscaler
from tests.sr_engine.conftest import TINY

needs_ort = pytest.mark.skipif(not available("onnxruntime"), reason="onnxruntime/onnx not installed")

HU = 4095.0  # the CT mapping's unit range spans 4095 HU


def _tiny(arch: str):  # noqa: ANN202 - spandrel descriptor
    torch.manual_seed(3)
    return load_state_dict(state_dict_for_export(create_model(arch, **TINY[arch])), arch)


def _ct_lr(ct_slice_hu: torch.Tensor, size: int) -> torch.Tensor:
    hr = CT_MAPPING.to_unit(ct_slice_hu[..., 160:160 + 4 * size, 160:160 + 4 * size])
    return degrade(hr, 4).clamp(0, 1)


@needs_ort
@pytest.mark.parametrize("arch", ["realesrgan", "dpsr", "compact"])
def test_onnxruntime_matches_eager_fp32_tiny(arch: str, ct_slice_hu: torch.Tensor) -> None:
    d = _tiny(arch)
    ort_up = Upscaler(d, 4, tile=24, overlap=12, runtime="onnxruntime")
    eager = Upscaler(d, 4, tile=24, overlap=12, runtime="torch")
    assert ort_up.runtime == "onnxruntime" and eager.runtime == "torch"
    # Still a module whose parameters callers can inspect (dtype checks, parameter counts).
    assert sum(p.numel() for p in ort_up.module.parameters()) == sum(p.numel() for p in d.model.parameters())
    # Raw network output (before clamping) at two shapes other than the export's: dynamic axes work.
    for shape in [(1, 3, 20, 28), (2, 3, 33, 17)]:
        x = torch.rand(shape)
        with torch.inference_mode():
            ref = d.model(x)
        got = ort_up.module(x)
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    lr = torch.cat([_ct_lr(ct_slice_hu, 40), _ct_lr(ct_slice_hu, 40).flip(-1)])  # batch 2, 40x40, 2x2 tiles
    diff_hu = (ort_up.upscale_unit(lr) - eager.upscale_unit(lr)).abs().max().item() * HU
    assert diff_hu < 0.05, diff_hu


@needs_ort
def test_onnxruntime_matches_eager_fp32_real_realesrgan(weights_dir: Path, ct_slice_hu: torch.Tensor) -> None:
    d = load_checkpoint(weights_dir / "RealESRGAN_x4plus.pth", "realesrgan")
    lr = _ct_lr(ct_slice_hu, 24)
    auto = Upscaler(d, 4, tile=None)  # the CPU default
    assert auto.runtime == "onnxruntime"
    eager = Upscaler(d, 4, tile=None, runtime="torch")
    out, ref = auto.upscale_unit(lr), eager.upscale_unit(lr)
    assert out.shape == ref.shape == (1, 1, 96, 96)
    assert ref.std().item() > 0.01  # a real image, not a clamped constant
    diff = (out - ref).abs()
    assert diff.max().item() * HU < 0.5, diff.max().item() * HU
    assert diff.mean().item() * HU < 0.01, diff.mean().item() * HU


@needs_ort
def test_auto_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_runtime("auto", cpu, "fp32", "ESRGAN") == "onnxruntime"
    assert choose_runtime("auto", cpu, "fp32", "DPSR") == "onnxruntime"
    assert choose_runtime("auto", cpu, "fp32", "Compact") == "onnxruntime"
    assert choose_runtime("auto", cpu, "fp32", "SwinIR") == "torch"  # window attention: eager
    assert choose_runtime("auto", cpu, "bf16", "ESRGAN") == "torch"  # reduced precision: torch autocast
    assert choose_runtime("auto", cuda, "fp32", "ESRGAN") == "torch"
    assert choose_runtime("torch", cpu, "fp32", "ESRGAN") == "torch"
    assert Upscaler(_tiny("swinir"), 4).runtime == "torch"
    assert Upscaler(_tiny("dpsr"), 4, compile=False, precision="bf16").runtime == "torch"
    with pytest.raises(ValueError, match="unknown runtime"):
        choose_runtime("tensorrt", cpu, "fp32", "ESRGAN")


def test_missing_runtime_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails as if not installed
    d = _tiny("dpsr")
    with caplog.at_level(logging.WARNING, logger="sr_engine"):
        explicit = Upscaler(d, 4, runtime="onnxruntime")
        auto = Upscaler(d, 4)
    assert explicit.runtime == auto.runtime == "torch"
    assert [r.message for r in caplog.records] == ["runtime onnxruntime is not installed; using torch"] * 2
    x = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(auto.upscale_unit(x), Upscaler(d, 4, runtime="torch").upscale_unit(x))


@needs_ort
def test_failed_export_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import sr_engine.backends.ort_runner as ort_runner

    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("Unsupported: ONNX export of operator foo\nsecond line")

    monkeypatch.setattr(ort_runner, "export_onnx", broken)
    with caplog.at_level(logging.WARNING, logger="sr_engine"):
        up = Upscaler(_tiny("dpsr"), 4)
    assert up.runtime == "torch"
    assert len(caplog.records) == 1 and "using torch" in caplog.records[0].message
    assert up.upscale_unit(torch.rand(1, 1, 8, 8)).shape == (1, 1, 32, 32)
