"""Architectures, official state-dict layouts, strict loading, checksums, the real weights."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sr_engine.archs import (
    ARCHS,
    REGISTRY,
    CheckpointError,
    count_parameters,
    create_model,
    load_checkpoint,
    load_state_dict,
    state_dict_for_export,
)
from sr_engine.dpsr import DPSR
from tests.sr_engine.conftest import TINY, basicsr_to_bsrgan, old_rrdb_to_basicsr


def _same_output(model: torch.nn.Module, descriptor, channels: int = 3, size: int = 20) -> None:
    torch.manual_seed(0)
    x = torch.rand(1, channels, size, size)
    with torch.inference_mode():
        expected = model.eval()(x)
        got = descriptor.model(x)
    assert torch.equal(got, expected)


def test_dpsr_registered_beside_spandrel_archs() -> None:
    ids = {str(a.architecture.id) for a in REGISTRY}
    assert {"DPSR", "ESRGAN", "SwinIR", "HAT"} <= ids
    assert ARCHS == ("realesrgan", "bsrgan", "dpsr", "swinir", "hat", "compact")


@pytest.mark.parametrize("arch,expected", [("realesrgan", 16_697_987), ("bsrgan", 16_697_987), ("dpsr", 3_493_824)])
def test_official_parameter_counts(arch: str, expected: int) -> None:
    assert count_parameters(create_model(arch)) == expected


def test_transformer_parameter_counts_reported(capsys: pytest.CaptureFixture[str]) -> None:
    # The paper lists SwinIR 35.3M / HAT 41.1M; the official release configurations count:
    counts = {a: count_parameters(create_model(a)) for a in ("swinir", "hat")}
    with capsys.disabled():
        print(f"\nofficial x4 configurations: SwinIR-L real-SR {counts['swinir']:,}, HAT-L {counts['hat']:,}")
    assert counts == {"swinir": 28_013_059, "hat": 40_846_575}


def test_dpsr_layout_matches_kair_keys() -> None:
    sd = create_model("dpsr").state_dict()
    assert sd["model.0.weight"].shape == (96, 4, 3, 3)
    assert "model.1.sub.15.res.2.weight" in sd and "model.1.sub.16.weight" in sd
    assert sd["model.2.weight"].shape == (384, 96, 3, 3) and sd["model.5.weight"].shape == (384, 96, 3, 3)
    assert "model.10.weight" in sd and "model.10.bias" not in sd  # KAIR's last conv has no bias


def test_dpsr_appends_noise_level_map() -> None:
    m = DPSR(nc=8, nb=1, noise_level=15).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        explicit = m(torch.cat([x, torch.full_like(x[:, :1], 15 / 255)], 1))
        assert torch.equal(m(x), explicit)
        assert m(x).shape == (1, 3, 32, 32)


def _layouts(arch: str, model: torch.nn.Module) -> dict[str, dict]:
    """Every official release layout of `arch`, built from `model`'s weights."""
    sd = state_dict_for_export(model)
    if arch in ("realesrgan", "bsrgan"):
        basicsr = old_rrdb_to_basicsr(sd)
        return {
            "basicsr_params_ema": {"params_ema": basicsr},
            "basicsr_params": {"params": basicsr},
            "bsrgan_old_names": basicsr_to_bsrgan(basicsr),
            "esrgan_old_arch": sd,
        }
    if arch == "dpsr":
        return {"kair_plain": sd}
    # SwinIR/HAT/Compact releases: BasicSR-style wrapper around the module's own key names.
    return {"release_params_ema": {"params_ema": sd}, "release_params": {"params": sd}, "plain": sd}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_layout_loads_strictly_and_faithfully(arch: str, tmp_path: Path) -> None:
    model = create_model(arch, **TINY[arch])
    for name, layout in _layouts(arch, model).items():
        d = load_state_dict(layout, expected_arch=arch, source=name)
        assert d.scale == 4 and d.input_channels == 3, name
        _same_output(model, d)
        # and from files: a weights-only torch pickle and safetensors
        pth = tmp_path / f"{name}.pth"
        torch.save(layout, pth)
        _same_output(model, load_checkpoint(pth, expected_arch=arch))
    st = tmp_path / "flat.safetensors"
    save_file(state_dict_for_export(model), str(st))
    _same_output(model, load_checkpoint(st, expected_arch=arch))


