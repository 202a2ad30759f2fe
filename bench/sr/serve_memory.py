"""A 512² CT series through `srnode serve` end to end: peak memory of every node process (issue 15).

Starts a real node (`srnode serve`, embedded worker, SQLite index) routing CT to a model folder's
model, sends a series of real 512² CT slices with DCMTK's `storescu`, waits until the job is done,
then reads each process's peak RSS (VmHWM in /proc) and the job's timings. The worker plans tile
size and batch under `worker.max_memory_mb` (`--budget-mb`).

    .venv/bin/python -m bench.sr.serve_memory --slices 20 --budget-mb 2048 \
        --json bench/sr/results/serve_memory.json
    .venv/bin/python -m bench.sr.serve_memory --smoke   # CI: bicubic, 3 slices of 64²
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.sr.common import REPO, build_series, markdown_table, model_entries, write_results  # noqa: E402

FAST_DIR = REPO / "models" / "ct-compact"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(root: int) -> list[int]:
    """`root` and its descendants (from /proc/*/stat parent pids)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def peaks_mib(pids: list[int]) -> dict[str, float]:
    """Peak RSS (VmHWM) of each live process, by its command line's module."""
    found: dict[str, float] = {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        hwm = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0.0)
        name = next((c.decode() for c in cmd if c.startswith((b"dicom_node", b"workers"))), cmd[0].decode())
        found[f"{name} (pid {pid})"] = max(found.get(name, 0.0), hwm)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--budget-mb", type=int, default=2048, help="worker.max_memory_mb")
    p.add_argument("--model-dir", type=Path, default=FAST_DIR)
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="bicubic on 3 slices of 64²: checks the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.slices, args.size = 3, 64
    with tempfile.TemporaryDirectory(prefix="srserve-") as tmp:
        work = Path(tmp)
        models = {} if args.smoke else model_entries(args.model_dir)
        model = "bicubic" if args.smoke else next(iter(models))
        port = free_port()
        cfg = {
            "node": {"ae_title": "SRNODE", "host": "127.0.0.1", "port": port, "storage_dir": str(work / "storage"),
                     "database_url": f"sqlite:///{work / 'index.db'}", "require_known_callers": False,
                     "min_free_disk_mb": 0},
            "series": {"stable_after_s": 2.0, "check_interval_s": 0.5},
            "models": models,
            "routing": [{"name": "ct", "match": {"modality": "CT"}, "model": model}],
            "worker": {"max_memory_mb": args.budget_mb},
            "admin": {"enabled": False},
        }
        config = work / "node.yaml"
        config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        files = build_series(work / "series", args.slices, size=args.size)
        log = (work / "node.log").open("w")
        node = subprocess.Popen([sys.executable, "-m", "srnode", "serve", "--config", str(config)],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.5)
            t0 = time.monotonic()
            subprocess.run(["storescu", "-aec", "SRNODE", "127.0.0.1", str(port), *map(str, files)],
                           check=True, capture_output=True, timeout=600)
            state, timings, pids_seen = "", "", set()
            peaks: dict[str, float] = {}
            while time.monotonic() - t0 < args.timeout_s:
                pids = process_tree(node.pid)
                pids_seen.update(pids)
                peaks.update(peaks_mib(pids))  # read while they live: the worker may be recycled
                with sqlite3.connect(work / "index.db") as db:
                    row = db.execute("SELECT state, timings FROM job ORDER BY id DESC LIMIT 1").fetchone()
                if row and row[0] in ("done", "done_with_errors", "failed"):
                    state, timings = row
                    break
                time.sleep(1.0)
            wall = time.monotonic() - t0
            peaks.update(peaks_mib(process_tree(node.pid)))
        finally:
            node.terminate()
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
            log.close()
        if state != "done":
            tail = (work / "node.log").read_text()[-3000:]
            raise RuntimeError(f"job did not finish (state {state or 'none'}):\n{tail}")
    doc: dict[str, Any] = {"slices": args.slices, "size": args.size, "model": model, "budget_mb": args.budget_mb,
                           "wall_s": wall, "job_timings": json.loads(timings or "{}"), "peak_rss_mib": peaks,
                           "cpus": os.cpu_count()}
    rows = [[name, f"{mib:.0f}"] for name, mib in sorted(peaks.items(), key=lambda kv: -kv[1])]
    table = markdown_table(["process", "peak RSS MiB"], rows)
    print(f"{args.slices} slices {args.size}² x4 with {model} through srnode serve in {wall:.1f} s "
          f"(send to job done), budget {args.budget_mb} MiB\n{table}")
    if args.json:
        doc["command"] = "python -m bench.sr.serve_memory " + " ".join(argv if argv is not None else sys.argv[1:])
        write_results(args.json, doc, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
