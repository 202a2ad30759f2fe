"""`srnode worker`: a Celery worker process for the configured broker (Redis or embedded)."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading

from config.loader import load_config

log = logging.getLogger(__name__)


def exit_when_parent_closes(fd: int) -> threading.Thread:
    """Exit this process at once when the pipe `fd` reaches EOF, i.e. when the node that holds its
    write end has died (any way, kill -9 included). The node's job recovery requeues the job."""
    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        log.warning("the node that started this worker is gone; exiting")
        logging.shutdown()
        os._exit(3)

    thread = threading.Thread(target=watch, name="srnode-parent-watch", daemon=True)
    thread.start()
    return thread


def stop_jobs_on_shutdown() -> None:
    """On SIGTERM (and SIGINT/SIGQUIT) let running jobs stop after their current chunk and release
    themselves, then Celery's warm shutdown proceeds as soon as the task returns.

    Hooked on Celery's `worker_shutting_down` signal, which its own SIGTERM handler sends from the
    main process: a plain signal.signal() here would be replaced when Celery installs its handlers.
    With the solo pool the job runs in the main thread, so the handler runs between two bytecodes
    of the job loop; it only sets a flag that the loop checks between chunks.
    """
    from celery.signals import worker_shutting_down

    from workers.process import request_stop

    def on_shutdown(**_: object) -> None:
        request_stop()  # no logging in a signal handler (its lock may be held); the job logs its release

    worker_shutting_down.connect(on_shutdown, weak=False)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker in the foreground: one model cache, one device, prefetch 1."""
    if args.parent_pipe is not None:
        exit_when_parent_closes(args.parent_pipe)
    # Imported here, not at module level: registering the CLI must not import torch/Celery.
    from dicom_node.broker import queues_for, routed_models, rule_models
    from dicom_node.index.db import make_engine, session_factory
    from dicom_node.index.live_config import LiveConfig
    from dicom_node.index.migrate import upgrade
    from sr_engine.device import pick_device
    from workers.app import make_celery
    from workers.device import limit_cpu_threads
    from workers.health import WorkerHealth, WorkerIdentity, broker_problem
    from workers.model_cache import preload, set_concurrency
    from workers.tasks import WorkerRuntime, register_tasks

    cfg = load_config(args.config)
    device = pick_device(args.device or cfg.worker.device)
    limit_cpu_threads(device, args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else routed_models(cfg)
    if not models:
        print("no models to serve: add routing rules or pass --models", file=sys.stderr)
        return 1
    engine = make_engine(cfg.node.database_url)
    upgrade(cfg.node.database_url, engine)
    factory = session_factory(engine)
    app = make_celery(cfg, models)
    # Model entries added or changed by an admin (stored in the index) apply to the next job.
    live_cfg = LiveConfig(cfg, factory).view()
    name = f"srnode-{device.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"
    health = WorkerHealth(live_cfg, factory, WorkerIdentity(name, socket.gethostname(), os.getpid(), device, models),
                          broker=(lambda: broker_problem(app)) if cfg.broker_url else None)
    register_tasks(app, WorkerRuntime(cfg=live_cfg, factory=factory, device=device, health=health))
    queues = queues_for(models)
    # Models the routing rules use now are loaded while the worker connects (configured but
    # unrouted models load on their first job).
    routed_now = set(rule_models(cfg))
    concurrency = args.concurrency or cfg.worker.concurrency
    set_concurrency(concurrency)  # before any model loads: concurrent jobs share worker.max_memory_mb
    preload(live_cfg, [m for m in models if m in routed_now], device)
    # A worker that fails a check (storage not the node's, database, broker, model files) consumes
    # no queue until it passes: the jobs stay with the workers that can run them.
    health.start()
    health.wait_until_ok()
    log.info("worker %s on %s consuming %s", name, device, ", ".join(queues))
    if args.metrics_port:
        from dicom_node.metrics import serve_http  # this worker's own /metrics (GPU memory)

        serve_http(args.metrics_port)
    argv = [
        *(["--quiet"] if args.quiet else []), "worker", "--loglevel", "WARNING" if args.quiet else "INFO",
        "-n", name, "-Q", ",".join(queues),
        # solo: one process owns the model cache and the device; threads share them.
        "--pool", "solo" if concurrency == 1 else "threads", "--concurrency", str(concurrency),
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--prefetch-multiplier", "1",
    ]
    stop_jobs_on_shutdown()
    try:
        app.worker_main(argv)
    finally:
        health.stop()
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `srnode worker`."""
    p = subparsers.add_parser("worker", help="run an SR worker (Celery) for the configured broker")
    p.add_argument("--config", required=True, help="YAML configuration file")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: worker.device in the config)")
    p.add_argument("--models", default=None, help="comma-separated models to serve (default: all routed ones)")
    p.add_argument("--concurrency", type=int, default=None, help="tasks at once in this process")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: cores − 1)")
    p.add_argument("--quiet", action="store_true", help="no banner, warnings only (the node's embedded worker)")
    p.add_argument("--parent-pipe", type=int, default=None, help=argparse.SUPPRESS)  # the node's embedded worker
    p.add_argument("--metrics-port", type=int, default=None, help="serve this worker's Prometheus /metrics here")
    p.set_defaults(func=cmd_worker)


def main(argv: list[str] | None = None) -> int:
    """`python -m workers.cli --config FILE` (how the node starts its embedded worker)."""
    parser = argparse.ArgumentParser(prog="srnode worker")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["worker", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from config.command_runner import run_command

    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
