"""The node ↔ worker contract on the broker: task names, queues, and the Celery app both sides build.

The node sends tasks by name (`send_task`) and never imports the worker package; workers
register their tasks under these names (workers.tasks) and consume these queues.

Queues are per model and priority, `sr.<model>.stat` and `sr.<model>.routine`; a worker consumes
the stat queues before the routine ones. Tasks take job ids only; everything else is in the index.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from config.schema import SRNodeConfig

TASK_PROCESS_JOB = "srnode.process_job"
PRIORITIES = ("stat", "routine")

# The embedded broker's kombu transport when none is given: kombu's own SQLAlchemy transport. Its
# sending is what the workers' ordered transport (workers.embedded_transport) inherits unchanged;
# only consuming differs, so a sender needs nothing of the worker package.
SQLITE_TRANSPORT = "sqlalchemy"


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


def make_celery(cfg: SRNodeConfig, models: list[str] | None = None,
                sqlite_transport: str = SQLITE_TRANSPORT) -> Celery:
    """A Celery app for this configuration (the same in the node, which sends, and in workers).

    `sqlite_transport`: the kombu transport of the embedded broker (no broker_url); workers pass
    theirs, which consumes stat queues first (workers.app).
    """
    app = Celery("srnode", set_as_current=False)
    names = models if models is not None else routed_models(cfg)
    if cfg.broker_url:
        broker = cfg.broker_url
        transport_options: dict[str, Any] = {
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
        transport = sqlite_transport
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
        # Running late-ack tasks keep running when the broker connection drops: the job row, not
        # the message, is the truth (see the warning filter in workers.app).
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app
