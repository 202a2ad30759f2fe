"""Comparison viewer data: slice pairs of a job (original ↔ derived), PNG renders, LR-consistency PSNR."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from dicom_node.admin.auth import Principal, require_read
from dicom_node.admin.context import ctx_of
from dicom_node.admin.params import Index, RowId
from dicom_node.admin.render import default_window, load_values, window_png
from dicom_node.derive.uids import derived_sop_uid
from dicom_node.index.models import Instance, Job, Series
from dicom_node.outbox.hold import quality_doc
from dicom_node.storage import resolve_in

router = APIRouter(tags=["viewer"])


def _sort_key(inst: Instance) -> tuple[float, int, str]:
    return (
        inst.slice_location if inst.slice_location is not None else float("inf"),
        inst.instance_number if inst.instance_number is not None else 0,
        inst.sop_instance_uid,
    )


def slice_pairs(session: Any, job: Job) -> list[dict[str, Any]]:
    """Source slices of the job in geometric order, each with the derived object (and frame) made from it."""
    sources = sorted(
        session.execute(select(Instance).where(Instance.series_pk == job.series_pk, Instance.is_image)).scalars(),
        key=_sort_key,
    )
    derived = session.execute(
        select(Instance).join(Series).where(
            (Series.derived_from_job == job.id)
            | ((Series.series_uid == job.derived_series_uid) & (Series.series_uid != ""))
        )
    ).scalars().all()
    by_uid = {d.sop_instance_uid: d for d in derived}
    # Enhanced encoding: one multi-frame object, frames in the same geometric order as the source.
    multiframe = derived[0] if len(derived) == 1 and (derived[0].number_of_frames or 1) > 1 else None
    pairs = []
    for k, src in enumerate(sources):
        uid = derived_sop_uid(src.sop_instance_uid, job.model, job.checkpoint_sha256, job.scale)
        if uid in by_uid:
            pairs.append({"k": k, "source": src, "derived": by_uid[uid], "frame": 0})
        elif multiframe is not None and k < (multiframe.number_of_frames or 0):
            pairs.append({"k": k, "source": src, "derived": multiframe, "frame": k})
    return pairs


def _job_pairs(request: Request, job_id: int) -> tuple[Job, list[dict[str, Any]], Path]:
    ctx = ctx_of(request)
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        pairs = slice_pairs(session, job)
    return job, pairs, Path(ctx.live.base.node.storage_dir)


def _pair(request: Request, job_id: int, k: int) -> tuple[Job, dict[str, Any], Path]:
    job, pairs, storage = _job_pairs(request, job_id)
    found = next((p for p in pairs if p["k"] == k), None)
    if found is None:
        raise HTTPException(404, f"job {job_id} has no derived slice {k}")
    return job, found, storage


def _slice(storage: Path, inst: Instance, frame: int) -> tuple[np.ndarray, str, tuple[float, float] | None]:
    values, modality, window = load_values(resolve_in(storage, inst.file_path))
    return values[min(frame, values.shape[0] - 1)], modality, window


@router.get("/jobs/{job_id}/slices")
def job_slices(job_id: RowId, request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """The slice pairs of a finished job, a default display window, and the noise guard's
    figures (series and per slice: noise and edge ratio against lanczos; None where not measured)."""
    job, pairs, storage = _job_pairs(request, job_id)
    measured = quality_doc(job.quality).get("slices", {})
    window = None
    if pairs:
        values, modality, stored = _slice(storage, pairs[len(pairs) // 2]["source"], 0)
        window = dict(zip(("center", "width"), default_window(values, modality, stored)))
    return {
        "job": job.id,
        "model": job.model,
        "scale": job.scale,
        "derived_series_uid": job.derived_series_uid,
        "window": window,
        "noise_ratio": job.noise_ratio,
        "edge_ratio": job.edge_ratio,
        "held": job.held,
        "slices": [
            {"k": p["k"], "source_sop": p["source"].sop_instance_uid, "derived_sop": p["derived"].sop_instance_uid,
             "frame": p["frame"], "source_size": [p["source"].rows, p["source"].columns],
             "derived_size": [p["derived"].rows, p["derived"].columns],
             "noise_ratio": (measured.get(p["source"].sop_instance_uid) or [None, None])[0],
             "edge_ratio": (measured.get(p["source"].sop_instance_uid) or [None, None])[1]}
            for p in pairs
        ],
    }


# The LR operator (antialiased bicubic) spreads a padded pixel's error this far (LR pixels) at x2-x4.
PAD_MARGIN_PX = 2


def padding_limit(path: Path) -> float | None:
    """The source's padding as a modality value (PixelPaddingValue, or the top of the range up to
    PixelPaddingRangeLimit, through the rescale); None without padding."""
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True)
    pad = ds.get("PixelPaddingValue")
    if pad is None:
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    top = max(int(pad), int(limit)) if limit is not None else int(pad)
    return top * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)


def psnr_mask(src: np.ndarray, pad_top: float | None) -> np.ndarray:
    """Pixels that count in the LR-consistency PSNR: inside the reconstruction circle (the disc
    inscribed in the slice) and not padding (values at or below the padding value, which the model's
    intensity path clips, so they would count as error), with a margin the LR operator spreads into."""
    import torch
    import torch.nn.functional as F

    h, w = src.shape
    yy, xx = np.ogrid[:h, :w]
    radius = min(h, w) / 2
    outside = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 > radius**2
    if pad_top is not None:
        outside |= src <= pad_top
    grown = F.max_pool2d(torch.from_numpy(outside.astype(np.float32))[None, None], 2 * PAD_MARGIN_PX + 1,
                         stride=1, padding=PAD_MARGIN_PX)
    return ~(grown[0, 0].numpy() > 0)


@router.get("/jobs/{job_id}/slices/{k}/psnr")
def slice_psnr(job_id: RowId, k: Index, request: Request, _: Principal = Depends(require_read)) -> dict[str, Any]:
    """LR-consistency PSNR: the derived slice degraded back by the job's scale vs the original, over
    the pixels of psnr_mask (padding and the corners outside the reconstruction circle left out)."""
    import torch

    from sr_engine.intensity import mapping_for
    from sr_engine.metrics import degrade

    job, pair, storage = _pair(request, job_id, k)
    src, modality, _w = _slice(storage, pair["source"], 0)
    der, _m, _w2 = _slice(storage, pair["derived"], pair["frame"])
    if der.shape != (src.shape[0] * job.scale, src.shape[1] * job.scale):
        raise HTTPException(409, f"derived slice {der.shape} is not x{job.scale} of the original {src.shape}")
    mapping = mapping_for(modality, src)
    back = degrade(torch.from_numpy(np.array(der, dtype=np.float64))[None, None], job.scale)[0, 0].numpy()
    mask = psnr_mask(src, padding_limit(resolve_in(storage, pair["source"].file_path)))
    data_range = mapping.high - mapping.low
    mse = float(np.mean((back[mask] - src[mask].astype(np.float64)) ** 2)) if mask.any() else float("nan")
    db = 10 * np.log10(data_range**2 / mse) if mse > 0 else float("inf")
    return {"k": k, "psnr_db": db if np.isfinite(db) else None, "data_range": data_range,
            "pixels_used": round(float(mask.mean()), 4)}


@router.get("/jobs/{job_id}/slices/{k}/{which}.png", response_class=Response)
def slice_png(
    job_id: RowId,
    k: Index,
    which: str,
    request: Request,
    center: float | None = Query(None, description="window centre in modality units (HU for CT)"),
    width: float | None = Query(None, gt=0, description="window width in modality units"),
    _: Principal = Depends(require_read),
) -> Response:
    """The original (`source`) or derived slice as PNG, rendered from float values through the window."""
    if which not in ("source", "derived"):
        raise HTTPException(404, "which must be source or derived")
    _job, pair, storage = _pair(request, job_id, k)
    values, modality, stored = _slice(storage, pair[which], pair["frame"] if which == "derived" else 0)
    if center is None or width is None:
        center, width = default_window(values, modality, stored)
    return Response(window_png(values, center, width), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=60"})
