"""Outbox throughput: the node's sender vs DCMTK storescu → storescp, same files, same run.

K derived-size CT instances (a real 512² slice of the shared chest CT repeated to 2048² 16-bit,
the size of a x4 derived slice, ~8 MiB each, fresh UIDs) are stored and indexed in a temporary
node (SQLite index, the node's own store_datasets) and queued in its outbox to one DCMTK storescp
(`--ignore`, so the receiver is not what is measured; `--fork` when several associations run at
once). Timed, interleaved run by run:
  node N   the node's OutboxSender with `send.associations_per_destination: N`, from start until
           every row is delivered (rows reset to pending between runs);
  storescu N  N parallel `storescu` processes, the files split between them, until all exit.
TCP_NODELAY=1 for the DCMTK tools (the node sets it on its own associations). Prints a table,
writes JSON.

    .venv/bin/python bench/outbox/bench_outbox.py --count 200 --runs 5 --associations 1,2,4 --out bench/outbox/results
    .venv/bin/python bench/outbox/bench_outbox.py --quick    # smoke run (tests)
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from config.loader import parse_config  # noqa: E402
from config.schema import SendConfig  # noqa: E402
from dicom_node.clock import utcnow  # noqa: E402
from dicom_node.index.db import make_engine, session_factory, session_scope  # noqa: E402
from dicom_node.index.migrate import upgrade  # noqa: E402
from dicom_node.index.models import Outbox, OutboxState  # noqa: E402
from dicom_node.ingest import store_datasets  # noqa: E402
from dicom_node.outbox import sender as sender_module  # noqa: E402
from dicom_node.outbox.queue import enqueue  # noqa: E402
from dicom_node.outbox.sender import OutboxSender  # noqa: E402

SHARED = Path(os.environ.get("SRNODE_SHARED_DIR", REPO.parent / "shared")).resolve()
SOURCE_DIR = SHARED / "data" / "ct" / "cptac-lscc_C3N-00247_chest"
ENV = {**os.environ, "TCP_NODELAY": "1"}
DEST = "BENCH"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def derived_sized(source: Path, size: int, series_uid: str, study_uid: str, number: int) -> Dataset:
    """A real slice repeated to size x size (same bytes per pixel): the shape of an upscaled slice."""
    ds = dcmread(source)
    factor = size // int(ds.Rows)
    pixels = np.kron(ds.pixel_array, np.ones((factor, factor), dtype=ds.pixel_array.dtype))
    ds.PixelData = pixels.tobytes()
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [float(v) / factor for v in ds.PixelSpacing]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.InstanceNumber = number
    return ds


def make_node(root: Path, count: int, size: int) -> tuple[sessionmaker[Session], Path, list[Path]]:
    """A temporary index + storage holding `count` derived-size instances, all queued to DEST."""
    url = f"sqlite:///{root / 'index.db'}"
    engine = make_engine(url)
    upgrade(url, engine)
    factory = session_factory(engine)
    storage = root / "storage"
    sources = sorted(SOURCE_DIR.glob("*.dcm"))
    study, series = generate_uid(), generate_uid()
    files: list[Path] = []
    for start in range(0, count, 10):  # 10 per transaction: ~80 MiB of pixels in memory at once
        batch = [derived_sized(sources[i % len(sources)], size, series, study, i + 1)
                 for i in range(start, min(count, start + 10))]
        results, _ = store_datasets(factory, storage, batch, "BENCH",
                                    also=lambda s, r: enqueue(s, [x.instance_pk for x in r], [DEST]))
        files += [storage / r.rel_path for r in results]
    return factory, storage, files


def reset_outbox(factory: sessionmaker[Session]) -> None:
    with session_scope(factory) as s:
        s.execute(update(Outbox).values(state=OutboxState.pending, attempts=0, next_attempt_at=utcnow(),
                                        delivered_at=None, last_error=""))


def pending(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        n = s.scalar(select(func.count()).select_from(Outbox).where(Outbox.state != OutboxState.delivered))
        return int(cast(int, n))  # COUNT(*) always returns a row


@contextmanager
def storescp(port: int, fork: bool) -> Iterator[None]:
    args = ["storescp", "--aetitle", DEST, "--ignore", *(["--fork"] if fork else []), str(port)]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["echoscu", "-aec", DEST, "127.0.0.1", str(port)], env=ENV,
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("storescp did not start")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def time_node(factory: sessionmaker[Session], storage: Path, port: int, associations: int, count: int) -> float:
    """Seconds from the sender's start until every outbox row is delivered."""
    reset_outbox(factory)
    cfg: dict[str, Any] = {"peers": {DEST: {"ae_title": DEST, "host": "127.0.0.1", "port": port}}}
    if "associations_per_destination" in SendConfig.model_fields:  # absent in code before the setting
        cfg["send"] = {"associations_per_destination": associations}
    elif associations > 1:
        raise SystemExit("this code has no send.associations_per_destination: use --associations 1")
    sender = OutboxSender(parse_config(cfg, environ={}), factory, storage)
    start = time.perf_counter()
    sender.start()
    try:
        deadline = start + 60 + count  # far beyond 1 instance/s
        while pending(factory):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"node: {pending(factory)} of {count} rows still not delivered")
            time.sleep(0.02)
        return time.perf_counter() - start
    finally:
        sender.stop()


