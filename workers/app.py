"""The Celery app: broker from config (Redis, or the embedded SQLite transport), queues, policies.

Queues are per model and priority, `sr.<model>.stat` and `sr.<model>.routine`; a worker consumes
the stat queues before the routine ones. Tasks take job ids only; everything else is in the index.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from celery import Celery
from celery.exceptions import CPendingDeprecationWarning
from kombu import Exchange, Queue

from config.schema import SRNodeConfig

# On every broker connection loss Celery warns that a later version will cancel running late-ack
# tasks. srnode keeps them running on purpose (worker_cancel_long_running_tasks_on_connection_loss
# below): the job row, not the message, is the truth, and the redelivered copy is dropped by the
# job claim, so a reconnect must not throw away the slices in work. Hence no warning either.
warnings.filterwarnings("ignore", message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
                        category=CPendingDeprecationWarning)

TASK_PROCESS_JOB = "srnode.process_job"
PRIORITIES = ("stat", "routine")


def embedded_broker_path(cfg: SRNodeConfig) -> Path:
    """Where the embedded broker's SQLite file lives (beside the storage directory)."""
    return Path(cfg.node.storage_dir).resolve().parent / "srnode-broker.sqlite"


def queue_name(model: str, priority: str) -> str:
    """The queue for jobs of `model` at `priority`."""
    return f"sr.{model}.{priority}"


def queues_for(models: list[str]) -> list[str]:
    """All queues of `models`, stat ones first."""
    return [queue_name(m, p) for p in PRIORITIES for m in models]


def rule_models(cfg: SRNodeConfig) -> list[str]:
    """Models that routing rules send work to, in rule order (each once)."""
    return list(dict.fromkeys(r.model for r in cfg.routing if r.model and not r.skip))


def routed_models(cfg: SRNodeConfig) -> list[str]:
    """Models that routing rules can send work to (plus configured ones), in config order."""
    return list(dict.fromkeys(rule_models(cfg) + list(cfg.models)))


def make_celery(cfg: SRNodeConfig, models: list[str] | None = None) -> Celery:
    """A Celery app for this configuration (the same in the node, which sends, and in workers)."""
    app = Celery("srnode", set_as_current=False)
    names = models if models is not None else routed_models(cfg)
    if cfg.broker_url:
        broker = cfg.broker_url
        transport_options: dict = {
            # Strict queue order: stat before routine. Redelivery of a dead worker's message after
            # the visibility timeout (acks_late); the node's heartbeat check usually comes first.
            "queue_order_strategy": "priority",
            "visibility_timeout": 3600,
        }
        transport = None
    else:
        path = embedded_broker_path(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        # No "sqla+" prefix: it would select kombu's own transport over broker_transport.
        broker = f"sqlite:///{path}"
        transport_options = {}  # kombu's SQLAlchemy transport hands these to create_engine
        transport = "workers.embedded_transport:Transport"
    app.conf.update(
        broker_url=broker,
        broker_transport=transport,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # At-least-once: ack after the task ran; a worker that dies leaves the message to redeliver.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # Progress bars and prints go straight to stderr, not through Celery's logger as warnings.
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in queues_for(names)],
        task_default_queue=queue_name(names[0] if names else "default", "routine"),
        broker_heartbeat=0,
        worker_cancel_long_running_tasks_on_connection_loss=False,  # see the warning filter above
    )
    return app
