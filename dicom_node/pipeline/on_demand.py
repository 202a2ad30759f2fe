"""Query/retrieve's OnDemandProvider for `on_demand` routing rules."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config.schema import SRNodeConfig
from dicom_node.derive.writer import Derivation, derived_series_description, derived_series_number
from dicom_node.index.models import FINISHED_STATES, Instance, Job, JobState, Series
from dicom_node.pipeline.jobs import checkpoint_digest, ensure_job, series_facts
from dicom_node.qr.on_demand import OnDemandError, ProducedInstance, VirtualSeries
from dicom_node.routing import rule_name, select_rule
from sr_engine import registry
from sr_engine.archs import CheckpointError


class OnDemandJobs:
    """Query/retrieve's OnDemandProvider: derived series of `on_demand` rules, made when retrieved.

    The derived UIDs are the deterministic ones, so C-FIND can list a series before it exists and
    C-MOVE of it starts the job (or joins the running one) through `ensure_job`.
    """

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], storage_dir: Path,
                 wake: Callable[[], None] | None = None, timeout_s: float = 3600.0, poll_s: float = 0.2) -> None:
        self.cfg, self.factory, self.storage_dir = cfg, factory, Path(storage_dir)
        self.wake, self.timeout_s, self.poll_s = wake, timeout_s, poll_s

    def _virtual(self, session: Session, series: Series) -> tuple[VirtualSeries, int] | None:
        chosen = select_rule(self.cfg.routing, series_facts(session, series))
        if chosen is None:
            return None
        index, rule = chosen
        if not rule.on_demand or rule.skip or not rule.model:
            return None
        try:
            sha, model_scale = checkpoint_digest(self.cfg, rule.model)
        except (registry.UnknownModelError, CheckpointError, OSError):
            return None  # ensure_job would fail it; nothing to offer
        derivation = Derivation.from_config(self.cfg, rule.model, sha, rule.scale or model_scale)
        n = len(list(session.scalars(
            select(Instance.id).where(Instance.series_pk == series.id, Instance.is_image.is_(True)))))
        return VirtualSeries(
            series_uid=derivation.series_uid(series.series_uid), source_series_uid=series.series_uid,
            modality=series.modality,
            series_description=derived_series_description(series.series_description, derivation),
            series_number=derived_series_number(series.series_number, derivation), expected_instances=n,
            rule_name=rule_name(index, rule),
        ), index

    def virtual_series(self, session: Session, source_series_uids: Sequence[str]) -> list[VirtualSeries]:
        """The derived series on-demand rules would make from these source series."""
        rows = session.scalars(select(Series).where(Series.series_uid.in_(list(source_series_uids)),
                                                    Series.derived_from_job.is_(None)))
        return [v for v, _ in filter(None, (self._virtual(session, s) for s in rows))]

    def _find(self, session: Session, series_uid: str) -> tuple[VirtualSeries, int, int] | None:
        job = session.scalar(select(Job).where(Job.derived_series_uid == series_uid).limit(1))
        candidates = [session.get(Series, job.series_pk)] if job else session.scalars(
            select(Series).where(Series.derived_from_job.is_(None)))
        for series in candidates:
            if series is None:
                continue
            found = self._virtual(session, series)
            if found and found[0].series_uid == series_uid:
                return found[0], found[1], series.id
        return None

    def lookup(self, session: Session, series_uid: str) -> VirtualSeries | None:
        """The virtual series with this UID, or None if no on-demand rule makes it."""
        found = self._find(session, series_uid)
        return found[0] if found else None

    def materialise(self, series_uid: str) -> Iterator[ProducedInstance]:
        """Ensure the job, then yield derived instances as the worker stores them."""
        with self.factory() as session:
            found = self._find(session, series_uid)
        if found is None:
            raise OnDemandError(f"series {series_uid} is not made by any on-demand rule")
        _, index, series_pk = found
        job_id = ensure_job(self.cfg, self.factory, series_pk, index)
        if self.wake:
            self.wake()
        sent: set[str] = set()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            with self.factory() as session:
                job = session.get(Job, job_id)
                assert job is not None
                state, error = job.state, job.error
                rows = session.execute(
                    select(Instance.sop_instance_uid, Instance.file_path).join(Series, Series.id == Instance.series_pk)
                    .where(Series.series_uid == series_uid).order_by(Instance.id)).all()
            for sop, rel in rows:
                if sop not in sent:
                    sent.add(sop)
                    yield ProducedInstance(path=self.storage_dir / rel, sop_instance_uid=sop)
            if state in FINISHED_STATES:  # done_with_errors: the slices that could be derived are out
                return
            if state in (JobState.failed, JobState.cancelled):
                raise OnDemandError(f"job #{job_id} {state.value}: {error or 'no reason recorded'}")
            time.sleep(self.poll_s)
        raise OnDemandError(f"job #{job_id} did not finish within {self.timeout_s:.0f} s")
