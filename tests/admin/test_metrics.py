"""/metrics: scrape-time values from the index (queue depth, jobs, stage durations, send retries)."""
from __future__ import annotations

import json

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.index.models import Instance, Job, JobState, Outbox, OutboxState, Patient, Series, Study


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_from_index(client: TestClient, sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        study = Study(patient=Patient(patient_id="P1"), study_uid="1.2.3")
        series = Series(study=study, series_uid="1.2.3.4", modality="CT")
        inst = Instance(series=series, sop_instance_uid="1.2.3.4.5", file_path="x")
        session.add_all([study, series, inst])
        session.flush()
        session.add_all([
            Job(series_pk=series.id, model="a", state=JobState.done, timings=json.dumps({"infer": 0.3, "write": 2.0})),
            Job(series_pk=series.id, model="b", state=JobState.done, timings=json.dumps({"infer": 40.0})),
            Job(series_pk=series.id, model="c", state=JobState.queued, priority="stat"),
            Job(series_pk=series.id, model="d", state=JobState.failed),
        ])
        session.add_all([
            Outbox(instance_pk=inst.id, destination="pacs", state=OutboxState.delivered, attempts=3),
            Outbox(instance_pk=inst.id, destination="ris", state=OutboxState.pending, attempts=2),
        ])
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = _samples(r.text)
    assert m[("srnode_queue_depth", (("queue", "jobs.stat"),))] == 1
    assert m[("srnode_queue_depth", (("queue", "outbox.ris"),))] == 1
    assert m[("srnode_jobs", (("state", "done"),))] == 2 and m[("srnode_jobs", (("state", "failed"),))] == 1
    assert m[("srnode_job_stage_seconds_count", (("stage", "infer"),))] == 2
    assert m[("srnode_job_stage_seconds_sum", (("stage", "infer"),))] == 40.3
    assert m[("srnode_job_stage_seconds_bucket", (("le", "0.5"), ("stage", "infer")))] == 1
    assert m[("srnode_job_stage_seconds_bucket", (("le", "+Inf"), ("stage", "write")))] == 1
    # pacs: 3 attempts, the last delivered -> 2 retries; ris: 2 failed attempts so far.
    assert m[("srnode_send_retries_total", (("destination", "pacs"),))] == 2
    assert m[("srnode_send_retries_total", (("destination", "ris"),))] == 2
    assert ("srnode_disk_free_bytes", (("volume", "storage"),)) in m
    assert m[("srnode_instances_received_total", (("modality", "CT"),))] == 1


def test_worker_exporter_serves_the_registry() -> None:
    import httpx

    from dicom_node.metrics import serve_http
    from tests.conftest import free_port

    port = free_port()
    serve_http(port, host="127.0.0.1")  # what `srnode worker --metrics-port` starts
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert "# TYPE srnode_associations_total counter" in text
