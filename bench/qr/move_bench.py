"""C-MOVE throughput: srnode vs DCMTK dcmqrscp serving the same 300-instance CT series.

Both archives hold byte-identical files (real 512x512 CT slices from ../shared/data/ct, re-identified
with new UIDs into one series). The same requester (DCMTK movescu) moves the series to the same
destination (DCMTK storescp --ignore, so the receiver's disk is not what is measured). Runs
alternate between the two archives; the median per archive is reported.
"""
from __future__ import annotations

import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from tqdm import tqdm

from bench.qr.common import DCMTK_ENV, free_port, start_node, wait_port
from dicom_node.ingest import encode_part10, store_encoded

ROOT = "1.2.826.0.1.3680043.10.1235."


@dataclass
class MoveResult:
    archive: str
    seconds: list[float]
    instances: int

    @property
    def rate(self) -> float:
        """Instances per second (median run)."""
        return self.instances / statistics.median(self.seconds)


def make_series(ct_dirs: list[Path], out: Path, count: int) -> list[Path]:
    """`count` real CT slices (cycled) as one new series, written as Part 10 files under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for d in ct_dirs for p in d.iterdir() if p.is_file())
    base = ROOT + str(uuid.uuid4().int)[:12]
    study, series = f"{base}.1", f"{base}.2"
    files = []
    for n in tqdm(range(count), desc="make series", unit="inst"):
        ds = dcmread(sources[n % len(sources)])
        ds.PatientName, ds.PatientID = "BENCH^MOVE", "BENCHMOVE"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = f"{series}.{n + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        path = out / f"{n + 1:04d}.dcm"
        path.write_bytes(encode_part10(ds))
        files.append(path)
    return files


def _dcmqrscp(workdir: Path, files: list[Path], dest_port: int) -> tuple[subprocess.Popen[bytes], int]:
    db = workdir / "dcmqr-db"
    db.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = workdir / "dcmqrscp.cfg"
    cfg.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        f"HostTable BEGIN\ndest = (STORESCP, 127.0.0.1, {dest_port})\nHostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQR {db} RW (10, 1024mb) ANY\nAETable END\n"
    )
    subprocess.run(["dcmqridx", str(db), *map(str, files)], check=True, env=DCMTK_ENV)
    proc = subprocess.Popen(["dcmqrscp", "-c", str(cfg), str(port)], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "dcmqrscp.log", "w"))
    wait_port(port)
    return proc, port


def _movescu(port: int, called: str, study: str, series: str) -> float:
    cmd = ["movescu", "-S", "-aet", "BENCHSCU", "-aec", called, "-aem", "STORESCP",
           "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}", "-k", f"SeriesInstanceUID={series}",
           "127.0.0.1", str(port)]
    started = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=DCMTK_ENV)
    took = time.perf_counter() - started
    if res.returncode != 0 or "Failed" in res.stderr:
        raise RuntimeError(f"movescu to {called} failed:\n{res.stdout}{res.stderr}")
    return took


def run_move_bench(workdir: Path, ct_dirs: list[Path], count: int, repeats: int) -> list[MoveResult]:
    """Measure both archives; returns one MoveResult per archive."""
    files = make_series(ct_dirs, workdir / "series", count)
    head = dcmread(files[0], stop_before_pixels=True)
    study, series = str(head.StudyInstanceUID), str(head.SeriesInstanceUID)

    dest_port = free_port()
    dest = subprocess.Popen(["storescp", "--ignore", "-aet", "STORESCP", str(dest_port)], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(dest_port)
    node = start_node(workdir / "srnode", peers={"dest": ("STORESCP", dest_port), "bench": ("BENCHSCU", 1)})
    qr, qr_port = _dcmqrscp(workdir, files, dest_port)
    try:
        for path in tqdm(files, desc="ingest into srnode", unit="inst"):
            store_encoded(node.session_factory, node.storage_dir, path.read_bytes(), "BENCH")
        results = {"srnode": MoveResult("srnode", [], count), "dcmqrscp": MoveResult("dcmqrscp", [], count)}
        assert node.port is not None  # set by start()
        _movescu(node.port, "SRNODE", study, series)  # warm-up: page cache and Python imports
        _movescu(qr_port, "DCMQR", study, series)
        for _ in tqdm(range(repeats), desc="C-MOVE runs", unit="pair"):
            results["srnode"].seconds.append(_movescu(node.port, "SRNODE", study, series))
            results["dcmqrscp"].seconds.append(_movescu(qr_port, "DCMQR", study, series))
        return list(results.values())
    finally:
        node.stop(grace_s=2)
        for proc in (qr, dest):
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":  # pragma: no cover - run through bench/qr/bench_qr.py
    raise SystemExit("run bench/qr/bench_qr.py")
