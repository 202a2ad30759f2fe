"""DICOMweb benchmark: STOW-RS and WADO-RS rates (srnode against Orthanc's DICOMweb plugin, same
run) and QIDO-RS latency over a large index (srnode against Orthanc's plugin, the same queries).

Usage (from the repository root):

    .venv/bin/python -m bench.dicomweb.stow_qido --out bench/dicomweb/results     # full run
    .venv/bin/python -m bench.dicomweb.stow_qido --smoke --out /tmp/dw-smoke       # seconds, for CI

STOW-RS: the real CT slices of ../shared/data/ct, cycled to --instances and given fresh Study,
Series and SOP Instance UIDs per run (nothing is a duplicate), Explicit VR LE as stored (~0.5 MB
each), posted by one client on one keep-alive connection in requests of --batch instances to
srnode's /dicomweb/studies and to Orthanc's /dicom-web/studies, alternating run by run. A run is
timed from the first request sent to the last answer read; every answer must list every instance
of its request in ReferencedSOPSequence. srnode stores through the C-STORE receive path (validated,
fsynced file, index row committed before the answer); Orthanc runs with its defaults.
WADO-RS: then each server's series of its last STOW-RS run are retrieved, one series per request
(multipart/related; type="application/dicom", Explicit VR LE as stored), --wado-runs times alternating.

QIDO-RS: --qido-patients x 2 studies x 4 series x 25 instances (bench/qr/find_bench.py's
catalogue): bulk rows in srnode's index, Part 10 files in Orthanc; four queries like the C-FIND
benchmark's, each timed --qido-repeats times per server (alternating), request sent to body read.

Writes results.json and results.md under --out (the table is printed too).
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import generate_uid

from bench.qr.find_bench import Timing  # one latency record (median, p95) for both Q/R benches

REPO = Path(__file__).resolve().parents[2]
TOKEN = "bench-dicomweb-token-0123456789"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
REFERENCED_SOP = "00081199"
FAILED_SOP = "00081198"


# --- servers ------------------------------------------------------------------------------------
@dataclass
class Server:
    """A DICOMweb service root reachable on one keep-alive HTTP connection."""

    name: str
    url: str  # http://127.0.0.1:<port>/<root>, no trailing slash
    headers: dict[str, str] = field(default_factory=dict)
    _conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        parsed = urllib.parse.urlsplit(self.url)
        if self._conn is None:
            self._conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port or 80, timeout=600)
        self._conn.request(method, parsed.path + path, body=body, headers={**self.headers, **(headers or {})})
        rsp = self._conn.getresponse()
        return rsp.status, rsp.read()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def start_node(workdir: Path) -> tuple[Any, Server]:
    """An srnode with its admin app (and /dicomweb), SQLite index, no pipeline (nothing is routed)."""
    from config.loader import parse_config
    from dicom_node.admin import service as admin_service
    from dicom_node.admin.service import AdminService
    from dicom_node.wiring import build_node

    cfg = parse_config({
        "node": {"ae_title": "SRNODE", "host": "127.0.0.1", "port": 0, "storage_dir": str(workdir / "storage"),
                 "database_url": f"sqlite:///{workdir / 'index.db'}", "min_free_disk_mb": 0,
                 "require_known_callers": False},
        "series": {"stable_after_s": 86400},
        "admin": {"host": "127.0.0.1", "port": 0, "tokens": {TOKEN: "admin"}},
        "query_retrieve": {"max_results": 0},  # as Orthanc's LimitFindResults: 0 (no cap)
    }, environ={})
    node = build_node(cfg, services=[admin_service.make_service])
    node.start()
    admin = next(s for s in node.services if isinstance(s, AdminService))
    return node, Server("srnode", f"http://127.0.0.1:{admin.port}/dicomweb", {"Authorization": f"Bearer {TOKEN}"})


def start_orthanc(workdir: Path) -> tuple[Any, Server]:
    """Orthanc with its DICOMweb plugin at /dicom-web (tests/orthanc.py: TCP_NODELAY=1, no auth)."""
    from tests.orthanc import Orthanc

    if not PLUGIN.exists():
        raise SystemExit(f"Orthanc's DICOMweb plugin is not at {PLUGIN} (sudo make system-deps)")
    orthanc = Orthanc(workdir, {}, Plugins=[str(PLUGIN)], DicomWeb={"Enable": True, "Root": "/dicom-web/"})
    return orthanc, Server("Orthanc", f"{orthanc.url}/dicom-web")


# --- STOW-RS ------------------------------------------------------------------------------------
def ct_slices() -> list[Path]:
    shared = Path(os.environ.get("SRNODE_SHARED_DIR", REPO.parent / "shared"))
    found = sorted(p for d in sorted((shared / "data" / "ct").iterdir()) if d.is_dir()
                   for p in sorted(d.iterdir()) if p.is_file())
    if not found:
        raise SystemExit(f"no CT slices under {shared / 'data' / 'ct'}")
    return found


def fresh_instances(slices: list[Path], count: int,
                    series_seen: set[tuple[str, str]] | None = None) -> list[tuple[str, bytes]]:
    """`count` slices (cycled) as (SOP Instance UID, Part 10 bytes), one new study and series per
    source series and cycle, every SOP Instance UID new; the (study, series) pairs are added to
    `series_seen`."""
    out = []
    uids: dict[str, tuple[str, str]] = {}
    for n in range(count):
        ds = dcmread(slices[n % len(slices)])
        key = f"{ds.SeriesInstanceUID}/{n // len(slices)}"
        study, series = uids.setdefault(key, (generate_uid(), generate_uid()))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        out.append((str(ds.SOPInstanceUID), buf.getvalue()))
    if series_seen is not None:
        series_seen.update(uids.values())
    return out


def _body(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    from dicom_node.multipart import new_boundary, related_type, write_parts

    boundary = new_boundary()
    return (b"".join(write_parts((("application/dicom", data) for _, data in parts), boundary)),
            related_type("application/dicom", boundary))


def stow_run(server: Server, instances: list[tuple[str, bytes]], batch: int) -> float:
    """Seconds to store `instances` in requests of `batch`; RuntimeError unless all are stored."""
    requests = [_body(instances[i:i + batch]) + (instances[i:i + batch],) for i in range(0, len(instances), batch)]
    started = time.perf_counter()
    for body, content_type, parts in requests:
        status, raw = server.request("POST", "/studies", body, {"Content-Type": content_type,
                                                                 "Accept": "application/dicom+json"})
        answer = json.loads(raw) if raw.strip() else {}
        stored = {str(v) for item in (answer.get(REFERENCED_SOP) or {}).get("Value", [])
                  for v in (item.get("00081155") or {}).get("Value", [])}
        failed = (answer.get(FAILED_SOP) or {}).get("Value")  # Orthanc sends an empty sequence
        if status != 200 or failed or stored != {sop for sop, _ in parts}:
            raise RuntimeError(f"{server.name}: STOW-RS answered HTTP {status}, {len(stored)} of {len(parts)} "
                               f"listed as stored")
    seconds = time.perf_counter() - started
    server.close()  # a new connection per run: neither server keeps the other's advantage
    return seconds


def wado_run(server: Server, series: list[tuple[str, str]], expected: int) -> float:
    """Seconds to retrieve `series` by WADO-RS (multipart/related; type="application/dicom", the
    default Explicit VR Little Endian, which is how the instances are stored: no transcoding)."""
    from dicom_node.multipart import MediaType, MultipartReader

    accept = 'multipart/related; type="application/dicom"'
    received = 0
    started = time.perf_counter()
    for study, uid in series:
        parsed = urllib.parse.urlsplit(server.url)
        if server._conn is None:
            server._conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port or 80, timeout=600)
        server._conn.request("GET", f"{parsed.path}/studies/{study}/series/{uid}",
                             headers={**server.headers, "Accept": accept})
        rsp = server._conn.getresponse()
        if rsp.status != 200:
            raise RuntimeError(f"{server.name}: WADO-RS answered HTTP {rsp.status}")
        reader = MultipartReader(MediaType.parse(rsp.getheader("content-type", "")).params["boundary"])
        while chunk := rsp.read(1 << 20):  # parts are counted as they arrive, as a client would
            received += sum(1 for part in reader.feed(chunk) if part.body[128:132] == b"DICM")
        reader.finish()
    seconds = time.perf_counter() - started
    server.close()
    if received != expected:
        raise RuntimeError(f"{server.name}: WADO-RS gave {received} of {expected} instances")
    return seconds


@dataclass
class StowResult:
    server: str
    instances: int
    batch: int
    mb: float
    seconds: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.instances / statistics.median(self.seconds)


def run_stow(workdir: Path, count: int, batch: int, runs: int,
             wado_runs: int) -> tuple[list[StowResult], list[StowResult]]:
    """STOW-RS runs, then WADO-RS retrievals of the series the last run stored (same servers)."""
    slices = ct_slices()
    node, srnode = start_node(workdir / "stow-srnode")
    orthanc, orthanc_web = start_orthanc(workdir / "stow-orthanc")
    try:
        results = {s.name: StowResult(s.name, count, batch, 0.0) for s in (srnode, orthanc_web)}
        stored: dict[str, set[tuple[str, str]]] = {}
        for server in (srnode, orthanc_web):  # warm-up, not timed: first-request costs of both
            stow_run(server, fresh_instances(slices, 2), 2)
        for run in range(runs):
            # Alternate which goes first, so that neither always runs on a warmer machine.
            order = [srnode, orthanc_web] if run % 2 == 0 else [orthanc_web, srnode]
            for server in order:
                stored[server.name] = set()
                instances = fresh_instances(slices, count, stored[server.name])  # before the clock starts
                results[server.name].mb = sum(len(d) for _, d in instances) / 2**20
                seconds = stow_run(server, instances, batch)
                results[server.name].seconds.append(seconds)
                print(f"STOW-RS run {run + 1}/{runs} {server.name}: {count} instances in {seconds:.2f} s "
                      f"({count / seconds:.1f}/s)", flush=True)
        wado = {s.name: StowResult(s.name, count, len(stored[s.name]), results[s.name].mb)
                for s in (srnode, orthanc_web)}
        for run in range(wado_runs):
            for server in ([srnode, orthanc_web] if run % 2 == 0 else [orthanc_web, srnode]):
                seconds = wado_run(server, sorted(stored[server.name]), count)
                wado[server.name].seconds.append(seconds)
                print(f"WADO-RS run {run + 1}/{wado_runs} {server.name}: {count} instances in {seconds:.2f} s "
                      f"({count / seconds:.1f}/s)", flush=True)
        return list(results.values()), list(wado.values())
    finally:
        node.stop(grace_s=2)
        orthanc.stop()


# --- QIDO-RS ------------------------------------------------------------------------------------


def qido_queries(patients: int) -> dict[str, str]:
    """The measured searches (path with query string), those of the C-FIND benchmark."""
    from bench.qr.find_bench import Row

    mid = Row(patients // 2, 1, 2, 0)
    month = mid.study_date[:6]
    return {
        "series of one study": f"/studies/{mid.study_uid}/series?includefield=NumberOfSeriesRelatedInstances",
        "series by Modality + SeriesDescription wildcard + 30-day StudyDate range":
            f"/series?Modality=MR&SeriesDescription=T2*&StudyDate={month}01-{month}30",
        # "^" unescaped: Orthanc 1.10's plugin does not percent-decode it (PAT%5E... matches nothing there).
        "studies by PatientName wildcard": f"/studies?PatientName=PAT^{mid.patient:05d}*"
                                           "&includefield=ModalitiesInStudy,NumberOfStudyRelatedInstances",
        "instances of one series": f"/studies/{mid.study_uid}/series/{mid.series_uid}/instances",
    }


def _time_qido(server: Server, path: str) -> tuple[float, int]:
    started = time.perf_counter()
    status, raw = server.request("GET", path, headers={"Accept": "application/dicom+json"})
    ms = 1000 * (time.perf_counter() - started)
    if status not in (200, 204):
        raise RuntimeError(f"{server.name}: QIDO-RS {path} answered HTTP {status}")
    return ms, len(json.loads(raw)) if raw.strip() else 0


def run_qido(workdir: Path, patients: int, repeats: int) -> list[Timing]:
    from bench.qr.find_bench import fill_orthanc, fill_srnode_index

    node, srnode = start_node(workdir / "qido-srnode")
    orthanc, orthanc_web = start_orthanc(workdir / "qido-orthanc")
    try:
        fill_srnode_index(node, patients, 25)
        fill_orthanc(orthanc, patients, 25)
        timings: list[Timing] = []
        for name, path in qido_queries(patients).items():
            per = {s.name: Timing(s.name, name) for s in (srnode, orthanc_web)}
            for server in (srnode, orthanc_web):
                _time_qido(server, path)  # warm-up (connection, caches, first-query plans)
            for _ in range(repeats):
                for server in (srnode, orthanc_web):
                    ms, n = _time_qido(server, path)
                    per[server.name].ms.append(ms)
                    per[server.name].results = n
            timings += per.values()
            print(f"QIDO-RS {name}: " + ", ".join(f"{t.server} {t.median:.1f} ms ({t.results} results)"
                                                   for t in per.values()), flush=True)
        return timings
    finally:
        srnode.close()
        orthanc_web.close()
        node.stop(grace_s=2)
        orthanc.stop()


# --- report -------------------------------------------------------------------------------------
def markdown(stow: list[StowResult], wado: list[StowResult], qido: list[Timing], instances: int) -> str:
    """The tables for BENCHMARKS.md."""
    lines: list[str] = []
    for what, rows in (("STOW-RS", stow), ("WADO-RS", wado)):
        if not rows:
            continue
        s = rows[0]
        how = (f"{s.batch} per request, one connection" if what == "STOW-RS" else
               f"{s.batch} series retrieved one after another, one connection")
        lines += [f"{what} of {s.instances} CT instances ({s.mb:.0f} MiB), {how}:",
                  "", "| server | runs (s) | median (instances/s) |", "|---|---|---|"]
        for r in rows:
            lines.append(f"| {r.server} | {', '.join(f'{x:.2f}' for x in r.seconds)} | {r.rate:.1f} |")
        by = {r.server: r for r in rows}
        lines += ["", f"srnode / Orthanc {what} rate: {100 * by['srnode'].rate / by['Orthanc'].rate:.0f}%", ""]
    if qido:
        lines += [f"QIDO-RS latency, index of {instances} instances (ms, request sent to body read):", "",
                  "| query | results srnode / Orthanc | srnode median / p95 | Orthanc median / p95 |",
                  "|---|---|---|---|"]
        by_query: dict[str, dict[str, Timing]] = {}
        for t in qido:
            by_query.setdefault(t.query, {})[t.server] = t
        for query, per in by_query.items():
            q, o = per["srnode"], per["Orthanc"]
            lines.append(f"| {query} | {q.results} / {o.results} | {q.median:.1f} / {q.p95:.1f} | "
                         f"{o.median:.1f} / {o.p95:.1f} |")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "dicomweb" / "results")
    parser.add_argument("--instances", type=int, default=500, help="CT instances per STOW-RS run")
    parser.add_argument("--batch", type=int, default=25, help="instances per STOW-RS request")
    parser.add_argument("--runs", type=int, default=3, help="STOW-RS runs per server (alternating)")
    parser.add_argument("--wado-runs", type=int, default=7, help="WADO-RS runs per server (alternating)")
    parser.add_argument("--qido-patients", type=int, default=500,
                        help="x 2 studies x 4 series x 25 instances (500: 100,000 instances)")
    parser.add_argument("--qido-repeats", type=int, default=20)
    parser.add_argument("--only", choices=["stow", "qido"], help="run one half (results-<name>.*)")
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds: 10 instances, 1 run, 2 patients (80 instances), 3 repeats")
    args = parser.parse_args(argv)
    if args.smoke:
        args.instances, args.batch, args.runs, args.wado_runs, args.qido_patients, args.qido_repeats = 10, 5, 1, 1, 2, 3
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    # Results are written before the temporary directory (100k Orthanc files) is removed: slow.
    with tempfile.TemporaryDirectory(prefix="srnode-dicomweb-bench-") as tmp:
        stow, wado = ([], []) if args.only == "qido" else run_stow(Path(tmp), args.instances, args.batch, args.runs,
                                                                        args.wado_runs)
        qido = [] if args.only == "stow" else run_qido(Path(tmp), args.qido_patients, args.qido_repeats)
        write_results(args, stow, wado, qido)


def write_results(args: argparse.Namespace, stow: list[StowResult], wado: list[StowResult],
                  qido: list[Timing]) -> None:
    """results[-only].md and .json under args.out; the table is printed too."""
    instances = args.qido_patients * 8 * 25
    table = markdown(stow, wado, qido, instances)
    print(table)
    stem = f"results-{args.only}" if args.only else "results"
    (args.out / f"{stem}.md").write_text(table)
    (args.out / f"{stem}.json").write_text(json.dumps({
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)", "load_average": os.getloadavg(),
        "smoke": args.smoke,
        "stow": [{"server": r.server, "instances": r.instances, "batch": r.batch, "mb": r.mb,
                  "seconds": r.seconds, "rate": r.rate} for r in stow],
        "wado": [{"server": r.server, "instances": r.instances, "series": r.batch, "mb": r.mb,
                  "seconds": r.seconds, "rate": r.rate} for r in wado],
        "qido": {"instances": instances, "timings": [
            {"server": t.server, "query": t.query, "results": t.results, "ms": t.ms} for t in qido]},
    }, indent=1))


if __name__ == "__main__":
    main()
