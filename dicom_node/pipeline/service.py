"""The pipeline as a service started with the node: routing hook, dispatcher, sender, embedded worker."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from config.loader import deployment_warnings
from config.schema import SRNodeConfig
from dicom_node.broker import routed_models
from dicom_node.clock import utcnow
from dicom_node.index.models import unserved_jobs
from dicom_node.outbox.sender import OutboxSender
from dicom_node.pipeline.dispatch import Dispatcher
from dicom_node.pipeline.embedded_worker import EmbeddedWorker
from dicom_node.pipeline.jobs import route_series
from dicom_node.pipeline.on_demand import OnDemandJobs
from dicom_node.qr.on_demand import OnDemandSlot

if TYPE_CHECKING:
    from dicom_node.server import NodeServer

log = logging.getLogger(__name__)

# How often the node looks for queued jobs that no healthy worker consumes (a cheap query).
POOL_CHECK_S = 10.0
POOL_REPEAT_S = 300.0


class PipelineService:
    """Routing hook + dispatcher + outbox sender (+ the embedded worker when there is no broker)."""

    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], storage_dir: Path,
                 on_demand_slot: OnDemandSlot | None = None) -> None:
        self.cfg = cfg
        self.factory = factory
        self.dispatcher = Dispatcher(cfg, factory)
        self.sender = OutboxSender(cfg, factory, storage_dir)
        # With broker_url too: the node's own worker consumes the broker beside any remote ones
        # (worker.embedded: false leaves the jobs to them), so a broker never waits for nobody.
        self.worker = EmbeddedWorker(cfg, on_restart=self._worker_died) if cfg.worker.embedded else None
        # Without a broker server no worker can outlive the node or its embedded worker: their jobs
        # are queued again at once. With one, other workers' running jobs must be left alone: a
        # dead embedded worker's job comes back after worker.heartbeat_timeout_s like any other.
        self.owns_all_jobs = cfg.broker_url is None
        self._unserved = ""  # the current "queued jobs find no worker" problem
        self._unserved_logged = 0.0
        self._next_pool_check = 0.0
        # The models the embedded worker consumes; it follows admin changes (see _sync_worker).
        self._worker_models: tuple[str, ...] = ()
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None
        self.on_demand: OnDemandJobs | None = None  # installed in `on_demand_slot` by make_service
        self.on_demand_slot = on_demand_slot  # the node's (NodeContext.on_demand): Q/R and DICOMweb ask it

    def on_stable(self, series_pk: int) -> None:
        """The assembly hook: route the series, then wake the dispatcher."""
        if route_series(self.cfg, self.factory, series_pk):
            self.dispatcher.wake()

    def _worker_died(self) -> None:
        if not self.owns_all_jobs:
            log.warning("the embedded worker stopped; its job (if any) is queued again after "
                        "worker.heartbeat_timeout_s (other workers' jobs run on)")
            return
        n = self.dispatcher.reset_all_active()
        if n:
            log.warning("%d job(s) of the dead embedded worker queued again", n)

    def check_workers(self) -> str:
        """Log queued jobs that no live, healthy worker consumes (none started, all gone or
        refusing): a WARNING when it starts and every POOL_REPEAT_S while it lasts, INFO when it
        ends. Returns the problem ("" = none)."""
        with self.factory() as session:
            problem = unserved_jobs(session, utcnow())
        now = time.monotonic()
        if problem and (not self._unserved or now - self._unserved_logged >= POOL_REPEAT_S):
            log.warning("%s", problem)
            self._unserved_logged = now
        elif self._unserved and not problem:
            log.info("queued jobs have a healthy worker again")
        self._unserved = problem
        return problem

    def _sync_worker(self) -> None:
        """Keep the embedded worker consuming the queues of every routed model.

        Queues are per model, fixed when a worker starts; when an admin routes to a model the
        worker does not consume, it is restarted (its unfinished jobs are queued again). A node
        without routing rules has nothing for a worker to do: no child process then.
        """
        assert self.worker is not None
        models = tuple(routed_models(self.cfg))
        if models == self._worker_models:
            if models:
                self.worker.check()
            return
        if self._worker_models:
            log.info("routed models changed to %s: restarting the embedded worker", ", ".join(models) or "none")
            self.worker.stop()
            self._worker_died()
        self._worker_models = models
        if models:
            self.worker.start()

    def _watch_worker(self) -> None:
        while not self._stop.wait(1.0):
            try:
                if self.worker is not None:
                    self._sync_worker()
                if time.monotonic() >= self._next_pool_check:
                    self._next_pool_check = time.monotonic() + POOL_CHECK_S
                    self.check_workers()
            except Exception as exc:  # noqa: BLE001 - the watch must outlive a bad moment (DB away)
                log.warning("worker check failed: %s: %s", type(exc).__name__, exc)

    def start(self) -> None:
        """Start sender, dispatcher, (embedded mode) the worker child and the worker watch."""
        for key, why in deployment_warnings(self.cfg):
            log.warning("configuration: %s: %s", key, why)
        if self.worker is not None:
            if self.owns_all_jobs:
                # No other worker can have survived the node: whatever was active starts over.
                n = self.dispatcher.reset_all_active()
                if n:
                    log.info("%d unfinished job(s) from before the restart queued again", n)
            self._worker_models = ()
            self._sync_worker()
        self._stop.clear()
        self._watch = threading.Thread(target=self._watch_worker, name="srnode-worker-watch", daemon=True)
        self._watch.start()
        self.sender.start()
        self.dispatcher.start()

    def stop(self) -> None:
        """Stop in reverse order; unfinished work stays in the job and outbox tables."""
        self._stop.set()
        if self._watch:
            self._watch.join(timeout=5)
        self.dispatcher.stop()
        self.sender.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.on_demand is not None and self.on_demand_slot is not None:
            self.on_demand_slot.remove(self.on_demand)


def make_service(node: NodeServer) -> PipelineService:
    """Build the pipeline service for a node and register its stable-series hook."""
    service = PipelineService(node.cfg, node.session_factory, node.storage_dir, node.context.on_demand)
    node.assembler.hooks.append(service.on_stable)
    service.on_demand = OnDemandJobs(node.cfg, node.session_factory, node.storage_dir, wake=service.dispatcher.wake)
    node.context.on_demand.install(service.on_demand)
    return service
