"""One fuzz run against a real `srnode serve`: the corpus over DIMSE beside a valid parallel sender.

`run_fuzz` starts the node as a subprocess (its stdout and stderr go to files: the bytes it really
writes), sends every variant of bench/faults/fuzz_corpus.py over a few pynetdicom associations
while DCMTK storescu sends a valid real CT series, then counts: statuses, what is on disk and in
the index, whether the node still answers C-ECHO, and every occurrence of the patient markers in
the node's output files. Callers (tests/faults/test_fuzz.py, bench/faults/fuzz_report.py) assert
on or print the figures.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from pynetdicom import AE, _config
from sqlalchemy import create_engine, select

from bench.faults.fuzz_corpus import CT_IMAGE, MR_IMAGE, PHI_MARKERS, SUCCESS, Variant, write_corpus
from dicom_node.index.models import Instance

NODE_AE, FUZZ_AE, PARALLEL_AE = "SRNODE", "MUTATOR", "PACS"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _echo(port: int) -> bool:
    r = subprocess.run(["echoscu", "-aet", PARALLEL_AE, "-aec", NODE_AE, "127.0.0.1", str(port)],
                       capture_output=True, timeout=30)
    return r.returncode == 0


class FuzzNode:
    """`srnode serve` in its own session, output to `stdout.log`/`stderr.log` in `node_dir` (its cwd)."""

    def __init__(self, node_dir: Path) -> None:
        self.dir = node_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.storage = node_dir / "storage"
        self.database_url = f"sqlite:///{node_dir / 'index.db'}"
        self.proc: subprocess.Popen[bytes] | None = None
        cfg = {
            "node": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": self.port, "storage_dir": str(self.storage),
                     "database_url": self.database_url, "require_known_callers": True, "min_free_disk_mb": 1,
                     "shutdown_grace_s": 10},
            "peers": {ae: {"ae_title": ae, "host": "127.0.0.1", "port": 4242 + i}
                      for i, ae in enumerate((PARALLEL_AE, FUZZ_AE))},
            "series": {"stable_after_s": 2, "check_interval_s": 0.5},
            "admin": {"enabled": False},
        }
        self.config = node_dir / "srnode.yaml"
        self.config.write_text(yaml.safe_dump(cfg), encoding="utf-8")

    def start(self, timeout_s: float = 120) -> None:
        with open(self.dir / "stdout.log", "ab") as out, open(self.dir / "stderr.log", "ab") as err:
            command = [sys.executable, "-m", "srnode", "serve", "--config", str(self.config)]
            self.proc = subprocess.Popen(command, cwd=self.dir, stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"srnode serve exited {self.proc.returncode}: {self.output()[-2000:]!r}")
            if _echo(self.port):
                return
            time.sleep(0.3)
        raise RuntimeError("srnode serve did not answer C-ECHO")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM to the group (node and children), SIGKILL if it lingers; the node's exit code."""
        if self.proc is None:
            return None
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()

    def output_files(self) -> list[Path]:
        """Everything the node wrote except its instances and its index (which hold the data itself)."""
        skip = {self.storage}
        files = []
        for path in self.dir.rglob("*"):
            if path.is_file() and not any(p in skip for p in path.parents) and not path.name.startswith("index.db"):
                files.append(path)
        return sorted(files)

    def output(self) -> str:
        return "".join(p.read_text(encoding="utf-8", errors="replace")
                       for p in self.output_files() if p.suffix == ".log")


