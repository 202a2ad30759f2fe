"""Series assembly: a series becomes `stable` after `series.stable_after_s` without a new instance.

The state change (receiving → stable, stable_at, completeness flags) is committed first; then the
series' primary key is handed to every registered stable hook (`fn(series_pk) -> None`). Hand-off
is at-least-once: every series found `stable` is handed once per process lifetime, so after a
restart the ones not yet `routed` are handed again, and a hook that raised is retried on the next
pass. Hooks must be idempotent (routing is). The next stage sets `routed`.

Not handed over: series srnode derived itself (Series.derived_from_job set) and series with no
image instance (SR, RTSTRUCT, presentation states only): they are stored, indexed, and stay `stable`.

Completeness is a heuristic; a flagged series (Series.likely_incomplete, incomplete_reason) is still
handed over: gaps in slice positions, mixed geometry, a stack not perpendicular to its slices
(gantry tilt), fewer instances than ImagesInAcquisition.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any, cast

from sqlalchemy import exists, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.index.models import Instance, Series, SeriesState
from dicom_node.polling import PollingThread
from dicom_node.storage import resolve_in

log = logging.getLogger(__name__)

StableHook = Callable[[int], None]
_STABLE_HOOKS: list[StableHook] = []

GAP_FACTOR = 1.5  # a step this many times the median step is a missing slice
UNEVEN_TOLERANCE = 0.1  # steps differing by more than 10 % of the median: uneven spacing
TILT_DEGREES = 1.0


def register_stable_hook(fn: StableHook) -> StableHook:
    """Add a process-wide hook called with the Series primary key of each stable series."""
    if fn not in _STABLE_HOOKS:
        _STABLE_HOOKS.append(fn)
    return fn


def unregister_stable_hook(fn: StableHook) -> None:
    """Remove a hook added by register_stable_hook (tests)."""
    if fn in _STABLE_HOOKS:
        _STABLE_HOOKS.remove(fn)


def _vec(text: str, n: int) -> list[float] | None:
    try:
        values = [float(v) for v in text.split("\\")] if text else []
    except ValueError:
        return None
    return values if len(values) == n else None


def _images_in_acquisition(storage_dir: Path | None, rel_path: str) -> int | None:
    if storage_dir is None:
        return None
    try:
        from pydicom import dcmread

        ds = dcmread(resolve_in(storage_dir, rel_path), stop_before_pixels=True, specific_tags=["ImagesInAcquisition"])
        value = ds.get("ImagesInAcquisition")
        return int(value) if value not in (None, "") else None
    except Exception:  # noqa: BLE001 - a heuristic must not stop assembly
        return None


def completeness_issues(instances: list[Instance], storage_dir: Path | None = None) -> list[str]:
    """Reasons a series looks incomplete or irregular (empty list: nothing suspicious)."""
    images = [i for i in instances if i.is_image]
    if not images:
        return []
    reasons: list[str] = []
    sizes = {(i.rows, i.columns) for i in images}
    orientations = {tuple(round(v, 3) for v in (_vec(i.image_orientation, 6) or [])) for i in images}
    spacings = {i.pixel_spacing for i in images}
    if len(sizes) > 1 or len(orientations) > 1 or len(spacings) > 1:
        reasons.append(
            f"mixed geometry: {len(sizes)} matrix sizes, {len(orientations)} orientations, "
            f"{len(spacings)} pixel spacings"
        )
    single_frame = all((i.number_of_frames or 1) == 1 for i in images)
    positions = sorted(i.slice_location for i in images if i.slice_location is not None)
    if single_frame and len(positions) >= 3 and len(orientations) == 1:
        steps = [b - a for a, b in zip(positions, positions[1:])]
        dupes = sum(1 for s in steps if abs(s) < 1e-3)
        steps = [s for s in steps if abs(s) >= 1e-3]
        if dupes:
            reasons.append(f"{dupes} duplicate slice positions")
        if steps:
            med = median(steps)
            gaps = [s for s in steps if s > GAP_FACTOR * med]
            if gaps:
                reasons.append(
                    f"slice-position gaps: {len(gaps)} steps up to {max(gaps):.2f} mm (median {med:.2f} mm)"
                )
            elif max(steps) - min(steps) > UNEVEN_TOLERANCE * med:
                reasons.append(f"uneven slice spacing: {min(steps):.2f}-{max(steps):.2f} mm")
        tilt = _stack_tilt_degrees(images)
        if tilt is not None and tilt > TILT_DEGREES:
            reasons.append(f"stack not perpendicular to the slices (gantry tilt about {tilt:.1f} degrees)")
    expected = _images_in_acquisition(storage_dir, images[0].file_path)
    if expected and len(images) < expected:
        reasons.append(f"ImagesInAcquisition is {expected}, {len(images)} received")
    return reasons


def _stack_tilt_degrees(images: list[Instance]) -> float | None:
    iop = _vec(images[0].image_orientation, 6)
    located = [(i.slice_location, _vec(i.image_position, 3)) for i in images]
    pts = sorted((s, p) for s, p in located if s is not None and p is not None)
    if not iop or len(pts) < 2:
        return None
    r, c = iop[:3], iop[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    d = [b - a for a, b in zip(pts[0][1], pts[-1][1])]
    norm_d, norm_n = math.sqrt(sum(v * v for v in d)), math.sqrt(sum(v * v for v in n))
    if norm_d < 1e-6 or norm_n < 1e-6:
        return None
    cos = abs(sum(a * b for a, b in zip(d, n))) / (norm_d * norm_n)
    return math.degrees(math.acos(min(1.0, cos)))


def mark_stable(factory: sessionmaker[Session], stable_after_s: float, storage_dir: Path | None = None,
                now: datetime | None = None) -> list[int]:
    """Commit receiving → stable for every series quiet for `stable_after_s`; return their keys."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=stable_after_s)
    done: list[int] = []
    with factory() as session:
        candidates = session.scalars(
            select(Series.id).where(Series.state == SeriesState.receiving, Series.last_received_at <= cutoff)
        ).all()
    for pk in candidates:
        with factory() as session:
            instances = list(session.scalars(select(Instance).where(Instance.series_pk == pk)))
            reasons = completeness_issues(instances, storage_dir)
            # Conditional update: an instance that arrived meanwhile keeps the series receiving.
            result = session.execute(
                update(Series)
                .where(Series.id == pk, Series.state == SeriesState.receiving, Series.last_received_at <= cutoff)
                .values(state=SeriesState.stable, stable_at=now, likely_incomplete=bool(reasons),
                        incomplete_reason="; ".join(reasons))
            )
            session.commit()
            if cast("CursorResult[Any]", result).rowcount:
                done.append(pk)
                log.info("series #%d stable (%d instances)%s", pk, len(instances),
                         f", likely incomplete: {'; '.join(reasons)}" if reasons else "")
    return done


