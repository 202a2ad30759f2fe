"""Query/Retrieve benchmark: C-FIND latency (100k instances) and C-MOVE throughput (300 CT slices).

Usage (from the repository root):

    .venv/bin/python -m bench.qr.bench_qr --out bench/qr/results

`--only move` (or `find`) runs one half and writes results-move.* instead. Writes results.json,
qr_bench.png and a Markdown table (printed, and results.md) next to it.
References run in the same process run: Orthanc for C-FIND, DCMTK dcmqrscp for C-MOVE, both with
TCP_NODELAY=1 in their environment.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.qr.find_bench import Timing, run_find_bench  # noqa: E402
from bench.qr.move_bench import MoveResult, run_move_bench  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _shared_ct() -> list[Path]:
    shared = Path(os.environ.get("SRNODE_SHARED_DIR", REPO.parent / "shared"))
    return sorted(p for p in (shared / "data" / "ct").iterdir() if p.is_dir())


def markdown(finds: list[Timing], moves: list[MoveResult], instances: int) -> str:
    """The results as the tables for BENCHMARKS.md."""
    return "\n\n".join(part for part in (_find_table(finds, instances), _move_table(moves)) if part)


def _find_table(finds: list[Timing], instances: int) -> str:
    if not finds:
        return ""
    lines = [f"C-FIND latency, index of {instances} instances (ms per query, request to final response):", "",
             "| query | results | srnode median | srnode p95 | Orthanc median | Orthanc p95 |",
             "|---|---|---|---|---|---|"]
    by_query: dict[str, dict[str, Timing]] = {}
    for t in finds:
        by_query.setdefault(t.query, {})[t.server] = t
    for query, per in by_query.items():
        s, o = per["srnode"], per["Orthanc"]
        lines.append(f"| {query} | {s.results} | {s.median:.1f} | {s.p95:.1f} | {o.median:.1f} | {o.p95:.1f} |")
    return "\n".join(lines)


def _move_table(moves: list[MoveResult]) -> str:
    if not moves:
        return ""
    lines = [f"C-MOVE of one {moves[0].instances}-instance CT series (512x512, ~0.5 MB each) to DCMTK "
              "storescp --ignore, requested by movescu:", "",
              "| archive | runs (s) | median rate (instances/s) |", "|---|---|---|"]
    for m in moves:
        lines.append(f"| {m.archive} | {', '.join(f'{x:.2f}' for x in m.seconds)} | {m.rate:.0f} |")
    ratio = moves[0].rate / moves[1].rate
    lines += ["", f"srnode / dcmqrscp C-MOVE rate: {100 * ratio:.0f}%"]
    return "\n".join(lines)


def plot(finds: list[Timing], moves: list[MoveResult], path: Path) -> None:
    """Bar charts: C-FIND median latency per query, C-MOVE rate per archive."""
    if not finds or not moves:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    queries = list(dict.fromkeys(t.query for t in finds))
    width = 0.38
    for i, server in enumerate(["srnode", "Orthanc"]):
        values = [next(t.median for t in finds if t.query == q and t.server == server) for q in queries]
        ax1.bar([x + (i - 0.5) * width for x in range(len(queries))], values, width, label=server)
    ax1.axhline(100, color="red", linestyle="--", linewidth=1, label="goal (SERIES level): 100 ms")
    ax1.set_xticks(range(len(queries)), [q.replace(" (", "\n(").replace(" + ", "\n+ ") for q in queries], fontsize=7)
    ax1.set_ylabel("median C-FIND latency (ms)")
    ax1.legend()
    ax2.bar([m.archive for m in moves], [m.rate for m in moves], color=["tab:blue", "tab:green"])
    ax2.set_ylabel("C-MOVE rate (instances/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "qr" / "results")
    parser.add_argument("--patients", type=int, default=500, help="x 2 studies x 4 series x --per-series")
    parser.add_argument("--per-series", type=int, default=25)
    parser.add_argument("--find-repeats", type=int, default=20)
    parser.add_argument("--move-instances", type=int, default=300)
    parser.add_argument("--move-repeats", type=int, default=7)
    parser.add_argument("--only", choices=["find", "move"], help="run one of the two (results-<name>.*)")
    parser.add_argument("--dul-responses", action="store_true",
                        help="for comparison: wait for C-STORE-RSPs through pynetdicom's DUL thread")
    args = parser.parse_args()
    if args.dul_responses:
        from dicom_node.dimse import pynetdicom_adapter

        pynetdicom_adapter.read_on_caller_thread = lambda assoc: None
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    instances = args.patients * 8 * args.per_series
    # Results are written before the temporary directory (100k Orthanc files) is removed.
    with tempfile.TemporaryDirectory(prefix="srnode-qr-bench-") as tmp:
        finds = [] if args.only == "move" else run_find_bench(
            Path(tmp) / "find", args.patients, args.per_series, args.find_repeats)
        moves = [] if args.only == "find" else run_move_bench(
            Path(tmp) / "move", _shared_ct(), args.move_instances, args.move_repeats)
        write_results(args.out, args.only, finds, moves, instances)


def write_results(out: Path, only: str | None, finds: list[Timing], moves: list[MoveResult], instances: int) -> None:
    """results[-only].md/.json and (full runs) qr_bench.png under `out`; the table is printed too."""
    table = markdown(finds, moves, instances)
    print(table)
    stem = f"results-{only}" if only else "results"
    (out / f"{stem}.md").write_text(table + "\n")
    (out / f"{stem}.json").write_text(json.dumps({
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "find": [{"server": t.server, "query": t.query, "results": t.results, "ms": t.ms} for t in finds],
        "move": [{"archive": m.archive, "seconds": m.seconds, "instances": m.instances} for m in moves],
    }, indent=1))
    if only == "move" and (out / "results.json").exists():  # replot with the full run's C-FIND figures
        saved = json.loads((out / "results.json").read_text())
        finds = [Timing(f["server"], f["query"], f["results"], f["ms"]) for f in saved["find"]]
    plot(finds, moves, out / "qr_bench.png")


if __name__ == "__main__":
    main()
