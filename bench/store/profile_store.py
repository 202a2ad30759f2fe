"""Where a C-STORE's time goes inside a real `srnode serve` process (perf_counter phases).

Starts `srnode serve` in this process with timing wrappers around the store path's phases
(handler, encoded_dataset, free-disk check, parse, file write, each fsync, index commit), sends
the instances with storescu (1 and N associations), and prints per-instance milliseconds.
The gap between one handler's return and the next handler's start on the same association is
the network + pynetdicom share (reading PDUs, the reactors' polling, sending the response).

    .venv/bin/python bench/store/profile_store.py --instances 300 --parallel 4
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_store  # type: ignore[import-not-found]  # noqa: E402  (same instances, config and sender as the benchmark)

TIMES: dict[str, list[float]] = defaultdict(list)
_lock = threading.Lock()
_last_end: dict[int, float] = {}


def timed(name: str, fn):  # type: ignore[no-untyped-def]
    @functools.wraps(fn)
    def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            with _lock:
                TIMES[name].append(time.perf_counter() - t0)
    return wrapper


def instrument() -> None:
    """Wrap the store path's phases (this process only)."""
    import pynetdicom.events as events

    import dicom_node.group_commit as gc
    import dicom_node.handlers.store as store
    import dicom_node.ingest.files as ingest_files
    import dicom_node.ingest.store as ingest_store
    import dicom_node.storage as storage

    # Each name is wrapped where dicom_node.ingest's modules look it up.
    os.fsync = timed("os.fsync (all)", os.fsync)
    storage.fsync_dir = ingest_files.fsync_dir = timed("fsync dir", storage.fsync_dir)
    ingest_store.parse_header = timed("parse_header", ingest_store.parse_header)
    ingest_files.atomic_write = timed("write file (tmp, rename, fsync)", ingest_files.atomic_write)
    ingest_store._commit_with_retry = timed("index: own transaction", ingest_store._commit_with_retry)
    ingest_store._index_known_series = timed("index: statements (in batch)", ingest_store._index_known_series)
    # Methods wrapped in place on purpose: the profile times the code the node really runs.
    gc.GroupCommitter.run = timed("index: group commit wait", gc.GroupCommitter.run)  # type: ignore[method-assign]
    gc.GroupCommitter._run_batch = timed(  # type: ignore[method-assign]
        "index: batch incl. commit", gc.GroupCommitter._run_batch)
    store.free_disk_mb = timed("free disk check", store.free_disk_mb)
    events.Event.encoded_dataset = timed(  # type: ignore[method-assign]
        "encoded_dataset", events.Event.encoded_dataset)
    inner = timed("handler total", store.handle_store)

    def handler(event, ctx):  # type: ignore[no-untyped-def]
        key = id(event.assoc)
        now = time.perf_counter()
        with _lock:
            if key in _last_end:
                TIMES["between handlers (network+pynetdicom)"].append(now - _last_end[key])
        try:
            return inner(event, ctx)
        finally:
            with _lock:
                _last_end[key] = time.perf_counter()
    store.handle_store = handler


def report(title: str) -> None:
    print(f"\n{title}: per-instance ms (median / mean / p90, n)")
    with _lock:
        items = sorted(TIMES.items(), key=lambda kv: -statistics.mean(kv[1]))
        for name, xs in items:
            xs = sorted(xs)
            print(f"  {name:<44}{statistics.median(xs) * 1e3:7.2f}{statistics.mean(xs) * 1e3:7.2f}"
                  f"{xs[int(len(xs) * 0.9)] * 1e3:7.2f}  n={len(xs)}")
        TIMES.clear()
        _last_end.clear()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--parallel", type=int, default=4)
    args = ap.parse_args()
    instrument()
    tmp = Path(tempfile.mkdtemp(prefix="srnode-profile-store-"))
    try:
        run(tmp, args.instances, args.parallel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def run(tmp: Path, instances: int, parallel_max: int) -> None:
    """Send the instances over 1 and `parallel_max` associations to a fresh node each time."""
    from config.loader import load_config
    from dicom_node.wiring import build_node

    files = bench_store.make_instances(tmp / "input", instances)
    for parallel in (1, parallel_max):
        work = tmp / f"node-{parallel}"
        work.mkdir()
        port = bench_store.free_port()
        node = build_node(load_config(bench_store._srnode_config(work, port)))
        node.start()
        try:
            bench_store.wait_for(lambda port=port: bench_store.echo_ok(port), "srnode")
            TIMES.clear()
            elapsed = bench_store.send(port, files, parallel)
        finally:
            node.stop()
        report(f"{parallel} association(s): {len(files) / elapsed:.0f} instances/s")


if __name__ == "__main__":
    sys.exit(main())
