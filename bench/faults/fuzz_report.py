"""Fuzz report: the seeded mutation corpus of a real CT against `srnode serve`, as a table.

Usage (from the repository root):

    .venv/bin/python -m bench.faults.fuzz_report --variants 300 [--seed 14] [--out DIR]

Sends the corpus (bench/faults/fuzz_corpus.py) over DIMSE beside a valid real CT series and
prints tried / acknowledged / refused by status / stored / lost / crashes / PHI hits; the figures
are also written to DIR/fuzz_figures.json. Exit status 1 if anything acknowledged was lost, the
node died, a predicted status differed, or the patient's name or ID appeared in its output.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # also runnable as `python bench/faults/fuzz_report.py`

from bench.faults.fuzz_run import run_fuzz  # noqa: E402


def _shared_ct() -> Path:
    return Path(os.environ.get("SRNODE_SHARED_DIR", REPO.parent / "shared")) / "data" / "ct"


def table(figures: dict[str, Any]) -> str:
    """The figures as a Markdown table (for RELIABILITY.md / BENCHMARKS.md)."""
    par = figures["parallel"]
    rows = [
        ("variants tried", figures["tried"]),
        ("acknowledged (0x0000)", figures["acknowledged"]),
        *((f"refused {status}", n) for status, n in figures["refused_by_status"].items()),
        ("no response", figures["no_response"]),
        ("stored and indexed", figures["stored"]),
        ("lost (acknowledged, not stored)", len(figures["lost"])),
        ("refused but kept", len(figures["refused_but_indexed"]) + len(figures["refused_but_on_disk"])),
        ("predicted status missed", len(figures["unexpected_status"])),
        ("parallel series: sent / acknowledged / stored", f"{par['sent']} / {par['acknowledged']} / {par['stored']}"),
        ("refusal log lines", figures["refusal_log_lines"]),
        ("tracebacks", figures["tracebacks"]),
        ("node crashes", figures["crashes"]),
        ("patient name/ID hits in node output", sum(figures["phi_hits"].values())),
        ("run time (s)", figures["elapsed_s"]),
    ]
    return "\n".join(["| | |", "|---|---:|", *(f"| {name} | {value} |" for name, value in rows)])


def failed(figures: dict[str, Any]) -> bool:
    return bool(figures["lost"] or figures["crashes"] or figures["unexpected_status"] or figures["phi_hits"]
                or figures["refused_but_indexed"] or figures["refused_but_on_disk"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=300, help="corpus size (default 300)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", type=Path, default=None, help="keep corpus, node output and figures here")
    args = parser.parse_args(argv)
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # the sender's side of what we break
    ct = _shared_ct()
    source = sorted((ct / "lung-pet-ct-dx_Lung_Dx-A0002_chest").glob("*.dcm"))[0]
    parallel = sorted((ct / "cptac-lscc_C3N-00247_chest").glob("*.dcm"))
    with tempfile.TemporaryDirectory(prefix="srnode-fuzz-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        figures = run_fuzz(out, source, parallel, n=args.variants, seed=args.seed)
    print(table(figures))
    for line in figures["unexpected_status"] + [f"PHI: {k} x{v}" for k, v in figures["phi_hits"].items()]:
        print(line)
    return 1 if failed(figures) else 0


if __name__ == "__main__":
    sys.exit(main())
