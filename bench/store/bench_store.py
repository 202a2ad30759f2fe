"""C-STORE throughput: srnode vs DCMTK storescp (and storescp --fork) vs Orthanc, same run.

500 CT instances (~0.5 MB each, made from the shared CT with fresh UIDs) are sent with DCMTK
storescu over 1 association, and split over 4 parallel associations. TCP_NODELAY=1 is set for
every DCMTK tool and Orthanc (otherwise they stall ~40 ms per instance on Nagle's algorithm).
Each receiver starts empty for every run; after each run the number of instances it holds is
checked (a lost instance fails the benchmark). Prints a table, writes JSON and a PNG bar plot.

    .venv/bin/python bench/store/bench_store.py --runs 3 --out bench/store/results
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread
from pydicom.uid import generate_uid
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SRNODE_SHARED_DIR", REPO.parent / "shared")).resolve()
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_instances(out: Path, n: int) -> list[Path]:
    """n CT files cycled from the shared chest CTs, 100 per series, with fresh UIDs."""
    sources = sorted((SHARED / "data" / "ct" / "cptac-lscc_C3N-00247_chest").glob("*.dcm")) + sorted(
        (SHARED / "data" / "ct" / "lung-pet-ct-dx_Lung_Dx-A0002_chest").glob("*.dcm"))
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    study = series = ""
    for i in tqdm(range(n), desc="making instances", unit="file", leave=False):
        if i % 100 == 0:
            study, series = (generate_uid() if i % 500 == 0 else study), generate_uid()
        ds = dcmread(sources[i % len(sources)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i % 100 + 1
        path = out / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def wait_for(check: Callable[[], bool], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start")


def echo_ok(port: int) -> bool:
    # Called AE SRNODE for both receivers: srnode checks it (node.require_called_ae), Orthanc does not.
    command = ["echoscu", "-aet", "BENCH", "-aec", "SRNODE", "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, env=ENV).returncode == 0


@dataclass
class Receiver:
    name: str
    start: Callable[[Path, int], subprocess.Popen[bytes]]
    count: Callable[[Path, int], int]


PG_ADMIN_URL = os.environ.get("SRNODE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _database_url(work: Path) -> str:
    # A work dir holding `pg_database` uses that (bench-created) PostgreSQL database.
    marker = work / "pg_database"
    if marker.exists():
        return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + marker.read_text()
    return f"sqlite:///{work / 'index.db'}"


def _pg_admin(sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


def _srnode_config(work: Path, port: int, processes: int = 1) -> Path:
    cfg = {
        "node": {"ae_title": "SRNODE", "host": "127.0.0.1", "port": port, "storage_dir": str(work / "storage"),
                 "database_url": _database_url(work), "require_known_callers": True,
                 "min_free_disk_mb": 100, "max_associations": 16, "log_level": "WARNING",
                 "processes": processes},
        "peers": {"BENCH": {"ae_title": "BENCH", "host": "127.0.0.1", "port": 4242}},
        "series": {"stable_after_s": 3600},
        # The embedded SR worker is started by `srnode serve`; its start-up (importing torch) would
        # overlap the first seconds of a run. Storage throughput is measured without it.
        "worker": {"embedded": False},
        "admin": {"enabled": False},
    }
    path = work / "srnode.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _srnode(processes: int, tree: Path = REPO,
            postgres: bool = False) -> Callable[[Path, int], subprocess.Popen[bytes]]:
    def start(work: Path, port: int) -> subprocess.Popen[bytes]:
        if postgres:
            name = f"srnode_bench_store_{os.getpid()}_{port}"
            _pg_admin(f'CREATE DATABASE "{name}"')
            (work / "pg_database").write_text(name)
        # `srnode serve` exactly as deployed (SIGTERM-able), started through its own command module;
        # `tree` may be an exported older commit (--baseline), run with the same venv.
        env = {**os.environ, "PYTHONPATH": str(tree)}
        proc = subprocess.Popen([sys.executable, "-m", "dicom_node.commands", "serve", "--config",
                                 str(_srnode_config(work, port, processes))], cwd=tree, env=env,
                                stdout=subprocess.DEVNULL, stderr=open(work / "srnode.log", "w"))
        wait_for(lambda: echo_ok(port), "srnode")
        time.sleep(3 if processes > 1 else 0.5)  # let the listener children come up too
        return proc
    return start


def count_srnode(work: Path, port: int) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(_database_url(work).replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("select count(*) from instance")).scalar_one())
    finally:
        engine.dispose()


def _storescp(fork: bool) -> Callable[[Path, int], subprocess.Popen[bytes]]:
    def start(work: Path, port: int) -> subprocess.Popen[bytes]:
        (work / "out").mkdir()
        cmd = ["storescp", "-od", str(work / "out"), "-aet", "STORESCP", "--max-pdu", "131072"]
        proc = subprocess.Popen([*cmd, *(["--fork"] if fork else []), str(port)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: echo_ok(port), "storescp")
        return proc
    return start


def count_files(work: Path, port: int) -> int:
    return sum(1 for p in (work / "out").iterdir() if p.is_file())


def start_orthanc(work: Path, port: int) -> subprocess.Popen[bytes]:
    http = free_port()
    (work / "http_port").write_text(str(http))
    cfg = {"Name": "bench", "StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"),
           "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
           "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "StorageCompression": False,
           "Plugins": [], "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True}
    (work / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=open(work / "orthanc.log", "w"))
    wait_for(lambda: echo_ok(port), "Orthanc")
    return proc


# A bare pynetdicom SCP that reads each dataset and answers Success without storing anything:
# the ceiling of any pynetdicom-based node on this machine.
_NOOP_SCP = """
import signal, sys, threading
from pathlib import Path
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
n = [0]
def store(event):
    event.encoded_dataset()
    n[0] += 1
    return 0
