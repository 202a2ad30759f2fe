"""`srnode train` checks every option, preset field, `--init` checkpoint and the data's slice size
before anything heavy happens: one error line, exit status 2, no traceback, no slice cache built."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from sr_engine.archs import create_model, state_dict_for_export
from srnode.cli import main as srnode
from training.presets import get_preset

_TINY = 'arch_overrides={"num_filters": 8, "num_blocks": 1}'


@pytest.fixture(scope="module")
def swinir_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) SwinIR x4 checkpoint, to be refused as a RealESRGAN --init."""
    path = tmp_path_factory.mktemp("ckpt") / "swinir_tiny.pth"
    model = create_model("swinir", embed_dim=12, depths=[1], num_heads=[1], img_size=16)
    torch.save(state_dict_for_export(model), path)
    return path


@pytest.mark.parametrize("extra, message", [
    (["--set", 'lr="abc"'], "lr must be a number, not 'abc'"),
    (["--set", "lr=abc"], "--set lr=abc: the value is not JSON"),
    (["--set", "steps"], "--set steps: expected KEY=JSON"),
    (["--steps", "-3"], "steps must be > 0, not -3"),
    (["--batch", "0"], "batch_size must be > 0, not 0"),
    (["--lr", "0"], "lr must be > 0, not 0.0"),
    (["--lr", "nan"], "lr must be > 0, not nan"),
    (["--set", "steps=2.5"], "steps must be an integer, not 2.5"),
    (["--hr-patch", "50"], "hr_patch 50 must be a multiple of scale 4"),
    (["--hr-patch", "16"], "hr_patch 16 is too small for realesrgan"),
    (["--set", "milestones=[300000, 200000]"], "milestones must be strictly increasing"),
    (["--set", "milestones=[2000000]"], "land after the last step"),
    (["--set", "gamma=0"], "gamma must be in (0, 1]"),
    (["--set", "betas=[0.9]"], "betas must be two numbers"),
    (["--ema-decay", "1.5"], "ema_decay must be in [0, 1)"),
    (["--val-every", "0"], "val_every must be > 0, not 0"),
    (["--set", 'trainable="("'], "trainable is not a regular expression"),
    (["--set", "blind=1"], "blind must be true or false"),
    (["--set", "perceptual_weight=0.1"], "perceptual/GAN loss terms are not implemented"),
    (["--set", "arch_overrides=3"], "arch_overrides must be a JSON object"),
    (["--set", 'arch_overrides={"no_such_option": 1}'], "arch_overrides rejected by realesrgan"),
    (["--workers", "-1"], "--workers must be >= 0, not -1"),
    (["--val-slices", "0"], "--val-slices must be > 0, not 0"),
    (["--stop-after", "0"], "--stop-after must be > 0, not 0"),
    (["--threads", "0"], "--threads must be > 0, not 0"),
    (["--hr-patch", "1024"], "smaller than hr_patch 1024"),
    (["--init", "{tmp}/none.pth"], "checkpoint file not found"),
    (["--init", "{swinir}"], "this is a SwinIR checkpoint, not a realesrgan one"),
])
def test_bad_option_fails_first_with_one_line(extra: list[str], message: str, tmp_path: Path,
                                              ct_by_name: dict[str, Path], swinir_ckpt: Path,
                                              caplog: pytest.LogCaptureFixture,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["train", "--preset", "realesrgan", "--data", str(ct_by_name["cptac"]),
            "--val-data", str(ct_by_name["ge"]), "--out", str(out), "--steps", "4", "--batch", "1",
            "--hr-patch", "32", "--set", _TINY, "--no-progress", "--threads", "1",
            *[a.replace("{tmp}", str(tmp_path)).replace("{swinir}", str(swinir_ckpt)) for a in extra]]
    with caplog.at_level(logging.ERROR):
        rc = srnode(argv)
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0], errors
    assert "\n" not in errors[0]
    assert "Traceback" not in capsys.readouterr().err
    # Checked before the slice cache is built (minutes of decoding on a real archive).
    assert not (out / "cache").exists()
    assert not (out / "run.json").exists()


def test_preset_validate_lists_every_problem() -> None:
    bad = get_preset("realesrgan").with_overrides(steps=-3, lr="abc", hr_patch=50)
    with pytest.raises(ValueError) as err:
        bad.validate()
    text = str(err.value)
    assert "steps must be > 0" in text and "lr must be a number" in text and "hr_patch 50" in text
    get_preset("realesrgan").validate()  # the shipped presets are valid as they are
    get_preset("hat").validate()


def test_window_models_need_a_patch_of_at_least_one_window() -> None:
    # HAT's official window is 16 LR pixels: a 32-pixel HR patch is a 8x8 LR patch, half a window.
    with pytest.raises(ValueError, match="hr_patch 32 is too small for hat"):
        get_preset("hat").with_overrides(hr_patch=32).validate()
    get_preset("hat").with_overrides(hr_patch=64).validate()
    get_preset("swinir").with_overrides(hr_patch=32).validate()  # window 8
