"""Noise guard: every derived CT slice measured against lanczos of its source slice.

Why: applied to native slices, a network can sharpen the noise rather than the anatomy (issue 20:
worm-like texture in the mediastinal window, stored by a PACS as a derived CT). After inference
each slice gets the two ratios of sr_engine.native_metrics: flat-tissue noise and strong-edge
gradient, SR over lanczos of the same slice. The job records the per-slice figures (job.quality)
and the series medians (job.noise_ratio, job.edge_ratio); the console shows them beside the
LR-consistency PSNR.

A routing rule's `max_noise_ratio` acts on the slices over it: `noise_action: mark` appends a note
to the derived slice's DerivationDescription; `hold` creates the job's outbox rows `held` and, when
the job ends, releases them for sending if no slice is over, else leaves them held and sets
job.held, for an admin to release (POST /api/jobs/{id}/release, dicom_node/outbox/hold.py). Only CT is measured (the
masks are in HU). Cost: one lanczos and the masks per slice, in the writer thread, which overlaps
the next chunk's inference (docs/pipeline.md has the measured figure).
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import time
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from config.schema import RoutingRule, SRNodeConfig, rule_name
from dicom_node.index.db import session_scope
from dicom_node.index.models import Job
from dicom_node.outbox.hold import hold_rows, quality_doc, release_rows
from sr_engine.intensity import IntensityMapping, modality_values
from sr_engine.interpolate import lanczos_upscale
from sr_engine.native_metrics import native_ratios

log = logging.getLogger(__name__)

# A slice with fewer native pixels of flat soft tissue than this (lung apex, a head's vertex)
# gives a noise ratio too uncertain to mark or hold on; it is recorded, not judged.
MIN_FLAT_PIXELS = 100


def _rule(cfg: SRNodeConfig, name: str) -> RoutingRule | None:
    return next((r for i, r in enumerate(cfg.routing) if rule_name(i, r) == name), None)


def _finite(x: float) -> float | None:
    return round(float(x), 4) if math.isfinite(x) else None


class NoiseGuard:
    """The guard of one job run: measures slices, marks them, holds and releases the outbox rows."""

    def __init__(self, job_id: int, scale: int, mapping: IntensityMapping, enabled: bool,
                 limit: float | None, action: str, doc: dict[str, Any]) -> None:
        self.job_id, self.scale, self.enabled = job_id, scale, enabled
        self.clip = (mapping.low, mapping.high)  # lanczos sees the values the model saw
        self.limit, self.action = limit, action
        # Per source SOP Instance UID: [noise, edge, flat pixels]; kept from earlier attempts.
        self.slices: dict[str, list[Any]] = dict(doc.get("slices", {}))
        self.released = bool(doc.get("released_by"))
        self.extra: dict[str, Any] = {k: doc[k] for k in ("released_by", "released_at") if k in doc}
        self.seconds = 0.0

    @classmethod
    def for_job(cls, cfg: SRNodeConfig, factory: sessionmaker[Session], job_id: int, modality: str,
                scale: int, mapping: IntensityMapping) -> NoiseGuard:
        """The guard for `job_id` under its routing rule (found by job.rule_name)."""
        with factory() as session:
            job = session.get(Job, job_id)
            assert job is not None
            rule = _rule(cfg, job.rule_name)
            doc = quality_doc(job.quality)
        limit = rule.max_noise_ratio if rule is not None else None
        action = rule.noise_action if rule is not None else "mark"
        return cls(job_id, scale, mapping, modality.upper() == "CT", limit, action, doc)

    @property
    def holds(self) -> bool:
        """The job's outbox rows are created held (until finish decides)."""
        return self.enabled and self.limit is not None and self.action == "hold" and not self.released

    def _over(self, noise: float | None, flat: int) -> bool:
        return self.limit is not None and noise is not None and flat >= MIN_FLAT_PIXELS and noise > self.limit

    def check(self, source: Dataset, up: np.ndarray, derived: Dataset) -> None:
        """Measure one derived slice; under `mark`, note a slice over the limit on `derived`.

        Never fails the slice: a slice that cannot be measured is left unmeasured (logged).
        """
        if not self.enabled:
            return
        t0 = time.perf_counter()
        try:
            native = modality_values(source)  # pydicom keeps the decoded pixels: no second decode
            lz = lanczos_upscale(native, self.scale, clip=self.clip)
            r = native_ratios(native, up, lz, self.scale)
        except Exception as exc:  # noqa: BLE001 - the guard measures; it must not lose a slice
            log.warning("job #%d: noise guard could not measure a slice: %s", self.job_id, type(exc).__name__)
            return
        finally:
            self.seconds += time.perf_counter() - t0
        noise = _finite(r.noise_ratio)
        self.slices[str(source.SOPInstanceUID)] = [noise, _finite(r.edge_ratio), r.flat_pixels]
        if self.action == "mark" and self._over(noise, r.flat_pixels):
            note = f" Noise x{noise:.2f} over lanczos (limit {self.limit:.2f})."
            derived.DerivationDescription = (str(derived.get("DerivationDescription", "")) + note)[:1024]

    def _doc(self) -> dict[str, Any]:
        judged = [v[0] for v in self.slices.values() if v[0] is not None and v[2] >= MIN_FLAT_PIXELS]
        edges = [v[1] for v in self.slices.values() if v[1] is not None]
        return {
            "limit": self.limit, "action": self.action, "min_flat_pixels": MIN_FLAT_PIXELS,
            "measured": len(self.slices), "judged": len(judged),
            "over": sum(1 for v in self.slices.values() if self._over(v[0], v[2])),
            "noise_ratio_median": statistics.median(judged) if judged else None,
            "noise_ratio_mean": round(statistics.fmean(judged), 4) if judged else None,
            "noise_ratio_max": max(judged) if judged else None,
            "edge_ratio_median": statistics.median(edges) if edges else None,
            "edge_ratio_mean": round(statistics.fmean(edges), 4) if edges else None,
            "seconds": round(self.seconds, 3), **self.extra, "slices": self.slices,
        }

    def on_commit(self, session: Session, job: Job) -> None:
        """In the transaction that stores a chunk: the figures so far, and its new rows held."""
        if not self.enabled:
            return
        job.quality = json.dumps(self._doc())
        if self.holds:
            hold_rows(session, self.job_id)

    def finish(self, factory: sessionmaker[Session]) -> None:
        """Series figures on the job; held rows released for sending unless a slice is over."""
        if not self.enabled:
            return
        doc = self._doc()
        with session_scope(factory) as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            job.quality = json.dumps(doc)
            job.noise_ratio, job.edge_ratio = doc["noise_ratio_median"], doc["edge_ratio_median"]
            hold = self.holds and doc["over"] > 0
            job.held = hold
            if self.holds and not hold:
                release_rows(session, self.job_id)
        log.info("job #%d: noise x%s, edges x%s over lanczos (medians of %d slices); %d over %s%s; guard %.2f s",
                 self.job_id, _fmt(doc["noise_ratio_median"]), _fmt(doc["edge_ratio_median"]), doc["measured"],
                 doc["over"], _fmt(self.limit), ": held for review" if hold else "", self.seconds)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
