"""CPU throughput of the worker's per-slice path on a full CT series (issue 15, item 4).

A series of `--slices` real 512² CT slices (the shared CT folders, repeated, with one new series
identity) is stored and indexed as received (dicom_node.ingest) on a real SQLite index, routed to
the model, and run by the worker's own job runner, in process: `workers.process.run_job` reads each
slice, maps HU to the model's range, infers, clamps, derives (highdicom), runs the noise guard,
encodes (`output.transfer_syntax`), stores, indexes and queues it for one destination (no network:
nothing sends). The worker records `job.timings` (load_model, read, infer, write = the time the
loop waited for its writer thread, write_busy = the time that thread worked); this bench also
times the parts (forward passes, intensity mapping, derive, noise guard, encode, store) by
wrapping the functions the worker calls, and the peak RSS of the job.

Reported: slices/s, seconds per slice, each stage's share of the job's wall time, and the
300-slice estimate (model load + 300 × the measured seconds per slice; run with --slices 300 to
measure it instead). Goal: 300 slices x4 in under 15 min on 2 cores, nothing but inference
above 10 %.

    .venv/bin/python -m bench.sr.throughput --slices 100 --json bench/sr/results/throughput_100.json
    .venv/bin/python -m bench.sr.throughput --slices 300 --json bench/sr/results/throughput_300.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.sr.common import CT_ROOT, build_series, markdown_table, model_dir_arg, model_entries, write_results  # noqa: E402


class StageClock:
    """Seconds per named part, summed over calls from any thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Replace owner.attr by a timed call of it (module function or class method)."""
        inner: Callable[..., Any] = getattr(owner, attr)

        def timed(*a: Any, **kw: Any) -> Any:
            with self.part(name):
                return inner(*a, **kw)

        setattr(owner, attr, timed)


def _instrument(clock: StageClock) -> None:
    """Time the parts the worker calls (the worker's code itself is unchanged)."""
    import dicom_node.ingest.batch as ingest_batch
    import workers.process as process
    from sr_engine.intensity import IntensityMapping
    from sr_engine.upscale import Upscaler
    from workers.noise_guard import NoiseGuard

    clock.wrap(IntensityMapping, "to_unit", "infer: HU → [0, 1]")
    clock.wrap(IntensityMapping, "from_unit", "infer: [0, 1] → HU")
    clock.wrap(Upscaler, "_run", "infer: forward (+ clamp)")
    clock.wrap(process, "derive_classic", "writer: derive (highdicom)")
    clock.wrap(NoiseGuard, "check", "writer: noise guard")
    clock.wrap(process, "encode", "writer: encode")
    clock.wrap(process, "store_datasets", "writer: store + index + outbox")
    clock.wrap(ingest_batch, "encode_part10", "writer: store: Part 10 bytes")  # as store_datasets calls it


def _peak_sampler(stop: threading.Event, out: dict[str, int]) -> None:
    from sr_engine.memory import rss_bytes

    while not stop.wait(0.2):
        out["peak"] = max(out.get("peak", 0), rss_bytes())


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pydicom
    import torch

    from config.loader import parse_config
    from dicom_node.index.db import make_engine, session_factory
    from dicom_node.index.migrate import upgrade
    from dicom_node.index.models import Job, Series, SeriesState
    from dicom_node.ingest import store_dataset
    from dicom_node.pipeline import route_series
    from sr_engine.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from workers import model_cache
    from workers.device import limit_cpu_threads
    from workers.process import run_job

    limit_cpu_threads("cpu", args.threads)  # the worker's default: cores − 1 (the writer gets a core)
    work = Path(tempfile.mkdtemp(prefix="srnode-throughput-", dir=args.work_dir))
    try:
        name, entry = next(iter(model_entries(args.model_dir).items()))
        worker: dict[str, Any] = {"batch_size": args.batch}
        if args.max_memory_mb:
            worker["max_memory_mb"] = args.max_memory_mb
        cfg = parse_config({
            "node": {"storage_dir": str(work / "storage"), "database_url": f"sqlite:///{work / 'index.db'}"},
            "peers": {"PACS": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
            "models": {name: entry},
            "routing": [{"match": {"modality": "CT"}, "model": name, "destinations": ["PACS"]}],
            "output": {"transfer_syntax": args.transfer_syntax} if args.transfer_syntax else {},
            "worker": worker,
        }, environ={})
        engine = make_engine(cfg.node.database_url)
        upgrade(cfg.node.database_url, engine)
        factory = session_factory(engine)
        files = build_series(work / "series", args.slices, size=args.size, roots=[args.ct_root])
        for f in files:
            result = store_dataset(factory, Path(cfg.node.storage_dir), pydicom.dcmread(f), sender_ae="SCANNER")
        with factory() as s:
            series = s.get(Series, result.series_pk)
            assert series is not None
            series.state = SeriesState.stable
            s.commit()
        shutil.rmtree(work / "series")
        (job_id,) = route_series(cfg, factory, result.series_pk)
        model_cache.clear()
        clock = StageClock()
        _instrument(clock)
        memory: dict[str, int] = {}
        reset_peak_rss()
        start_rss = rss_bytes()
        stop = threading.Event()
        sampler = threading.Thread(target=_peak_sampler, args=(stop, memory), daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        state = run_job(cfg, factory, job_id, "cpu", "bench")
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        with factory() as s:
            job = s.get(Job, job_id)
            assert job is not None
            timings = json.loads(job.timings or "{}")
            derived = job.progress_done
        engine.dispose()
        stored_mb = sum(p.stat().st_size for p in (work / "storage").rglob("*") if p.is_file()) / 1e6
        return {
            "state": state, "slices": args.slices, "derived": derived, "size": args.size, "wall_s": wall,
            "torch_threads": torch.get_num_threads(), "cores": os.cpu_count(), "timings": timings,
            "parts": dict(clock.seconds), "calls": dict(clock.calls), "peak_rss_mb": peak_rss_bytes() / (1 << 20),
            "start_rss_mb": start_rss / (1 << 20), "stored_mb_total": stored_mb, "model": name,
            "model_dir": str(args.model_dir), "transfer_syntax": cfg.output.transfer_syntax,
            "max_memory_mb": cfg.worker.max_memory_mb or model_cache.memory_budget_mb(cfg),
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(doc: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """The stage table (share of the job's wall time) and the summary figures."""
    wall, n, t, parts = doc["wall_s"], max(1, doc["derived"]), doc["timings"], doc["parts"]
    load = t.get("load_model", 0.0)
    per_slice = (wall - load) / n
    rows: list[tuple[str, float, str]] = [
        ("load model (once per worker process; preloaded at start-up)", load, "main"),
        ("read (dcmread + decode + HU)", t.get("read", 0.0), "main"),
        ("infer (map, forward passes, clamp, map back)", t.get("infer", 0.0), "main"),
        ("write: waiting for the writer thread", t.get("write", 0.0), "main"),
    ]
    accounted = sum(v for _, v, _ in rows)
    rows.append(("other (routing the chunks, progress, bar)", max(0.0, wall - accounted), "main"))
    rows += [(k, v, "part") for k, v in sorted(parts.items()) if k.startswith("infer:")]
    rows.append(("writer thread busy (overlaps inference)", t.get("write_busy", 0.0), "writer"))
    rows += [(k, v, "part") for k, v in sorted(parts.items()) if k.startswith("writer:")]
    table = markdown_table(
        ["stage", "s", "% of wall", "s per slice"],
        [[("&nbsp;&nbsp;" if kind == "part" else "") + label, f"{v:.2f}", f"{100 * v / wall:.1f}", f"{v / n:.3f}"]
         for label, v, kind in rows])
    summary = {"slices_per_s": n / wall, "s_per_slice": per_slice, "estimate_300_s": load + 300 * per_slice}
    return table, summary


def plot(docs: list[dict[str, Any]], path: Path) -> None:
    """Horizontal bars: each main-loop stage's share of the job's wall time, one bar group per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [("infer", "infer"), ("read", "read"), ("write", "write wait"), ("load_model", "load model")]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.9 * len(docs)))
    for i, doc in enumerate(docs):
        left = 0.0
        for j, (key, label) in enumerate(stages):
            share = 100 * doc["timings"].get(key, 0.0) / doc["wall_s"]
            ax.barh(i, share, left=left, color=f"C{j}", label=label if i == 0 else None)
            left += share
        ax.barh(i, 100 - left, left=left, color="lightgrey", label="other" if i == 0 else None)
        busy = 100 * doc["timings"].get("write_busy", 0.0) / doc["wall_s"]
        ax.plot([busy, busy], [i - 0.4, i + 0.4], color="black", linewidth=2,
                label="writer thread busy (overlapped)" if i == 0 else None)
    ax.set_yticks(range(len(docs)), [f"{d['derived']} slices, {d['torch_threads']} thr, {d['transfer_syntax']}\n"
                                     f"{d['slices_per_s']:.2f} slices/s" for d in docs], fontsize=8)
    ax.axvline(10, color="red", linestyle=":", linewidth=1)
    ax.set_xlabel("% of the job's wall time (red: the 10 % line)")
    ax.set_xlim(0, 100)
    ax.legend(fontsize=7, loc="lower right", ncol=3)
    side = docs[0]["size"] or 512
    ax.set_title(f"{docs[0]['model']} x4, {side}² → {4 * side}², worker path on {docs[0]['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=model_dir_arg, default="compact",
                   help="model folder with registry.yaml, or `compact` (default; untrained weights until "
                        "models/ct-compact exists) or `rrdb6`")
    p.add_argument("--slices", type=int, default=100)
    p.add_argument("--size", type=int, default=None, help="resample the slices to size² (default: 512² as stored)")
    p.add_argument("--batch", type=int, default=4, help="worker.batch_size")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the worker's, cores − 1)")
    p.add_argument("--transfer-syntax", default=None, help="output.transfer_syntax (default: the node's default)")
    p.add_argument("--max-memory-mb", type=int, default=None, help="worker.max_memory_mb (default: the node's)")
    p.add_argument("--ct-root", type=Path, default=CT_ROOT, help="folder(s) of real CT slices")
    p.add_argument("--work-dir", type=Path, default=None, help="where the index and storage go (a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", type=Path, default=None, help="write the results here (and a .md beside it)")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG of the stage shares; with --plot-from, of those result files instead of a run")
    p.add_argument("--plot-from", nargs="+", type=Path, default=None, help="JSON results of earlier runs to plot")
    p.add_argument("--smoke", action="store_true", help="4 slices at 64²: a quick check that it runs")
    args = p.parse_args(argv)
    if args.plot_from:
        plot([json.loads(f.read_text(encoding="utf-8")) for f in args.plot_from], args.plot or Path("throughput.png"))
        return 0
    if args.smoke:
        args.slices, args.size = 4, 64
    doc = run(args)
    table, summary = report(doc)
    doc.update(summary)
    head = (f"{doc['model']} x4, {doc['derived']} of {doc['slices']} slices {args.size or 512}², "
            f"{doc['torch_threads']} torch thread(s) on {doc['cores']} cores, {doc['transfer_syntax']}: "
            f"{doc['wall_s']:.1f} s, {summary['slices_per_s']:.3f} slices/s, {summary['s_per_slice']:.2f} s per slice; "
            f"300 slices ≈ {summary['estimate_300_s'] / 60:.1f} min; peak RSS {doc['peak_rss_mb']:.0f} MiB "
            f"(budget {doc['max_memory_mb']} MiB)")
    print(head)
    print(table)
    if args.json:
        doc["command"] = " ".join(["python -m bench.sr.throughput", *(argv if argv is not None else sys.argv[1:])])
        doc["machine"] = platform.processor() or platform.machine()
        write_results(args.json, doc, head + "\n\n" + table)
    if args.plot:
        plot([doc], args.plot)
    return 0 if doc["state"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
