"""Helpers shared by the bench/sr scripts: model folders, test series, child processes, result files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
import yaml
from pydicom.uid import generate_uid

if TYPE_CHECKING:
    from sr_engine.registry import LoadedModel

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SRNODE_SHARED_DIR", REPO.parent / "shared")).resolve()
DEFAULT_CT_DIR = SHARED / "data" / "ct" / "cptac-lscc_C3N-00247_chest"
CT_ROOT = SHARED / "data" / "ct"
RRDB6_DIR = REPO / "models" / "ct-realesrgan-anime6b"
# The fast CT model of issue 15 once it is trained and shipped; until then benches time untrained
# weights of the same architecture (speed and memory do not depend on weight values).
COMPACT_DIR = REPO / "models" / "ct-compact"
COMPACT_CONFIG = {"num_in_ch": 1, "num_out_ch": 1, "num_feat": 48, "num_conv": 16}  # training preset "compact"
UNTRAINED_DIR = REPO / "var" / "bench-sr" / "compact-untrained"


def compact_model_dir() -> Path:
    """models/ct-compact when it is there, else a folder with seeded untrained weights of the same
    architecture (Compact 48 features x 16 convolutions, 1 channel, x4) and its registry.yaml."""
    if (COMPACT_DIR / "registry.yaml").is_file():
        return COMPACT_DIR
    registry = UNTRAINED_DIR / "registry.yaml"
    if not registry.is_file():
        import torch
        from safetensors.torch import save_file

        from sr_engine.archs import create_model, file_sha256, state_dict_for_export

        UNTRAINED_DIR.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        weights = UNTRAINED_DIR / "compact-untrained.safetensors"
        save_file(state_dict_for_export(create_model("compact", scale=4, **COMPACT_CONFIG)), str(weights))
        entry = {"arch": "compact", "weights": weights.name, "sha256": file_sha256(weights), "scale": 4,
                 "description": "untrained Compact 48x16 (timing and memory only)"}
        registry.write_text(yaml.safe_dump({"models": {"ct-compact-untrained": entry}}), encoding="utf-8")
    return UNTRAINED_DIR


def model_dir_arg(text: str) -> Path:
    """argparse type for --model-dir: a folder with registry.yaml, or `compact` / `rrdb6` for the two
    CT models of the repository (`compact`: untrained weights until models/ct-compact exists)."""
    if text == "compact":
        return compact_model_dir()
    if text == "rrdb6":
        return RRDB6_DIR
    return Path(text)


def model_entries(model_dir: Path) -> dict[str, dict[str, Any]]:
    """The `models:` entries of a model folder's registry.yaml, weights made absolute."""
    doc = yaml.safe_load((Path(model_dir) / "registry.yaml").read_text(encoding="utf-8")) or {}
    entries = doc.get("models") or {}
    if not entries:
        raise ValueError(f"{model_dir}/registry.yaml has no models: entry")
    for entry in entries.values():
        if entry.get("weights"):
            entry["weights"] = str((Path(model_dir) / entry["weights"]).resolve())
    return entries


def load_model_dir(model_dir: Path, **options: Any) -> LoadedModel:
    """The first model of a folder's registry.yaml, loaded with sha256 check (`options`: Upscaler's)."""
    from config.schema import ModelEntry
    from sr_engine import registry

    name, entry = next(iter(model_entries(model_dir).items()))
    spec = registry.resolve(name, {name: ModelEntry(**entry)})
    return registry.load(spec, **options)


def ct_files(folder: Path, count: int) -> list[Path]:
    """`count` slices spread evenly over a CT folder (sorted names)."""
    files = sorted(Path(folder).glob("*.dcm"))
    if not files:
        raise FileNotFoundError(f"no .dcm files in {folder}")
    pick = np.unique(np.linspace(0, len(files) - 1, num=min(count, len(files))).round().astype(int))
    return [files[i] for i in pick]


def resampled(ds: pydicom.Dataset, size: int) -> pydicom.Dataset:
    """`ds` with its pixels resampled to size² in HU (area-averaged down, bicubic up), stored
    values, rescale and pixel spacing to match: real CT content at 128², 512² or 1024²."""
    import torch
    import torch.nn.functional as F

    from sr_engine.intensity import modality_values

    if (int(ds.Rows), int(ds.Columns)) == (size, size):
        return ds
    hu = torch.from_numpy(modality_values(ds).astype(np.float32))[None, None]
    mode = "area" if size < hu.shape[-1] else "bicubic"
    hu = F.interpolate(hu, size=(size, size), mode=mode, **({"align_corners": False} if mode != "area" else {}))
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    stored = np.rint((hu[0, 0].numpy() - intercept) / slope)
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    info = np.iinfo(np.int16 if signed else np.uint16)
    stored = np.clip(stored, info.min, info.max).astype(info.dtype)
    spacing = [float(v) * int(ds.Rows) / size for v in ds.PixelSpacing]
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [f"{v:.6g}" for v in spacing]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = stored.tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def ct_sources(roots: Sequence[Path] = (CT_ROOT,)) -> list[Path]:
    """Every CT slice under `roots`, sorted."""
    sources = sorted(p for root in roots for p in Path(root).rglob("*.dcm"))
    if not sources:
        raise FileNotFoundError(f"no CT slices under {', '.join(map(str, roots))}")
    return sources


def build_series(out_dir: Path, slices: int, size: int | None = None, roots: Sequence[Path] = (CT_ROOT,)) -> list[Path]:
    """A synthetic CT series of `slices` real slices (the shared CT folders, repeated as needed)
    with one new patient/study/series, new SOP Instance UIDs and consecutive positions.

    `size`: resample every slice to size² (see `resampled`); None keeps the sources' 512².
    """
    sources = ct_sources(roots)
    out_dir.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    written: list[Path] = []
    for k in range(slices):
        ds: pydicom.Dataset = pydicom.dcmread(sources[k % len(sources)])
        if size is not None:
            ds = resampled(ds, size)
        ds.PatientID, ds.PatientName = "SRBENCH", "Bench^Series"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, -1.25 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = -1.25 * k
        ds.SeriesDescription = "srnode bench series"
        path = out_dir / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def run_child(args: list[str], timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m ...args` in a fresh process; its last stdout line is a JSON object."""
    done = subprocess.run([sys.executable, *args], check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, **(env or {})})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"child {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table (numbers right-aligned)."""
    align = ["---:" if rows and _numeric(rows[0][i]) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("%x").replace(",", ""))
        return True
    except ValueError:
        return False


def write_results(path: Path, doc: dict[str, Any], table: str) -> None:
    """`doc` as JSON at `path` and the table as Markdown beside it (same stem, .md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(f"`{doc.get('command', '')}`\n\n{table}\n", encoding="utf-8")
    print(f"results written to {path} and {path.with_suffix('.md')}")