@pytest.mark.parametrize(
    "upsampler,resi", [("pixelshuffle", "1conv"), ("nearest+conv", "3conv"), ("pixelshuffledirect", "1conv")]
)
def test_swinir_release_variants(upsampler: str, resi: str) -> None:
    # Classical (pixelshuffle), real-world (nearest+conv, 3conv for -L) and lightweight SR releases.
    model = create_model("swinir", **{**TINY["swinir"], "upsampler": upsampler, "resi_connection": resi})
    _same_output(model, load_state_dict({"params": state_dict_for_export(model)}, "swinir"))


def test_params_ema_preferred_over_params() -> None:
    ema = create_model("dpsr", **TINY["dpsr"])
    raw = create_model("dpsr", **TINY["dpsr"])
    d = load_state_dict({"params": state_dict_for_export(raw), "params_ema": state_dict_for_export(ema)}, "dpsr")
    _same_output(ema, d)


def test_missing_key_is_named() -> None:
    sd = state_dict_for_export(create_model("dpsr", **TINY["dpsr"]))
    del sd["model.8.weight"]
    with pytest.raises(CheckpointError, match=r"model\.8\.weight"):
        load_state_dict(sd, "dpsr")


def test_unexpected_key_is_named() -> None:
    for arch in ("dpsr", "realesrgan", "swinir"):
        sd = state_dict_for_export(create_model(arch, **TINY[arch]))
        if arch == "realesrgan":
            sd = {"params_ema": old_rrdb_to_basicsr(sd)}
            sd["params_ema"]["extra_head.weight"] = torch.zeros(3)
        else:
            sd["extra_head.weight"] = torch.zeros(3)
        with pytest.raises(CheckpointError, match=r"(?i)unexpected key.*extra_head\.weight"):
            load_state_dict(sd, arch)


def test_wrong_shape_is_refused() -> None:
    sd = state_dict_for_export(create_model("dpsr", **TINY["dpsr"]))
    sd["model.1.sub.0.res.0.weight"] = torch.zeros(8, 8, 5, 5)
    with pytest.raises(CheckpointError, match=r"model\.1\.sub\.0\.res\.0\.weight"):
        load_state_dict(sd, "dpsr")


def test_expected_architecture_is_enforced() -> None:
    sd = state_dict_for_export(create_model("dpsr", **TINY["dpsr"]))
    with pytest.raises(CheckpointError, match="missing key|expected architecture"):
        load_state_dict(sd, "swinir")


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"params": Path("/etc/passwd")}, path)  # an arbitrary Python object, not tensors
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(path)


def test_real_realesrgan_x4plus(weights_dir: Path, weights_sha256: dict[str, str], ct_slice_hu: torch.Tensor) -> None:
    d = load_checkpoint(weights_dir / "RealESRGAN_x4plus.pth", "realesrgan", weights_sha256["RealESRGAN_x4plus.pth"])
    assert str(d.architecture.id) == "ESRGAN" and d.scale == 4
    assert count_parameters(d) == 16_697_987 and "23nb" in d.tags
    # Real weights restore a smooth 32x32 CT patch to roughly what bicubic gives (random weights do not).
    patch = ((ct_slice_hu[..., 200:328, 200:328] + 1024) / 4095).clamp(0, 1)
    lr = torch.nn.functional.interpolate(patch, scale_factor=0.25, mode="bicubic", antialias=True)
    with torch.inference_mode():
        sr = d(lr.expand(-1, 3, -1, -1)).mean(1, keepdim=True)
    bic = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic").clamp(0, 1)
    assert sr.shape == (1, 1, 128, 128)
    mse = (sr - bic).pow(2).mean()
    assert 10 * torch.log10(1 / mse) > 25


def test_real_anime_6b(weights_dir: Path, weights_sha256: dict[str, str]) -> None:
    name = "RealESRGAN_x4plus_anime_6B.pth"
    d = load_checkpoint(weights_dir / name, "realesrgan", weights_sha256[name])
    assert count_parameters(d) == 4_467_779 and "6nb" in d.tags


def test_tampered_checkpoint_refused(weights_dir: Path, weights_sha256: dict[str, str], tmp_path: Path) -> None:
    name = "RealESRGAN_x4plus_anime_6B.pth"
    copy = tmp_path / name
    shutil.copy(weights_dir / name, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the middle of the weights
    copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(copy, "realesrgan", weights_sha256[name])
    load_checkpoint(weights_dir / name, "realesrgan", weights_sha256[name])  # the original still loads
