"""Eligibility, quota and age recycling on real CT files, on SQLite and PostgreSQL."""
from __future__ import annotations

import json

from sqlalchemy import func, select

from config.schema import RetentionConfig
from dicom_node.index.models import (
    Audit,
    Instance,
    Job,
    JobState,
    OutboxState,
    Patient,
    ReaderStudy,
    ReaderStudyCase,
    Series,
    Study,
    utcnow,
)
from dicom_node.retention import MIB
from dicom_node.retention.eligibility import eligible_series
from dicom_node.retention.recycler import run_pass
from dicom_node.retention.usage import quota_refusal, storage_status, usage_by_kind
from tests.retention.conftest import Archive

NOW_RULES = RetentionConfig(quota_mb=0.001, keep_after_delivery_h=0)


def eligible(archive: Archive, rc: RetentionConfig = NOW_RULES) -> set[int]:
    with archive.factory() as s:
        return {c.pk for c in eligible_series(s, rc, utcnow())}


def test_derived_goes_first_then_its_source(archive: Archive) -> None:
    src, _, derived = archive.pipeline()
    assert eligible(archive) == {derived}, "a source must wait until its derived series is gone"
    freed = run_pass(archive.factory, archive.storage, NOW_RULES)
    assert freed > 0 and eligible(archive) == set()
    with archive.factory() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 0
        # Job history kept (default): the source row stays as the jobs' parent, marked recycled.
        kept = s.get(Series, src)
        assert kept is not None and kept.recycled_at is not None and s.get(Series, derived) is None
        audits = [json.loads(a.detail) for a in s.scalars(select(Audit).where(Audit.action == "series.recycle"))]
    assert [a["kind"] for a in audits] == ["derived", "original"] and sum(a["bytes"] for a in audits) == freed
    assert archive.problems() == [] and not list(archive.storage.rglob("*.dcm"))


def test_unfinished_work_keeps_the_series(archive: Archive) -> None:
    queued_src = archive.series()
    archive.job(queued_src, JobState.queued)  # its job still has to run
    running_src, running_job, _ = archive.pipeline()
    running_derived = archive.series(derived_from_job=archive.job(running_src, JobState.running))
    pending_src, pending_job, pending = archive.pipeline()
    # not delivered yet (2nd destination)
    archive.outbox(pending, OutboxState.pending, job=pending_job, destination="OTHER")
    failed_src, failed_job, failed = archive.pipeline()
    archive.outbox(failed, OutboxState.failed, job=failed_job, destination="OTHER")
    receiving = archive.series()
    with archive.factory.begin() as s:
        s.get(Series, receiving).state = "receiving"  # type: ignore[union-attr, assignment]
    found = eligible(archive)
    assert queued_src not in found and running_derived not in found and pending not in found
    assert failed not in found and receiving not in found
    # A finally failed delivery counts as finished only when the site says so.
    assert failed in eligible(archive, RetentionConfig(keep_after_delivery_h=0, recycle_failed_deliveries=True))


def test_protected_and_reader_study_keep_the_series(archive: Archive) -> None:
    _, _, protected = archive.pipeline()
    _, _, in_study = archive.pipeline()
    with archive.factory.begin() as s:
        s.get(Series, protected).protected = True  # type: ignore[union-attr]
        study = ReaderStudy(name="r", definition_json="{}", secret="x", state="open")
        s.add(study)
        s.flush()
        inst = s.scalar(select(Instance.id).where(Instance.series_pk == in_study))
        s.add(ReaderStudyCase(study_id=study.id, k=0, scale_key="128to512", instance_pk=inst))
    assert eligible(archive) == set()
    run_pass(archive.factory, archive.storage, NOW_RULES)
    assert archive.problems() == []
    with archive.factory() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 8  # nothing went (sources wait for derived)
        # The protected series' own files (fresh UIDs differ in length, so two series differ by bytes).
        kept = s.scalar(select(func.sum(Instance.file_size)).where(Instance.series_pk == protected))
        assert storage_status(s, NOW_RULES)["protected"] == {"series": 1, "bytes": kept,
                                                             "by_kind": {"original": 0, "derived": kept}}


