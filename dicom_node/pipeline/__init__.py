"""The stable-series hand-off: route → job rows → dispatch to workers; plus the node's services.

    stable series ──route_series──▶ Job rows (+ passthrough outbox rows) ──Dispatcher──▶ Celery task(job id)
    worker (embedded child process, or `srnode worker` anywhere) ──▶ derived instances + outbox rows
    OutboxSender ──C-STORE──▶ destinations

Every step is a committed row before the next starts. The Dispatcher is the only place that sends
tasks: it sends queued jobs that have no task yet, and puts back to queued any running job whose
worker stopped beating (killed, host lost), so nothing depends on the broker redelivering.
"""
from __future__ import annotations

from dicom_node.pipeline.dispatch import Dispatcher
from dicom_node.pipeline.embedded_worker import EmbeddedWorker
from dicom_node.pipeline.jobs import checkpoint_digest, ensure_job, route_series, series_facts
from dicom_node.pipeline.on_demand import OnDemandJobs
from dicom_node.pipeline.service import PipelineService, make_service

__all__ = [
    "Dispatcher", "EmbeddedWorker", "OnDemandJobs", "PipelineService", "checkpoint_digest", "ensure_job",
    "make_service", "route_series", "series_facts",
]
