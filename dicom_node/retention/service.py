"""The retention service started with the node: finishes interrupted recycles, then recycles
every retention.check_interval_s."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from config.schema import SRNodeConfig
from dicom_node.polling import PollingThread
from dicom_node.retention.recycler import finish_interrupted, run_pass


class _Node(Protocol):
    """What the service needs of the NodeServer (not imported: the quota check in the handlers
    imports this package, and the server imports the handlers)."""

    cfg: SRNodeConfig
    session_factory: sessionmaker[Session]
    storage_dir: Path

log = logging.getLogger("dicom_node.retention")


class RetentionService:
    def __init__(self, cfg: SRNodeConfig, factory: sessionmaker[Session], storage_dir: Path) -> None:
        self.cfg, self.factory, self.storage_dir = cfg, factory, storage_dir
        self._poller = PollingThread("srnode-retention", self.run_once, cfg.retention.check_interval_s,
                                     "retention pass", log)
        self._recovered = False

    def start(self) -> None:
        self._poller.start()

    def stop(self) -> None:
        self._poller.stop()

    def wake(self) -> None:
        self._poller.wake()

    def run_once(self) -> int:
        """One pass; the first one finishes what a crash interrupted (retried until it succeeds)."""
        rc = self.cfg.retention
        if not self._recovered:
            finish_interrupted(self.factory, self.storage_dir, rc.keep_job_history)
            self._recovered = True
        if rc.quota_mb is None and not rc.max_age_h and not rc.modalities:
            return 0  # retention off: keep everything
        return run_pass(self.factory, self.storage_dir, rc)


def make_service(node: _Node) -> RetentionService:
    """Always started: even with retention off now, a recycle interrupted earlier is finished."""
    return RetentionService(node.cfg, node.session_factory, node.storage_dir)