def test_keep_after_delivery_h(archive: Archive) -> None:
    archive.pipeline()
    assert eligible(archive, RetentionConfig(quota_mb=1, keep_after_delivery_h=1)) == set()


def test_quota_recycles_oldest_until_below(archive: Archive) -> None:
    pipelines = [archive.pipeline() for _ in range(3)]
    with archive.factory() as s:
        used = sum(usage_by_kind(s).values())
    per_pipeline = used / 3
    # A quarter pipeline too much: the oldest derived series (half a pipeline) goes, nothing else.
    # (Exactly one derived series over was a knife edge: fresh UIDs vary the sizes by a few bytes.)
    rc = RetentionConfig(quota_mb=(used - per_pipeline / 4) / MIB, keep_after_delivery_h=0)
    run_pass(archive.factory, archive.storage, rc)
    with archive.factory() as s:
        assert s.get(Series, pipelines[0][2]) is None
        assert all(s.get(Series, p[2]) is not None for p in pipelines[1:])
        assert sum(usage_by_kind(s).values()) <= rc.quota_mb * MIB  # type: ignore[operator]
    assert archive.problems() == []


def test_refusal_only_when_nothing_can_go(archive: Archive) -> None:
    src = archive.series()
    archive.job(src, JobState.queued)
    rc = RetentionConfig(quota_mb=0.001, keep_after_delivery_h=0)
    with archive.factory() as s:
        assert "no series is eligible" in quota_refusal(s, rc)
        assert quota_refusal(s, RetentionConfig(quota_mb=100)) == ""  # below the quota: never
    archive.pipeline()  # something eligible: recycling can free space, so accept
    with archive.factory() as s:
        assert quota_refusal(s, rc) == ""


def test_age_rule_per_kind_and_modality(archive: Archive) -> None:
    src, _, derived = archive.pipeline()
    with archive.factory.begin() as s:
        modality = s.get(Series, src).modality  # type: ignore[union-attr]
    # The modality's rule overrides the kind's: derived CT kept although derived ages out.
    keep_ct = RetentionConfig(keep_after_delivery_h=0, max_age_h={"derived": 1e-9},
                              modalities={modality: {"max_age_h": 1e6}})
    run_pass(archive.factory, archive.storage, keep_ct)
    with archive.factory() as s:
        assert s.get(Series, derived) is not None
    drop_derived = RetentionConfig(keep_after_delivery_h=0, max_age_h={"derived": 1e-9})
    run_pass(archive.factory, archive.storage, drop_derived)
    with archive.factory() as s:
        assert s.get(Series, derived) is None and s.get(Series, src) is not None  # no rule for originals


def test_no_job_history_drops_study_and_patient(archive: Archive) -> None:
    archive.pipeline()
    run_pass(archive.factory, archive.storage, RetentionConfig(quota_mb=0.001, keep_after_delivery_h=0,
                                                               keep_job_history=False))
    with archive.factory() as s:
        for table in (Series, Study, Patient, Job, Instance):
            assert s.scalar(select(func.count()).select_from(table)) == 0, table.__name__


def test_a_recycled_series_sent_again_is_live_again(archive: Archive) -> None:
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from dicom_node.index.models import SeriesState
    from dicom_node.ingest import store_datasets

    src, _, _ = archive.pipeline()
    run_pass(archive.factory, archive.storage, NOW_RULES)
    with archive.factory() as s:
        kept = s.get(Series, src)
        assert kept.recycled_at is not None  # history row: hidden from the console's series list
        study_uid, series_uid = kept.study.study_uid, kept.series_uid
    ds = dcmread(archive.slices[0])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    store_datasets(archive.factory, archive.storage, [ds], "PACS")  # the PACS sends it again
    with archive.factory() as s:
        again = s.get(Series, src)
        assert again.recycled_at is None and again.state == SeriesState.receiving
