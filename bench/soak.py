"""Soak test: hours of traffic in minutes (issue 16). See BENCHMARKS.md, "Soak".

`srnode serve` (embedded worker, SQLite index, `bicubic` x4 for CT) receives real CT series with
fresh UIDs from several DCMTK `storescu` senders at a steady rate, delivers the derived series to a
DCMTK `storescp` (+uf: every reception its own file, so duplicates are countable) that is stopped
twice for a minute (scaled with --minutes), under a `retention.quota_mb` well below what is sent,
so recycling runs all along. Housekeeping runs every few minutes too.

At the end the senders stop, the node drains, and the script counts: instances sent, acknowledged,
derived, delivered, recycled; lost (an acknowledged instance neither still indexed nor delivered
as its derived instance and then recycled); duplicates at the destination; associations refused;
C-STORE latency p50/p95 per window (5 min per 30 min of run); node and worker RSS and open file
descriptors at start and end; disk used over time. Figures go to OUT/soak.json and OUT/disk.png.

    .venv/bin/python -m bench.soak --minutes 30 --senders 3 --out bench/soak_results
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select
from tqdm import tqdm

from dicom_node.derive.uids import derived_sop_uid
from dicom_node.index.db import make_engine, session_factory
from dicom_node.index.models import Audit, Instance, Job, JobState, Outbox, OutboxState
from sr_engine.registry import builtin_digest
from tests.conftest import REPO_ROOT, free_port
from tests.faults.harness import Destination, Node, wait_until
from tests.pipeline.conftest import node_config
from tests.pipeline.helpers import write_config

CT_ROOT = Path(os.environ.get("SRNODE_SHARED_DIR", REPO_ROOT.parent / "shared")) / "data" / "ct"
SCALE = 4
# storescu's log with millisecond timestamps: the C-STORE latency is request sent -> response.
STORESCU_LOG_CONFIG = """log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%H:%M:%S.%q} %m%n
"""
_TIME = r"(\d\d):(\d\d):(\d\d)\.(\d{3})"
SETTLE_S = 3.0  # a file storescp wrote this long ago is complete; counted, then removed
# A refused or broken send is sent again, as a PACS would (the node may refuse while recycling
# cannot yet free enough): this many tries, this far apart.
RESEND_TRIES = 6
RESEND_AFTER_S = 5.0


@dataclass
class Plan:
    """The run's shape, scaled from --minutes (a 30-minute run: 5-minute windows, 1-minute outages)."""

    minutes: float
    senders: int
    slices: int
    period_s: float
    quota_mb: float
    drain_s: float

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def window_s(self) -> float:
        return 300 * self.minutes / 30

    @property
    def outage_s(self) -> float:
        return 60 * self.minutes / 30

    def outages(self) -> list[float]:
        """Start times (s into the run) of the two destination outages."""
        return [self.seconds / 3, 2 * self.seconds / 3]


@dataclass
class Tally:
    """What the senders saw; shared by their threads (under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    acked: set[str] = field(default_factory=set)
    refused_associations: int = 0
    failed_runs: int = 0
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the run, latency s)
    late_starts: int = 0  # a series started over a period late (the node could not keep the pace)


def source_files(slices: int) -> list[Path]:
    """The first `slices` slices of each real CT series (their fresh UIDs are made per send)."""
    series = [sorted(d.glob("*.dcm"))[:slices] for d in sorted(CT_ROOT.iterdir()) if d.is_dir()]
    if not series or not all(series):
        raise SystemExit(f"no CT series under {CT_ROOT}")
    return [f for s in series for f in s]


def fresh_series(templates: list[Path], out_dir: Path) -> list[tuple[Path, str]]:
    """Copies of one template series with a new study, series and SOP Instance UIDs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    written = []
    for i, path in enumerate(templates):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        target = out_dir / f"{i:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append((target, str(ds.SOPInstanceUID)))
    return written


def parse_storescu(output: str, files: dict[str, str], run_start: float, day_start: float) -> dict[str, Any]:
    """Acknowledged SOP UIDs and per-C-STORE latencies from storescu's timestamped log."""
    acked, latencies, current, sent_at = [], [], None, None
    for line in output.splitlines():
        m = re.match(_TIME, line)
        stamp = (int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) + int(m[4]) / 1000) if m else None
        if f := re.search(r"Sending file: (.+)$", line):
            current = f.group(1).strip()
        elif "Sending Store Request" in line:
            sent_at = stamp
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(files[current])
            if stamp is not None and sent_at is not None:
                latencies.append((day_start + sent_at - run_start, (stamp - sent_at) % 86400))
            current = None
    return {"acked": acked, "latencies": latencies, "refused": "Association Rejected" in output}