ae = AE()
ae.maximum_pdu_size = 4 * 1024 * 1024
ae.add_supported_context(Verification)
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, AllTransferSyntaxes)
server = ae.start_server(("127.0.0.1", int(sys.argv[1])), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
done.wait()
server.shutdown()
Path(sys.argv[2]).write_text(str(n[0]))
"""


def start_noop(work: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", _NOOP_SCP, str(port), str(work / "count")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: echo_ok(port), "pynetdicom no-op SCP")
    return proc


def count_noop(work: Path, port: int) -> int:
    # Read after the process has stopped (see main: counted once the receiver is stopped).
    return -1


def count_orthanc(work: Path, port: int) -> int:
    http = int((work / "http_port").read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics", timeout=30) as r:
        return int(json.load(r)["CountInstances"])


def send(port: int, files: list[Path], parallel: int) -> float:
    """Wall seconds for `parallel` storescu processes (one association each) to send `files`."""
    chunks = [files[i::parallel] for i in range(parallel)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", "SRNODE", "127.0.0.1", str(port), *map(str, c)],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in chunks]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - t0
    for p, err in zip(procs, errors):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return elapsed


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--only", nargs="*", help="receiver names to run (default: all)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "store" / "results")
    ap.add_argument("--postgres", action="store_true",
                    help="also run srnode on PostgreSQL (SRNODE_BENCH_PG_URL; a database per run), 1 and N processes")
    ap.add_argument("--baseline", metavar="COMMIT",
                    help="also run srnode as of this commit (git archive into a temp dir), same run")
    args = ap.parse_args()

    receivers = [
        Receiver("srnode", _srnode(1), count_srnode),
        Receiver(f"srnode {args.parallel} procs", _srnode(args.parallel), count_srnode),
        Receiver("storescp", _storescp(False), count_files),
        Receiver("storescp --fork", _storescp(True), count_files),
        Receiver("Orthanc", start_orthanc, count_orthanc),
        Receiver("pynetdicom no-op", start_noop, count_noop),
    ]
    tmp = Path(tempfile.mkdtemp(prefix="srnode-bench-store-"))
    if args.baseline:
        base = tmp / "baseline-tree"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
        receivers.insert(1, Receiver(f"srnode@{args.baseline[:10]}", _srnode(1, base), count_srnode))
    if args.postgres:
        receivers[2:2] = [Receiver("srnode pg", _srnode(1, postgres=True), count_srnode),
                          Receiver(f"srnode pg {args.parallel} procs", _srnode(args.parallel, postgres=True),
                                   count_srnode)]
    if args.only:
        receivers = [r for r in receivers if r.name in args.only]
    cases = [(r, p) for r in receivers for p in (1, args.parallel)
             if not (r.name == "storescp" and p > 1) and not (r.name.endswith(("--fork", "procs")) and p == 1)]
    results: dict[str, dict[str, Any]] = {}
    loads: list[float] = []
    try:
        files = make_instances(tmp / "input", args.instances)
        mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"{len(files)} instances, {mb / len(files):.2f} MB each on average")
        bar = tqdm(total=len(cases) * args.runs, desc="runs", unit="run")
        for run in range(args.runs):  # interleaved, so load from other work hits every receiver alike
            for receiver, parallel in cases:
                work = tmp / f"{receiver.name.replace(' ', '_')}-{parallel}-{run}"
                work.mkdir()
                port = free_port()
                proc = receiver.start(work, port)
                try:
                    elapsed = send(port, files, parallel)
                    time.sleep(0.5)
                    held = receiver.count(work, port)
                finally:
                    stop(proc)
                    if (work / "pg_database").exists():
                        _pg_admin(f'DROP DATABASE IF EXISTS "{(work / "pg_database").read_text()}" WITH (FORCE)')
                if held < 0:  # counted by the receiver itself on exit
                    held = int((work / "count").read_text())
                key = f"{receiver.name} x{parallel}"
                entry = results.setdefault(key, {"receiver": receiver.name, "associations": parallel,
                                                 "rates": [], "lost": 0})
                entry["rates"].append(len(files) / elapsed)
                entry["lost"] = int(entry["lost"]) + (len(files) - held)
                shutil.rmtree(work, ignore_errors=True)
                loads.append(os.getloadavg()[0])
                bar.update()
        bar.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n1-min load average after each run: median {statistics.median(loads):.1f}, "
          f"range {min(loads):.1f}-{max(loads):.1f}")
    print(f"\n{'receiver':<20}{'assocs':>7}{'median inst/s':>15}{'min':>8}{'max':>8}{'lost':>6}")
    for e in results.values():
        rates = e["rates"]
        e["median"] = statistics.median(rates)
        print(f"{e['receiver']:<20}{e['associations']:>7}{e['median']:>15.0f}{min(rates):>8.0f}{max(rates):>8.0f}{e['lost']:>6}")
    args.out.mkdir(parents=True, exist_ok=True)
    results["_load_average"] = {"after_each_run": loads}
    (args.out / "store_throughput.json").write_text(json.dumps(results, indent=2))
    results.pop("_load_average")
    _plot(results, args.out / "store_throughput.png")
    lost = sum(int(e["lost"]) for e in results.values())
    if lost:
        print(f"LOST {lost} instances", file=sys.stderr)
    return 1 if lost else 0


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    medians = [float(results[k]["median"]) for k in keys]
    colors = ["tab:green" if str(results[k]["receiver"]).startswith("srnode") else "tab:gray" for k in keys]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(keys, medians, color=colors)
    for i, v in enumerate(medians):
        ax.text(v, i, f" {v:.0f}", va="center")
    ax.set_xlabel("instances/s (median; 500 CT instances ~0.5 MB)")
    ax.set_title("C-STORE throughput, storescu senders, TCP_NODELAY=1")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
