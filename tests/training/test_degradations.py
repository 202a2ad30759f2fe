"""The optional blind degradations: float in, float out, statistics as configured."""
from __future__ import annotations

import numpy as np
import pytest

from training.degradations import BLIND, DegradationConfig, blur, gaussian_kernel, jpeg_like, post_downsample


def test_kernel_and_blur_preserve_mean_and_smooth() -> None:
    k = gaussian_kernel(2.0, 1.0, 0.3)
    assert abs(float(k.sum()) - 1) < 1e-5
    rng = np.random.default_rng(0)
    img = rng.random((64, 64)).astype(np.float32)
    out = blur(img, k)
    assert out.shape == img.shape and out.dtype == np.float32
    assert abs(out.mean() - img.mean()) < 0.01 and out.std() < img.std() / 2
    flat = np.full((40, 40), 0.3, np.float32)
    np.testing.assert_allclose(blur(flat, k), flat, atol=1e-5)


def test_jpeg_like_is_float_and_lossy_with_quality() -> None:
    rng = np.random.default_rng(1)
    img = np.clip(np.cumsum(rng.normal(0, 0.02, (37, 45)), axis=1) + 0.5, 0, 1).astype(np.float32)
    hi, lo = jpeg_like(img, 95), jpeg_like(img, 10)
    assert hi.dtype == np.float32 and hi.shape == img.shape
    assert np.abs(hi - img).mean() < np.abs(lo - img).mean()
    assert len(np.unique(lo)) > 256  # not an 8-bit image


def test_post_downsample_off_is_identity_and_blind_adds_noise() -> None:
    img = np.full((32, 32), 0.4, np.float32)
    rng = np.random.default_rng(2)
    np.testing.assert_array_equal(post_downsample(img, DegradationConfig(), rng), img)
    noisy = DegradationConfig(gaussian_noise_prob=1.0, gaussian_sigma=(0.05, 0.05))
    out = post_downsample(img, noisy, rng)
    assert 0.04 < float(out.std()) < 0.06
    assert BLIND.enabled and not DegradationConfig().enabled


def test_overrides_replace_fields_and_refuse_nonsense() -> None:
    from training.degradations import NATIVE_CT, with_overrides
    from training.presets import get_preset

    d = with_overrides(NATIVE_CT, {"blur_prob": 0.6, "native_noise_scale": [0.5, 2.5]})
    assert d.blur_prob == 0.6 and d.native_noise_scale == (0.5, 2.5)
    assert d.native_noise_prob == NATIVE_CT.native_noise_prob  # the rest is kept
    for bad, msg in (({"blur": 0.5}, "unknown field 'blur'"), ({"jpeg_prob": 1.5}, "probability"),
                     ({"blur_sigma": [2.0, 1.0]}, "range")):
        with pytest.raises(ValueError, match=msg):
            with_overrides(NATIVE_CT, bad)
        # The preset check names the same problem before any data is read.
        with pytest.raises(ValueError, match=msg):
            get_preset("compact").with_overrides(degradation_overrides=bad).validate()


def test_model_card_names_the_degradations_the_run_used() -> None:
    from dataclasses import asdict

    from training.degradations import NATIVE_CT
    from training.export import describe_degradations

    card = {"preset": {"blind": False}, "degradations": asdict(NATIVE_CT)}
    text = describe_degradations(card)
    assert "own measured CT noise on 70% of LR patches at 0.5-1.3x" in text and "sigma 0.3-1 px on 30%" in text
    assert describe_degradations({"preset": {"blind": False}, "degradations": asdict(DegradationConfig())}) \
        == "bicubic x4 only"
    assert describe_degradations({"preset": {"blind": True}}).startswith("blind")  # a run before the record


def test_network_interpolation_blends_same_architecture_only() -> None:
    import torch

    from training.export import interpolate_weights

    a = {"w": torch.zeros(2, 2), "n": torch.tensor(3)}
    b = {"w": torch.ones(2, 2), "n": torch.tensor(7)}
    mid = interpolate_weights(a, b, 0.25)
    assert torch.allclose(mid["w"], torch.full((2, 2), 0.25)) and int(mid["n"]) == 3
    with pytest.raises(ValueError, match="not the same architecture"):
        interpolate_weights(a, {"w": torch.ones(3, 2), "n": torch.tensor(1)}, 0.5)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        interpolate_weights(a, b, 1.5)