def stable_unrouted(factory: sessionmaker[Session]) -> list[int]:
    """Keys of stable series that should be handed over (not derived, at least one image)."""
    with factory() as session:
        has_image = exists().where(Instance.series_pk == Series.id, Instance.is_image.is_(True))
        return list(session.scalars(
            select(Series.id)
            .where(Series.state == SeriesState.stable, Series.derived_from_job.is_(None), has_image)
            .order_by(Series.stable_at, Series.id)
        ))


class Assembler:
    """Background loop: mark quiet series stable, hand stable ones to the hooks (at-least-once)."""

    def __init__(self, factory: sessionmaker[Session], stable_after_s: float, check_interval_s: float = 1.0,
                 hooks: Iterable[StableHook] = (), storage_dir: Path | None = None) -> None:
        self.factory = factory
        self.stable_after_s = stable_after_s
        self.hooks = list(hooks)
        self.storage_dir = storage_dir
        self._handed: set[int] = set()
        self._poller = PollingThread("srnode-assembly", self.run_once, check_interval_s, "series assembly pass", log)

    def run_once(self) -> list[int]:
        """One pass; returns the series keys handed over in it."""
        mark_stable(self.factory, self.stable_after_s, self.storage_dir)
        hooks = [*self.hooks, *_STABLE_HOOKS]
        if not hooks:
            return []  # nobody to hand to yet: a series counts as handed only once a hook has run
        current = stable_unrouted(self.factory)
        self._handed &= set(current)  # a series that left `stable` may come back later
        handed: list[int] = []
        for pk in current:
            if pk in self._handed:
                continue
            ok = True
            for hook in hooks:
                try:
                    hook(pk)
                except Exception:  # noqa: BLE001 - retried next pass
                    ok = False
                    log.exception("stable hook %r failed for series #%d; will retry", hook, pk)
            if ok:
                self._handed.add(pk)
                handed.append(pk)
        return handed

    def start(self) -> None:
        """Start the background thread."""
        self._poller.start()

    def stop(self) -> None:
        """Stop the background thread (waits for the current pass)."""
        self._poller.stop()
