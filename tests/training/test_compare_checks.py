"""`srnode compare`: a run's last.pt is pointed to the run's EMA weights before any slice is
decoded, and the bar chart's value axes start at zero (a 0.3 dB gain must not look like 3x)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from sr_engine.archs import create_model, state_dict_for_export
from srnode.cli import main as srnode
from tests.training.conftest import TINY_ARCH
from training.compare import BICUBIC, ModelPair, bar_figure
from training.loop import RunConfig, train
from training.presets import Preset


def test_compare_given_last_pt_points_to_final_ema(ct_by_name: dict[str, Path], tiny_preset: Preset,
                                                   tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    train(tiny_preset.with_overrides(steps=2, val_every=2), RunConfig(
        data=[ct_by_name["cptac"]], val_data=[ct_by_name["ge"]], out=run, val_slices=1, val_crop=64,
        progress=False, threads=1))
    zero_shot = tmp_path / "zs.pth"
    torch.save(state_dict_for_export(create_model("realesrgan", **TINY_ARCH)), zero_shot)
    out = tmp_path / "cmp"
    with caplog.at_level(logging.ERROR):
        rc = srnode(["compare", "--data", str(ct_by_name["lung"]), "--pair", "tiny", str(zero_shot),
                     str(run / "last.pt"), "--out", str(out), "--device", "cpu"])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "training-state checkpoint" in errors[0] and str(run / "final_ema.pt") in errors[0], errors[0]
    assert "weights_only" not in errors[0] and "Traceback" not in capsys.readouterr().err
    assert not (out / "cache").exists()  # refused before the test slices are decoded
    # The run's EMA weights it points to are what compare takes.
    rc = srnode(["compare", "--data", str(ct_by_name["lung"]), "--pair", "tiny", str(zero_shot),
                 str(run / "final_ema.pt"), "--out", str(out), "--device", "cpu", "--max-slices", "1",
                 "--crop", "64"])
    assert rc == 0


def test_bar_axes_start_at_zero() -> None:
    pairs = [ModelPair("a", Path("za"), Path("fa")), ModelPair("b", Path("zb"), Path("fb"))]
    values = {BICUBIC: (31.0, 0.80), "a zero-shot": (31.2, 0.81), "a fine-tuned": (31.5, 0.83),
              "b zero-shot": (30.9, 0.79), "b fine-tuned": (32.1, 0.85)}
    summary = {m: {"psnr_hu": {"mean": p}, "ssim_hu": {"mean": s}} for m, (p, s) in values.items()}
    fig = bar_figure(summary, pairs)
    psnr_ax, ssim_ax = fig.axes[:2]
    assert psnr_ax.get_ylim()[0] == 0 and psnr_ax.get_ylim()[1] > 32.1
    assert ssim_ax.get_ylim()[0] == 0 and ssim_ax.get_ylim()[1] >= 1.0
    # Readable without squinting at bar heights: every bar carries its value.
    labels = {t.get_text() for ax in (psnr_ax, ssim_ax) for t in ax.texts}
    assert {"31.20", "31.50", "30.90", "32.10", "0.810", "0.830", "0.790", "0.850"} <= labels
