"""Bad input to the training commands: exit status 2 and one clear log line, no traceback."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from srnode.cli import main as srnode


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "realesrgan", "--data", "{tmp}/missing", "--out", "{tmp}/o"], "data path not found"),
    (["train", "--preset", "edsr", "--data", "{tmp}", "--out", "{tmp}/o"], "unknown preset"),
    (["train", "--preset", "realesrgan", "--data", "{mr}", "--out", "{tmp}/o"], "no CT series found"),
    (["train", "--preset", "realesrgan", "--data", "{ct}", "--out", "{tmp}/o", "--init", "{tmp}/none.pth"],
     "checkpoint file not found"),
])
def test_bad_input_is_one_error_line(argv: list[str], message: str, tmp_path: Path, shared_dir: Path,
                                     ct_by_name: dict[str, Path], caplog: pytest.LogCaptureFixture,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    fill = {"tmp": str(tmp_path), "mr": str(shared_dir / "data" / "mr"), "ct": str(ct_by_name["cptac"])}
    with caplog.at_level(logging.ERROR):
        rc = srnode([a.format(**fill) for a in argv])
    assert rc == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0].getMessage()
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("name", ["bicubic", "Lanczos"])
def test_export_model_refuses_a_built_in_name(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A fine-tuned network exported as "bicubic" would be run and labelled as the bicubic baseline.
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"preset": {"arch": "realesrgan"}}))
    with caplog.at_level(logging.ERROR):
        rc = srnode(["export-model", "--run", str(run), "--dest", str(tmp_path / "out"), "--name", name])
    assert rc == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "name of a built-in model" in errors[0], errors
    assert not (tmp_path / "out").exists()