def time_storescu(files: list[Path], port: int, associations: int) -> float:
    """Seconds for `associations` parallel storescu processes to send the files (split between them)."""
    parts = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aec", DEST, "127.0.0.1", str(port), *map(str, part)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for part in parts]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise RuntimeError(f"storescu failed: {b''.join(errors)[-500:]!r}")
    return elapsed


def run(count: int, size: int, associations: list[int], runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="srnode-bench-outbox-") as tmp:
        t0 = time.perf_counter()
        factory, storage, files = make_node(Path(tmp), count, size)
        mib = sum(f.stat().st_size for f in files) / count / 2**20
        print(f"{count} instances of {size}x{size} ({mib:.1f} MiB each) made in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr)
        rates: dict[str, list[float]] = {}
        for _ in range(runs):
            for n in associations:
                port = free_port()
                with storescp(port, fork=n > 1):
                    rates.setdefault(f"node {n}", []).append(count / time_node(factory, storage, port, n, count))
                    rates.setdefault(f"storescu {n}", []).append(count / time_storescu(files, port, n))
    return {"count": count, "size": size, "mib_per_instance": round(mib, 2), "runs": runs,
            "commit_rows": getattr(sender_module, "DELIVERED_COMMIT_ROWS", None),
            "associations": associations, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
            "rates": rates}


def table(result: dict) -> str:
    """Medians (min-max); the ratio is the median of each run's node / storescu pair (run back to back)."""
    lines = ["| associations | node (instances/s) | storescu → storescp (instances/s) | node / storescu, per run |",
             "|---:|---:|---:|---:|"]
    for n in result["associations"]:
        node, ref = result["rates"][f"node {n}"], result["rates"][f"storescu {n}"]
        ratios = [a / b for a, b in zip(node, ref)]
        lines.append(f"| {n} | {statistics.median(node):.1f} ({min(node):.1f}-{max(node):.1f}) | "
                     f"{statistics.median(ref):.1f} ({min(ref):.1f}-{max(ref):.1f}) | "
                     f"{statistics.median(ratios):.0%} ({min(ratios):.0%}-{max(ratios):.0%}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=120, help="instances per run")
    ap.add_argument("--size", type=int, default=2048, help="rows = columns of each instance (multiple of 512)")
    ap.add_argument("--associations", default="1,2,4", help="comma-separated association counts")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--commit-rows", type=int, default=None,
                    help="override the sender's DELIVERED_COMMIT_ROWS (1 = a commit per delivered row)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 instances, 1 and 2 associations, 1 run")
    ap.add_argument("--out", type=Path, default=None, help="folder for outbox_rate.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.count, args.associations, args.runs = min(args.count, 6), "1,2", 1
    if args.commit_rows is not None:
        sender_module.DELIVERED_COMMIT_ROWS = args.commit_rows
    result = run(args.count, args.size, [int(n) for n in args.associations.split(",")], args.runs)
    print(table(result))
    print(f"load average after the runs: {' '.join(f'{x:.2f}' for x in result['load_average'])}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "outbox_rate.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