def send_variants(port: int, corpus: list[tuple[Variant, Path]], associations: int) -> dict[int, int | None]:
    """C-STORE every variant file as it is (few associations); variant index -> status (None: no answer)."""
    statuses: dict[int, int | None] = {}
    chunk = max(1, -(-len(corpus) // associations))
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's dataset bytes go out untouched
    try:
        for start in range(0, len(corpus), chunk):
            _send_chunk(port, corpus[start:start + chunk], statuses)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return statuses


def _send_chunk(port: int, items: list[tuple[Variant, Path]], statuses: dict[int, int | None]) -> None:
    ae = AE(ae_title=FUZZ_AE)
    for sop_class in (CT_IMAGE, MR_IMAGE):
        ae.add_requested_context(sop_class, EXPLICIT_LE)
    assoc = None
    try:
        for variant, path in items:
            if assoc is None or not assoc.is_established:  # the node ended it: count, and go on anew
                assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
            if not assoc.is_established:
                statuses[variant.index] = None
                continue
            rsp = assoc.send_c_store(path)
            statuses[variant.index] = int(rsp.Status) if "Status" in rsp else None
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()


def _storescu(port: int, files: list[Path], result: dict[str, Any]) -> None:
    cmd = ["storescu", "-v", "-aet", PARALLEL_AE, "-aec", NODE_AE, "127.0.0.1", str(port), *map(str, files)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "TCP_NODELAY": "1"})
    result["returncode"] = r.returncode
    result["acknowledged"] = (r.stdout + r.stderr).count("Received Store Response (Success)")


def _sop_uids(files: list[Path]) -> list[str]:
    from pydicom import dcmread

    return [str(dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID) for f in files]


def _indexed(database_url: str) -> dict[str, str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(select(Instance.sop_instance_uid, Instance.file_path)).all())
    finally:
        engine.dispose()


def phi_hits(files: list[Path], markers: tuple[str, ...] = PHI_MARKERS) -> dict[str, int]:
    """'file: marker' -> occurrences, over the raw bytes (any encoding a log could use for them)."""
    hits: dict[str, int] = {}
    for path in files:
        data = path.read_bytes()
        for marker in markers:
            for encoded in {marker.encode("utf-8"), marker.encode("utf-16-le")}:
                if n := data.count(encoded):
                    hits[f"{path.name}: {marker}"] = hits.get(f"{path.name}: {marker}", 0) + n
    return hits


def run_fuzz(work_dir: Path, source: Path, parallel_files: list[Path], n: int = 300, seed: int = 14,
             associations: int = 3) -> dict[str, Any]:
    """The whole run; returns the figures (also written to `work_dir/fuzz_figures.json`)."""
    started = time.monotonic()
    corpus = write_corpus(source, work_dir / "corpus", n, seed)
    node = FuzzNode(work_dir / "node")
    node.start()
    parallel: dict[str, Any] = {}
    sender = threading.Thread(target=_storescu, args=(node.port, parallel_files, parallel))
    try:
        sender.start()
        statuses = send_variants(node.port, corpus, associations)
        sender.join(300)
        alive_after = node.alive()
        echo_after = alive_after and _echo(node.port)
        indexed = _indexed(node.database_url)
    finally:
        sender.join(300)
        exit_code = node.stop()
    figures = _count(corpus, statuses, indexed, node, parallel_files, parallel)
    figures.update(node_alive_after=alive_after, echo_after=echo_after, node_exit_code=exit_code,
                   crashes=0 if alive_after else 1, elapsed_s=round(time.monotonic() - started, 1))
    (work_dir / "fuzz_figures.json").write_text(json.dumps(figures, indent=2, sort_keys=True), encoding="utf-8")
    return figures


def _count(corpus: list[tuple[Variant, Path]], statuses: dict[int, int | None], indexed: dict[str, str],
           node: FuzzNode, parallel_files: list[Path], parallel: dict[str, Any]) -> dict[str, Any]:
    acked = [v for v, _ in corpus if statuses.get(v.index) == SUCCESS]
    refused = [v for v, _ in corpus if statuses.get(v.index) not in (SUCCESS, None)]
    on_disk = {v.sop_instance_uid for v in acked if v.sop_instance_uid in indexed
               and (node.storage / indexed[v.sop_instance_uid]).is_file()}
    parallel_uids = _sop_uids(parallel_files)
    output = node.output()
    return {
        "tried": len(corpus),
        "acknowledged": len(acked),
        "refused": len(refused),
        "refused_by_status": dict(sorted(Counter(f"0x{statuses[v.index]:04X}" for v in refused).items())),
        "no_response": sum(1 for v, _ in corpus if statuses.get(v.index) is None),
        "stored": len(on_disk),
        "lost": sorted(v.kind for v in acked if v.sop_instance_uid not in on_disk),
        "refused_but_indexed": sorted(v.kind for v in refused if v.sop_instance_uid in indexed),
        "refused_but_on_disk": sorted(v.kind for v in refused if any(node.storage.rglob(f"{v.sop_instance_uid}.dcm"))),
        # Rows nobody acknowledged (e.g. stored under a UID a mutation made up): must be none.
        "unexplained_rows": len(set(indexed) - {v.sop_instance_uid for v in acked} - set(parallel_uids)),
        "unexpected_status": [f"{v.kind}: expected 0x{v.expected:04X}, got "
                              + (f"0x{statuses[v.index]:04X}" if statuses.get(v.index) is not None else "none")
                              for v, _ in corpus if v.expected is not None and statuses.get(v.index) != v.expected],
        "parallel": {"sent": len(parallel_files), "acknowledged": parallel.get("acknowledged", 0),
                     "storescu_returncode": parallel.get("returncode"),
                     "stored": sum(1 for u in parallel_uids if u in indexed and (node.storage / indexed[u]).is_file())},
        "refusal_log_lines": len(re.findall(r"refused instance", output)),
        "tracebacks": output.count("Traceback"),
        "output_bytes": sum(p.stat().st_size for p in node.output_files()),
        "phi_hits": phi_hits(node.output_files()),
    }
