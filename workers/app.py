"""The workers' Celery app: the node's (dicom_node.broker: broker, queues, task names) with the
embedded broker consumed in priority order (workers.embedded_transport).

Tasks take job ids only; everything else is in the index. The node sends them by name and never
imports this package.
"""
from __future__ import annotations

import warnings

from celery import Celery
from celery.exceptions import CPendingDeprecationWarning

from config.schema import SRNodeConfig
from dicom_node import broker

# On every broker connection loss Celery warns that a later version will cancel running late-ack
# tasks. srnode keeps them running on purpose (worker_cancel_long_running_tasks_on_connection_loss
# in dicom_node.broker): the job row, not the message, is the truth, and the redelivered copy is
# dropped by the job claim, so a reconnect must not throw away the slices in work. Hence no warning either.
warnings.filterwarnings("ignore", message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
                        category=CPendingDeprecationWarning)

# Loaded by kombu, by name, in worker processes only: stat queues before routine ones.
EMBEDDED_TRANSPORT = "workers.embedded_transport:Transport"


def make_celery(cfg: SRNodeConfig, models: list[str] | None = None) -> Celery:
    """The Celery app a worker runs: dicom_node.broker's, with the workers' embedded transport."""
    return broker.make_celery(cfg, models, sqlite_transport=EMBEDDED_TRANSPORT)
