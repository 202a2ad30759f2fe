"""`srnode models list`, `srnode sr`, `srnode evaluate` end to end through the real CLI."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from sr_engine.intensity import modality_values
from srnode.cli import main

REPO = Path(__file__).resolve().parents[2]


def srnode_process(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run the srnode CLI in a fresh interpreter (2 torch threads): exit code and stderr as a user sees them."""
    code = "import sys, torch; torch.set_num_threads(2); from srnode.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str  # progress bars plus the log records of the run


def srnode(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, *args: str) -> Result:
    """Run `srnode ARGS` in this process through the real entry point (saves an interpreter start)."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main(list(args))
    out, err = capsys.readouterr()
    return Result(code, out, err + "\n".join(r.getMessage() for r in caplog.records))


def test_models_list_with_config(capsys, caplog, tmp_path: Path, weights_dir: Path,
                                 weights_sha256: dict[str, str]) -> None:
    name = "RealESRGAN_x4plus_anime_6B.pth"
    cfg = tmp_path / "srnode.yaml"
    cfg.write_text(
        f"models:\n  anime:\n    arch: realesrgan\n    weights: {weights_dir / name}\n"
        f"    sha256: {weights_sha256[name]}\n"
    )
    r = srnode(capsys, caplog, "models", "list", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert lines["anime"][:4] == ["anime", "realesrgan", "x4", "ok"]
    assert lines["bicubic"][3] == "built-in" and lines["hat"][3:5] == ["no", "weights"]


def test_sr_writes_upscaled_dicom(capsys, caplog, tmp_path: Path, ct_dirs: list[Path]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    ge = next(d for d in ct_dirs if d.name.startswith("ge-"))  # signed 16-bit
    for p in sorted(ge.glob("*.dcm"))[:2]:
        shutil.copy(p, src / p.name)
    (src / "notes.txt").write_text("not DICOM")
    out = tmp_path / "out"
    r = srnode(capsys, caplog, "sr", "--model", "bicubic", str(src), str(out))
    assert r.returncode == 0, r.stderr
    assert "skipping" in r.stderr and "notes.txt" in r.stderr and "100%" in r.stderr  # one line + progress
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 2
    for f in files:
        ds = pydicom.dcmread(f)
        source_uid = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        source = next(pydicom.dcmread(p) for p in src.glob("*.dcm")
                      if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == source_uid)
        assert (ds.Rows, ds.Columns) == (2048, 2048)
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert float(ds.PixelSpacing[0]) * 4 == float(source.PixelSpacing[0])
        # The CT mapping clips to [-1024, 3071] HU (this GE series stores -1500 outside the FOV).
        hu = torch.from_numpy(modality_values(source)).clamp(-1024, 3071)[None, None]
        expected = torch.nn.functional.interpolate(hu, scale_factor=4, mode="bicubic")[0, 0].clamp(-1024, 3071)
        assert np.abs(modality_values(ds) - expected.numpy()).max() <= 0.51  # only integer rounding


def test_sr_refuses_tampered_weights(tmp_path: Path, ct_dirs: list[Path], weights_dir: Path,
                                     weights_sha256: dict[str, str]) -> None:
    name = "RealESRGAN_x4plus_anime_6B.pth"
    bad = tmp_path / name
    data = bytearray((weights_dir / name).read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    r = srnode_process("sr", "--model", "realesrgan", "--weights", str(bad), "--sha256", weights_sha256[name],
               str(ct_dirs[0]), str(tmp_path / "out"))
    assert r.returncode == 1
    assert "sha256 mismatch" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_evaluate_real_weights_table_and_json(capsys, caplog, tmp_path: Path, ct_dirs: list[Path],
                                              weights_dir: Path) -> None:
    out = tmp_path / "eval.json"
    r = srnode(capsys, caplog, "evaluate", "--model", "realesrgan",
               "--weights", str(weights_dir / "RealESRGAN_x4plus_anime_6B.pth"),
               "--max-slices", "2", "--batch", "2", "--tile", "0", "--json", str(out), str(ct_dirs[0]))
    assert r.returncode == 0, r.stderr
    assert "| realesrgan |" in r.stdout and "| bicubic |" in r.stdout and "100%" in r.stderr
    doc = json.loads(out.read_text())
    assert doc["scale"] == 4 and len(doc["slices"]) == 2
    s = doc["slices"][0]
    for method in ("realesrgan", "bicubic"):
        assert set(s[method]) == {"psnr_hu", "ssim_hu", "psnr_win", "ssim_win", "lr_psnr"}
        assert 20 < s[method]["psnr_hu"] < 60 and 0 < s[method]["ssim_hu"] <= 1
    assert doc["summary"]["bicubic"]["psnr_hu"]["n"] == 2


def test_evaluate_bicubic_with_projection(capsys, caplog, tmp_path: Path, ct_dirs: list[Path]) -> None:
    out = tmp_path / "eval.json"
    r = srnode(capsys, caplog, "evaluate", "--model", "lanczos", "--max-slices", "1", "--project", "--json", str(out),
               str(ct_dirs[1]))
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.read_text())["summary"]
    # Projection onto the LR-consistent set raises LR-consistency well above the raw output's.
    assert summary["lanczos+proj"]["lr_psnr"]["mean"] > summary["lanczos"]["lr_psnr"]["mean"] + 5
    assert summary["lanczos"]["psnr_hu"]["mean"] > summary["bicubic"]["psnr_hu"]["mean"] - 1


def test_evaluate_native_models_against_lanczos(capsys, caplog, tmp_path: Path, ct_dirs: list[Path],
                                                repo_root: Path) -> None:
    out = tmp_path / "native"
    cfg = repo_root / "models" / "ct-realesrgan-anime6b" / "registry.yaml"
    r = srnode(capsys, caplog, "evaluate", "--native", "--model", "ct-realesrgan-anime6b", "--model", "lanczos",
               "--config", str(cfg), "--max-slices", "2", "--crop", "64", "--out", str(out), *map(str, ct_dirs))
    assert r.returncode == 0, r.stderr
    assert "100%" in r.stderr and "| all | ct-realesrgan-anime6b | 6 |" in r.stdout
    doc = json.loads((out / "native.json").read_text())
    assert len(doc["slices"]) == 6 and {s["native_shape"][0] for s in doc["slices"]} == {64}
    for s in doc["slices"]:
        # The registry's `lanczos` model (tiled engine path, [0, 1] mapping) is the reference itself.
        assert s["models"]["lanczos"]["noise_ratio"] == pytest.approx(1.0, abs=1e-3)
        assert s["models"]["lanczos"]["edge_ratio"] == pytest.approx(1.0, abs=1e-3)
        # A finite, positive ratio (the native-noise-trained model suppresses the sharp B70f
        # kernel's noise to ~0.1 of lanczos's: RESULTS.md, "Native resolution").
        assert 0 < s["models"]["ct-realesrgan-anime6b"]["noise_ratio"] < 3
    series = [k for k in doc["summary"] if k != "all"]
    assert len(series) == 3
    first = [s["models"]["ct-realesrgan-anime6b"]["edge_ratio"] for s in doc["slices"] if s["series"] == series[0]]
    assert doc["summary"][series[0]]["ct-realesrgan-anime6b"]["edge_ratio"]["mean"] == pytest.approx(sum(first) / 2)
    assert doc["protocol"]["targets"] == {"noise_ratio_max": 1.1, "edge_ratio_min": 1.05}
    assert (out / "native.md").read_text().startswith("| series | model |")
    pngs = sorted((out / "crops").glob("*.png"))
    assert len(pngs) == 3 and (out / "native.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_native_refuses_bad_options(capsys, caplog, tmp_path: Path, ct_dirs: list[Path]) -> None:
    r = srnode(capsys, caplog, "evaluate", "--model", "bicubic", "--model", "lanczos", str(ct_dirs[1]))
    assert r.returncode == 1 and "repeat --model only with --native" in r.stderr
    r = srnode(capsys, caplog, "evaluate", "--native", "--model", "bicubic", str(ct_dirs[1]))
    assert r.returncode == 1 and "--native needs --out" in r.stderr
    r = srnode(capsys, caplog, "evaluate", "--native", "--model", "bicubic", "--crop", "16", "--out", str(tmp_path),
               str(ct_dirs[1]))
    assert r.returncode == 1 and "--crop 16" in r.stderr
