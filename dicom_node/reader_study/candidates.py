"""Compute every candidate of a case once: input (and truth) from the stored slice, each model's
output cached as a float32 .npy of modality values (HU for CT), PSNR/SSIM where a truth exists."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dicom_node.reader_study.definition import FACTOR, SCALES
from sr_engine.metrics import HU_RANGE, degrade, psnr, ssim
from sr_engine.registry import LoadedModel


def centre_crop(values: np.ndarray, side: int | None) -> tuple[np.ndarray, list[int]]:
    """The centred square of `side` pixels (whole slice if None or larger), and its [y, x, h, w]."""
    h, w = values.shape
    if side is None:
        # Whole slice, trimmed to a multiple of the factor so the x4 round trip is exact.
        ch, cw = h - h % FACTOR, w - w % FACTOR
    else:
        ch, cw = min(side, h - h % FACTOR), min(side, w - w % FACTOR)
    y, x = (h - ch) // 2, (w - cw) // 2
    return values[y:y + ch, x:x + cw], [y, x, ch, cw]


def case_input(region: np.ndarray, scale_key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(model input, ground truth or None) for a region at a scale setting."""
    has_truth = SCALES[scale_key][2]
    region = np.ascontiguousarray(region, dtype=np.float32)
    if not has_truth:
        return region, None
    lr = degrade(torch.from_numpy(region)[None, None].double(), FACTOR)[0, 0].float().numpy()
    return lr, region


def quality(candidate: np.ndarray, truth: np.ndarray, modality: str) -> tuple[float, float]:
    """PSNR (dB) and SSIM of a candidate against the truth (CT: HU clipped to [-1024, 3071])."""
    a, b = torch.from_numpy(candidate)[None, None].double(), torch.from_numpy(truth)[None, None].double()
    if modality.upper() == "CT":
        lo, hi = HU_RANGE
    else:
        lo, hi = float(truth.min()), float(max(truth.max(), truth.min() + 1e-6))
    a, b = a.clamp(lo, hi), b.clamp(lo, hi)
    return float(psnr(a, b, hi - lo)[0]), float(ssim(a, b, hi - lo)[0])


@dataclass
class CandidateResult:
    model: str
    checkpoint_sha256: str
    values: np.ndarray
    psnr_db: float | None
    ssim: float | None


def run_models(lr: np.ndarray, truth: np.ndarray | None, modality: str,
               models: dict[str, LoadedModel]) -> list[CandidateResult]:
    """Each model's x4 output of `lr` (float modality values), scored against `truth` when there is one."""
    out = []
    for name, model in models.items():
        mapping = model.mapping(modality, lr)
        up = model.upscale(lr[None], mapping)[0].astype(np.float32)
        if up.shape != (lr.shape[0] * FACTOR, lr.shape[1] * FACTOR):
            raise ValueError(f"model {name!r} returned {up.shape} for input {lr.shape}: not x{FACTOR}")
        p, s = quality(up, truth, modality) if truth is not None else (None, None)
        out.append(CandidateResult(name, model.checkpoint_sha256, up, p, s))
    return out


def save_array(storage_dir: Path, rel: str, values: np.ndarray) -> str:
    """Write a float32 array under storage_dir (atomically) and return its relative path."""
    path = Path(storage_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, values.astype(np.float32))
    tmp.replace(path)
    return rel