def midnight_epoch() -> float:
    now = datetime.now()
    return now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def send_loop(k: int, port: int, templates: list[list[Path]], plan: Plan, tally: Tally, work: Path,
              log_config: Path, run_start: float, stop: threading.Event) -> None:
    """Sender k: one fresh series every plan.period_s (staggered), until the run's end."""
    n = 0
    while not stop.is_set():
        due = run_start + (k / plan.senders + n) * plan.period_s
        if due > run_start + plan.seconds:
            return
        if stop.wait(max(0.0, due - time.time())):
            return
        if time.time() - due > plan.period_s:
            with tally.lock:
                tally.late_starts += 1
        series = fresh_series(templates[(k + n) % len(templates)], work / f"s{k}-{n}")
        files = {str(p): uid for p, uid in series}
        pending = dict(files)
        for _ in range(RESEND_TRIES):
            cmd = ["storescu", "-lc", str(log_config), "-aet", "PACS", "-aec", "SRNODE", "127.0.0.1", str(port),
                   *pending]
            done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "TCP_NODELAY": "1"})
            got = parse_storescu(done.stdout + done.stderr, pending, run_start, midnight_epoch())
            with tally.lock:
                tally.acked.update(got["acked"])
                tally.latencies.extend(got["latencies"])
                tally.refused_associations += int(got["refused"])
                tally.failed_runs += int(done.returncode != 0)
            pending = {path: uid for path, uid in pending.items() if uid not in set(got["acked"])}
            if not pending:
                break
            time.sleep(RESEND_AFTER_S)
        with tally.lock:
            tally.sent += len(files)
        shutil.rmtree(work / f"s{k}-{n}", ignore_errors=True)
        n += 1


