"""Prometheus metrics of the node: the metric objects other modules update, and scrape-time values.

One registry (`REGISTRY`) so /metrics shows exactly srnode's series. Two kinds of values:

- counters updated in the process where the event happens (association outcomes) — other
  modules import the objects below and call `.inc()`;
- values read at scrape time by `SnapshotCollector` from their source of truth: instances
  received, queue depth, job stage durations, jobs per state and send retries from the index (so
  they include every listener process and every worker, on any host, and survive restarts),
  active associations from the listener, disk free from the file system, GPU memory from torch in
  this process.

Labels never carry patient data: only modality, peer keys, queue, stage and state names.
"""
from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

ASSOCIATIONS = Counter(
    "srnode_associations",
    "Association requests by the node's own checks' outcome "
    "(accepted, rejected_unknown_ae, rejected_called_ae, rejected_disk, rejected_quota)",
    ["outcome"],
    registry=REGISTRY,
)

# Upper bounds (seconds) of the stage-duration histogram.
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass
class IndexSnapshot:
    """What the index says at scrape time (filled by whoever owns the database session)."""

    instances_received: dict[str, int] = field(default_factory=dict)  # modality -> original instances stored
    queue_depth: dict[str, int] = field(default_factory=dict)  # queue -> waiting items
    jobs_by_state: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, list[float]] = field(default_factory=dict)  # stage -> durations of finished jobs
    send_retries: dict[str, int] = field(default_factory=dict)  # destination -> failed attempts


def _histogram(name: str, doc: str, label: str, samples: dict[str, list[float]]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=[label])
    for key, values in sorted(samples.items()):
        buckets = [(str(b), sum(1 for v in values if v <= b)) for b in STAGE_BUCKETS]
        buckets.append(("+Inf", len(values)))
        fam.add_metric([key], buckets, sum_value=float(sum(values)))
    return fam


class SnapshotCollector(Collector):
    """Values read at scrape time from the index, the listener, the disk and torch."""

    def __init__(self) -> None:
        self.index: Callable[[], IndexSnapshot] | None = None
        self.active_associations: Callable[[], int] | None = None
        self.disk_paths: dict[str, Path] = {}

    def collect(self) -> Iterable[Metric]:
        if self.index is not None:
            try:
                snap = self.index()
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the DB blinked
                log.warning("metrics: index not readable at scrape: %s", exc)
                snap = None
            if snap is not None:
                yield from _index_metrics(snap)
        if self.active_associations is not None:
            yield GaugeMetricFamily("srnode_associations_active", "DICOM associations open right now",
                                    value=self.active_associations())
        if self.disk_paths:
            free = GaugeMetricFamily("srnode_disk_free_bytes", "Free bytes on the volume", labels=["volume"])
            for name, path in sorted(self.disk_paths.items()):
                try:
                    free.add_metric([name], shutil.disk_usage(path).free)
                except OSError:
                    continue
            yield free
        yield from _gpu_memory()


def _index_metrics(snap: IndexSnapshot) -> Iterable[Metric]:
    received = CounterMetricFamily("srnode_instances_received", "Original instances stored and indexed "
                                   "(acknowledged C-STOREs; duplicates counted once), by modality", labels=["modality"])
    for modality, n in sorted(snap.instances_received.items()):
        received.add_metric([modality or "unknown"], n)
    yield received
    depth = GaugeMetricFamily("srnode_queue_depth", "Items waiting per queue (jobs by priority, outbox by destination)",
                              labels=["queue"])
    for queue, n in sorted(snap.queue_depth.items()):
        depth.add_metric([queue], n)
    yield depth
    jobs = GaugeMetricFamily("srnode_jobs", "Jobs in the index per state", labels=["state"])
    for state, n in sorted(snap.jobs_by_state.items()):
        jobs.add_metric([state], n)
    yield jobs
    yield _histogram("srnode_job_stage_seconds", "Seconds finished jobs spent per pipeline stage", "stage",
                     snap.stage_seconds)
    retries = CounterMetricFamily("srnode_send_retries", "Failed C-STORE delivery attempts (each is retried "
                                  "until send.max_attempts), by destination peer key", labels=["destination"])
    for dest, n in sorted(snap.send_retries.items()):
        retries.add_metric([dest], n)
    yield retries


def _gpu_memory() -> Iterable[Metric]:
    # Only when torch is already loaded in this process: a scrape must not pull in CUDA.
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    fam = GaugeMetricFamily("srnode_gpu_memory_bytes", "CUDA memory of this process", labels=["device", "kind"])
    for i in range(torch.cuda.device_count()):
        fam.add_metric([f"cuda:{i}", "allocated"], torch.cuda.memory_allocated(i))
        fam.add_metric([f"cuda:{i}", "reserved"], torch.cuda.memory_reserved(i))
        free, total = torch.cuda.mem_get_info(i)
        fam.add_metric([f"cuda:{i}", "device_used"], total - free)
        fam.add_metric([f"cuda:{i}", "device_total"], total)
    yield fam


SNAPSHOT = SnapshotCollector()
REGISTRY.register(SNAPSHOT)


@dataclass
class StorageSnapshot:
    """Retention figures from the index (dicom_node/retention/usage.py)."""

    bytes_by_kind: dict[str, int] = field(default_factory=dict)  # "original" | "derived" -> bytes
    recycled_bytes: int = 0  # since the index was created


class StorageCollector(Collector):
    """srnode_storage_bytes{kind} and srnode_recycled_bytes_total, read at scrape time."""

    def __init__(self) -> None:
        self.source: Callable[[], StorageSnapshot] | None = None

    def collect(self) -> Iterable[Metric]:
        if self.source is None:
            return
        try:
            snap = self.source()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the DB blinked
            log.warning("metrics: storage usage not readable at scrape: %s", exc)
            return
        used = GaugeMetricFamily("srnode_storage_bytes", "Bytes of indexed instance files per kind (original, derived)",
                                 labels=["kind"])
        for kind, n in sorted(snap.bytes_by_kind.items()):
            used.add_metric([kind], n)
        yield used
        yield CounterMetricFamily("srnode_recycled_bytes", "Bytes of instance files removed by retention recycling",
                                  value=snap.recycled_bytes)


STORAGE = StorageCollector()
REGISTRY.register(STORAGE)


def render() -> bytes:
    """The registry in Prometheus text format."""
    return generate_latest(REGISTRY)


def serve_http(port: int, host: str = "0.0.0.0") -> None:
    """Expose this process's metrics (e.g. a GPU worker's memory) on http://host:port/metrics."""
    start_http_server(port, addr=host, registry=REGISTRY)
    log.info("metrics on http://%s:%d/metrics", host, port)


# Housekeeping (dicom_node/housekeeping.py): what its passes removed, and how many passes ran.
HOUSEKEEPING_REMOVED = Counter(
    "srnode_housekeeping_removed",
    "Rows and files removed by housekeeping, by kind (outbox, jobs, audit, workers, temp_files)",
    ["kind"],
    registry=REGISTRY,
)
HOUSEKEEPING_PASSES = Counter("srnode_housekeeping_passes", "Housekeeping passes completed", registry=REGISTRY)
