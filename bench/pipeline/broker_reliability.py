"""Which embedded transport to use: message loss when a consumer is SIGKILLed, and throughput.

    .venv/bin/python bench/pipeline/broker_reliability.py

For kombu's filesystem transport and the SQLAlchemy transport on SQLite (what the embedded default
uses, via workers.embedded_transport): publish N messages, let a child process take one without
acknowledging it and SIGKILL itself, then count what is left; then time N publish+consume+ack.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from kombu import Connection, Exchange, Queue

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

N = 200


def transports(tmp: Path) -> dict[str, dict]:
    (tmp / "fs").mkdir()
    # control_folder too: kombu otherwise creates ./control in the working directory.
    fs = {"transport_options": {"data_folder_in": str(tmp / "fs"), "data_folder_out": str(tmp / "fs"),
                                "control_folder": str(tmp / "fs-control")}}
    return {
        "filesystem": {"url": "filesystem://", **fs},
        "sqlalchemy+sqlite (srnode embedded)": {"url": f"sqlite:///{tmp / 'broker.sqlite'}",
                                                "transport": "workers.embedded_transport:Transport"},
    }


def _conn(spec: dict) -> Connection:
    return Connection(spec["url"], transport=spec.get("transport"), transport_options=spec.get("transport_options", {}))


QUEUE = Queue("bench", Exchange("bench", type="direct"), routing_key="bench")


def _publish(spec: dict, n: int) -> None:
    with _conn(spec) as conn:
        producer = conn.Producer(serializer="json")
        for i in range(n):
            producer.publish({"i": i}, exchange=QUEUE.exchange, routing_key="bench", declare=[QUEUE])


def _take_one_and_die(spec: dict) -> None:
    with _conn(spec) as conn:
        with conn.Consumer([QUEUE], callbacks=[lambda body, msg: os.kill(os.getpid(), signal.SIGKILL)],
                           accept=["json"], prefetch_count=1):
            conn.drain_events(timeout=10)


def _drain(spec: dict) -> int:
    got = 0
    with _conn(spec) as conn:
        def on(body, msg):  # type: ignore[no-untyped-def]
            nonlocal got
            got += 1
            msg.ack()

        with conn.Consumer([QUEUE], callbacks=[on], accept=["json"], prefetch_count=1):
            while True:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=N, help="messages published per transport")
    n = parser.parse_args(argv).messages
    for name in list(transports(Path(tempfile.mkdtemp()))):
        tmp = Path(tempfile.mkdtemp())
        spec = transports(tmp)[name]
        _publish(spec, n)
        child = mp.get_context("spawn").Process(target=_take_one_and_die, args=(spec,))
        child.start()
        child.join(30)
        left = _drain(spec)
        t0 = time.perf_counter()
        _publish(spec, n)
        consumed = _drain(spec)
        rate = consumed / (time.perf_counter() - t0 - 1.0)  # minus the final 1 s drain timeout
        print(f"{name:38s} killed consumer: {n - left} of {n} lost (child exit {child.exitcode}); "
              f"{consumed} publish+consume+ack at {rate:.0f} msg/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