class Collector:
    """Counts what storescp received (by SOP Instance UID) and removes the files, so the
    destination's disk stays flat however long the run."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir, self.received = out_dir, Counter[str]()

    def sweep(self, settle_s: float = SETTLE_S) -> None:
        now = time.time()
        for f in list(self.out_dir.iterdir()):
            try:
                if now - f.stat().st_mtime < settle_s:
                    continue
                uid = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
            except Exception:  # noqa: BLE001 - gone or unreadable: looked at again next sweep
                continue
            self.received[str(uid)] += 1
            f.unlink(missing_ok=True)


def proc_figures(pid: int) -> dict[str, int] | None:
    """RSS (kB) and open file descriptors of a process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]
        return {"pid": pid, "rss_kb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}
    except (OSError, TypeError):
        return None


def processes(node: Node) -> dict[str, Any]:
    assert node.proc is not None
    return {"node": proc_figures(node.proc.pid), "workers": [proc_figures(p) for p in node.worker_pids()]}


def disk_used(storage: Path, db: Path) -> int:
    """Bytes of the node's storage folder and index (database and WAL)."""
    total = sum(f.stat().st_size for f in db.parent.glob(db.name + "*") if f.is_file())
    for dirpath, _, names in os.walk(storage):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def latency_windows(latencies: list[tuple[float, float]], window_s: float) -> list[dict[str, Any]]:
    by_window: dict[int, list[float]] = {}
    for at, lat in latencies:
        by_window.setdefault(int(at // window_s), []).append(lat)
    return [{"window_start_s": round(w * window_s), "c_stores": len(v),
             "p50_ms": round(1000 * percentile(v, 50), 1), "p95_ms": round(1000 * percentile(v, 95), 1)}  # type: ignore[operator]
            for w, v in sorted(by_window.items())]


def growth(start: dict[str, Any] | None, end: dict[str, Any], key: str, unit: float = 1) -> dict[str, float | None]:
    """End minus start of `key` for the node and the (summed) workers; None where not measured."""
    def total(procs: dict[str, Any] | None, who: str) -> float | None:
        if procs is None:
            return None
        found = [procs["node"]] if who == "node" else procs["workers"]
        values = [p[key] for p in found if p]
        return sum(values) * unit if values else None

    out: dict[str, float | None] = {}
    for who in ("node", "workers"):
        a, b = total(start, who), total(end, who)
        out[who] = None if a is None or b is None else round(b - a, 1)
    return out


def soak_config(work: Path, dest: Destination, plan: Plan) -> dict[str, Any]:
    cfg = node_config(
        work, free_port(), dest,
        models={"bicubic": {"arch": "bicubic", "scale": SCALE}},
        series={"stable_after_s": 2, "check_interval_s": 0.5},
        send={"backoff_initial_s": 1, "backoff_max_s": max(2.0, plan.outage_s / 4)},
        housekeeping={"interval_h": max(60.0, plan.seconds / 6) / 3600},
    )
    cfg["node"]["min_free_disk_mb"] = 256
    if plan.quota_mb:
        cfg["retention"] = {"quota_mb": plan.quota_mb, "keep_after_delivery_h": 0,
                            "check_interval_s": max(2.0, min(10.0, plan.seconds / 60))}
    return cfg


def index_state(database_url: str) -> dict[str, Any]:
    """What the node's index holds now: SOP UIDs, unfinished work, recycling records."""
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as s:
            uids = set(s.scalars(select(Instance.sop_instance_uid)))
            pending = len(list(s.scalars(select(Outbox.id).where(Outbox.state == OutboxState.pending))))
            unfinished = len(list(s.scalars(select(Job.id).where(Job.state.in_((JobState.queued, JobState.running))))))
            recycles = [json.loads(d) for d in s.scalars(select(Audit.detail).where(Audit.action == "series.recycle"))]
    finally:
        engine.dispose()
    return {"uids": uids, "pending_outbox": pending, "unfinished_jobs": unfinished, "recycles": recycles}


def account(tally: Tally, received: Counter[str], index: dict[str, Any]) -> dict[str, Any]:
    """Where every acknowledged instance ended: still indexed, or delivered (derived) and recycled."""
    sha = builtin_digest("bicubic")
    derived = {uid: derived_sop_uid(uid, "bicubic", sha, SCALE) for uid in tally.acked}
    present = index["uids"]
    delivered = {u for u, d in derived.items() if d in received}
    lost = [u for u, d in derived.items() if u not in present and d not in received]
    # A derived instance neither delivered nor indexed (recycled before delivery, or never made).
    missing_derived = [d for d in derived.values() if d not in present and d not in received]
    recycled_records = index["recycles"]
    return {
        "instances_sent": tally.sent,
        "acknowledged": len(tally.acked),
        "derived": sum(1 for d in derived.values() if d in received or d in present),
        "delivered": len(delivered),
        "recycled_originals": sum(1 for u in tally.acked if u not in present),
        "recycled_derived": sum(1 for d in derived.values() if d in received and d not in present),
        "recycle_records": len(recycled_records),
        "recycled_bytes": sum(int(r.get("bytes", 0)) for r in recycled_records),
        "recycled_instances_by_records": sum(int(r.get("instances", 0)) for r in recycled_records),
        "still_present_originals": sum(1 for u in tally.acked if u in present),
        "lost": len(lost),
        "derived_missing": len(missing_derived),
        "lost_examples": lost[:5],
        "duplicates": sum(n - 1 for n in received.values() if n > 1),
        "unexpected_at_destination": len(set(received) - set(derived.values())),
        "associations_refused": tally.refused_associations,
        "storescu_failed_runs": tally.failed_runs,
        "late_series_starts": tally.late_starts,
        "pending_outbox_at_end": index["pending_outbox"],
        "unfinished_jobs_at_end": index["unfinished_jobs"],
    }


def plot(samples: list[tuple[float, int]], plan: Plan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([t / 60 for t, _ in samples], [b / 2**20 for _, b in samples], label="node storage + index")
    if plan.quota_mb:
        ax.axhline(plan.quota_mb, color="red", linestyle="--", label=f"quota {plan.quota_mb:g} MiB")
    for start in plan.outages():
        ax.axvspan(start / 60, (start + plan.outage_s) / 60, color="grey", alpha=0.3)
    ax.set_xlabel("minutes (grey: destination stopped)")
    ax.set_ylabel("MiB")
    ax.set_title(f"srnode soak: disk used ({plan.senders} senders, {plan.minutes:g} min)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(plan: Plan, out: Path, keep: bool) -> dict[str, Any]:
    """The whole soak; returns the figures (also written to out/soak.json)."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="srnode-soak-"))
    log_config = work / "storescu-log.cfg"
    log_config.write_text(STORESCU_LOG_CONFIG)
    per_series = plan.slices
    all_files = source_files(per_series)
    templates = [all_files[i:i + per_series] for i in range(0, len(all_files), per_series)]
    dest = Destination(work / "received")
    dest.start()
    cfg = soak_config(work, dest, plan)
    node = Node(write_config(work / "srnode.yaml", cfg), cfg, out / "node.log")
    collector, tally, stop = Collector(dest.out_dir), Tally(), threading.Event()
    storage, db = Path(cfg["node"]["storage_dir"]), Path(cfg["node"]["database_url"][len("sqlite:///"):])
    samples: list[tuple[float, int]] = []
    try:
        node.start()
        wait_until(node.worker_pids, 60, "the embedded worker", every_s=0.5)
        start_procs: dict[str, Any] | None = None  # taken once the first derived instance arrived (warm)
        run_start = time.time()
        threads = [threading.Thread(target=send_loop, args=(k, node.port, templates, plan, tally, work / "send",
                                                             log_config, run_start, stop), daemon=True)
                   for k in range(plan.senders)]
        for t in threads:
            t.start()
        outages, dest_down_until = list(plan.outages()), 0.0
        with tqdm(total=int(plan.seconds + plan.drain_s), unit="s", desc="soak") as bar:
            while True:
                elapsed = time.time() - run_start
                if outages and elapsed >= outages[0]:
                    outages.pop(0)
                    dest.stop()
                    dest_down_until = elapsed + plan.outage_s
                if dest_down_until and elapsed >= dest_down_until:
                    dest.start()
                    dest_down_until = 0.0
                collector.sweep()
                if start_procs is None and collector.received:
                    start_procs = processes(node)
                samples.append((elapsed, disk_used(storage, db)))
                senders_done = not any(t.is_alive() for t in threads)
                if senders_done and (elapsed > plan.seconds + plan.drain_s or drained(tally, collector, cfg)):
                    break
                with tally.lock:
                    bar.set_postfix(sent=tally.sent, acked=len(tally.acked), delivered=sum(collector.received.values()),
                                    disk_mb=round(samples[-1][1] / 2**20))
                bar.n = min(bar.total, int(elapsed))
                bar.refresh()
                time.sleep(2)
        time.sleep(SETTLE_S)
        collector.sweep(settle_s=0)
        end_procs = processes(node)
        figures = account(tally, collector.received, index_state(cfg["node"]["database_url"]))
    finally:
        stop.set()
        node.stop()
        dest.stop()
    figures.update({
        "command": " ".join([Path(sys.executable).name, "-m", "bench.soak", *sys.argv[1:]]),
        "plan": {"minutes": plan.minutes, "senders": plan.senders, "slices_per_series": plan.slices,
                 "period_s": plan.period_s, "quota_mb": plan.quota_mb, "scale": SCALE,
                 "window_s": plan.window_s, "outage_s": plan.outage_s, "outages_at_s": plan.outages()},
        # storescp has no C-FIND: an instance on the wire when it was stopped may come twice
        # (RELIABILITY.md), at most one per sending association per outage.
        "duplicates_allowed": len(plan.outages()) * cfg["send"].get("associations_per_destination", 2),
        "latency_windows": latency_windows(tally.latencies, plan.window_s),
        "processes_start": start_procs, "processes_end": end_procs,
        "rss_growth_mb": growth(start_procs, end_procs, "rss_kb", 1 / 1024),
        "fd_growth": growth(start_procs, end_procs, "fds"),
        "disk_used_mb": [(round(t, 1), round(b / 2**20, 1)) for t, b in samples],
        "disk_used_max_mb": round(max((b for _, b in samples), default=0) / 2**20, 1),
    })
    (out / "soak.json").write_text(json.dumps(figures, indent=2))
    plot(samples, plan, out / "disk.png")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def drained(tally: Tally, collector: Collector, cfg: dict[str, Any]) -> bool:
    """Every acknowledged instance's derived instance arrived, and the node has nothing pending."""
    sha = builtin_digest("bicubic")
    with tally.lock:
        expected = {derived_sop_uid(u, "bicubic", sha, SCALE) for u in tally.acked}
    if not expected <= set(collector.received):
        return False
    state = index_state(cfg["node"]["database_url"])
    return state["pending_outbox"] == 0 and state["unfinished_jobs"] == 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30, help="sending time (default 30); then the node drains")
    p.add_argument("--senders", type=int, default=3, help="parallel storescu senders (default 3)")
    p.add_argument("--slices", type=int, default=8, help="slices per series (default 8)")
    p.add_argument("--period-s", type=float, default=30, help="each sender starts a series this often (default 30)")
    p.add_argument("--quota-mb", type=float, default=300,
                   help="retention.quota_mb (default 300, well below what is sent); 0 = no retention section")
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke run: 2 senders, 4 slices, 10 s period, "
                   "quota 60 MiB")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "soak_results",
                   help="soak.json, disk.png, node.log")
    p.add_argument("--keep", action="store_true", help="keep the node's work folder (printed)")
    args = p.parse_args(argv)
    if args.quick:
        args.senders, args.slices, args.period_s, args.quota_mb = 2, 4, 10, 60
    plan = Plan(minutes=args.minutes, senders=args.senders, slices=args.slices, period_s=args.period_s,
                quota_mb=args.quota_mb, drain_s=max(60.0, args.minutes * 6))
    figures = run(plan, args.out, args.keep)
    summary = {k: v for k, v in figures.items() if not isinstance(v, (list, dict))}
    print(json.dumps(summary, indent=2))
    return 0 if figures["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
