"""Prometheus metric objects for the whole node; other modules import these and update them.

One registry (`REGISTRY`) so /metrics shows exactly srnode's series, not the process defaults of
whatever else is imported. Values that are cheap to read at scrape time (queue depth from the
index, disk free, GPU memory) are collected then by `SnapshotCollector`, so they are never stale.
Labels never carry patient data: only modality, AE titles of configured peers, queue and stage names.
"""
from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES_RECEIVED = Counter(
    "srnode_instances_received",
    "Instances received by C-STORE and acknowledged with success",
    ["modality"],
    registry=REGISTRY,
)
ASSOCIATIONS = Counter(
    "srnode_associations",
    "DICOM associations requested of the node, by outcome (accepted, rejected)",
    ["outcome"],
    registry=REGISTRY,
)
ASSOCIATIONS_ACTIVE = Gauge(
    "srnode_associations_active", "DICOM associations open right now", registry=REGISTRY
)
JOB_STAGE_SECONDS = Histogram(
    "srnode_job_stage_seconds",
    "Seconds a job spent per pipeline stage (load, infer, write, send...)",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "srnode_jobs_finished", "Jobs that reached a final state", ["state"], registry=REGISTRY
)
SEND_RETRIES = Counter(
    "srnode_send_retries",
    "Outbox deliveries that failed and were rescheduled, by destination peer key",
    ["destination"],
    registry=REGISTRY,
)


def observe_stage_timings(timings: dict[str, float]) -> None:
    """Record a job's per-stage seconds (the same dict the worker stores in Job.timings)."""
    for stage, seconds in timings.items():
        if isinstance(seconds, (int, float)) and seconds >= 0:
            JOB_STAGE_SECONDS.labels(stage=stage).observe(float(seconds))


QueueDepthSource = Callable[[], dict[str, int]]


class SnapshotCollector(Collector):
    """Values read at scrape time: queue depth per queue, disk free, GPU memory."""

    def __init__(self) -> None:
        self.queue_depth: QueueDepthSource | None = None
        self.disk_paths: dict[str, Path] = {}

    def collect(self) -> Iterable[Metric]:
        if self.queue_depth is not None:
            depth = GaugeMetricFamily(
                "srnode_queue_depth", "Items waiting per queue (jobs by priority, outbox by destination)",
                labels=["queue"],
            )
            try:
                for queue, n in sorted(self.queue_depth().items()):
                    depth.add_metric([queue], n)
            except Exception:  # noqa: BLE001 - a scrape must not fail because the DB blinked
                pass
            yield depth
        if self.disk_paths:
            free = GaugeMetricFamily("srnode_disk_free_bytes", "Free bytes on the volume", labels=["volume"])
            for name, path in sorted(self.disk_paths.items()):
                try:
                    free.add_metric([name], shutil.disk_usage(path).free)
                except OSError:
                    continue
            yield free
        yield from _gpu_memory()


def _gpu_memory() -> Iterable[Metric]:
    # Only when torch is already loaded in this process: a scrape must not pull in CUDA.
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    fam = GaugeMetricFamily(
        "srnode_gpu_memory_bytes", "CUDA memory held by this process", labels=["device", "kind"]
    )
    for i in range(torch.cuda.device_count()):
        fam.add_metric([f"cuda:{i}", "allocated"], torch.cuda.memory_allocated(i))
        fam.add_metric([f"cuda:{i}", "reserved"], torch.cuda.memory_reserved(i))
    yield fam


SNAPSHOT = SnapshotCollector()
REGISTRY.register(SNAPSHOT)


def render() -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(REGISTRY)
