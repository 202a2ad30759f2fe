"""`srnode reader-study list|results`: the studies and their results from the index, for scripts
and reports without the console (the same numbers and exports as the results page)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from config.loader import ConfigError, load_config


def _sessions(config: str) -> sessionmaker[Session]:
    from dicom_node.index.db import make_engine, session_factory

    cfg = load_config(config)
    return session_factory(make_engine(cfg.node.database_url))


def cmd_list(args: argparse.Namespace) -> int:
    """Print one line per study: id, state, cases, answers per reader, name."""
    from dicom_node.reader_study.service import study_summary

    studies = study_summary(_sessions(args.config))
    for s in studies:
        answers = " ".join(f"{r}:{n}/{s['cases']}" for r, n in s["answers_per_reader"].items())
        print(f"{s['id']:>4}  {s['state']:<9} {s['cases']:>4} cases  {answers}  {s['name']}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """Print the Table 5 style table (or JSON) and write the CSV/PNG/answers exports asked for."""
    from dicom_node.reader_study import export
    from dicom_node.reader_study.records import StudyError
    from dicom_node.reader_study.results import answer_rows, results

    try:
        sessions = _sessions(args.config)
        res = results(sessions, args.study)
        rows = answer_rows(sessions, args.study) if args.answers else []
    except (ConfigError, StudyError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"study {res['study']}: {res['name']} ({res['state']}, {res['readers']} readers), {res['metric']}")
        head = "model".ljust(24) + "".join(f"{s.replace('to', '->'):>30}" for s in res["scales"]) + "   place"
        print(head)
        for row in res["table"]:
            cells = []
            for s in res["scales"]:
                c = row[s]
                v = "-" if c["value"] is None else f"{c['value']:.2f}"
                ci = "" if c["ci"][0] is None else f" ({c['ci'][0]:.2f}-{c['ci'][1]:.2f})"
                q = "" if c["psnr_db"] is None else f" {c['psnr_db']:.1f}dB"
                cells.append(f"{v + ci + q:>30}")
            print(row["model"].ljust(24) + "".join(cells) + f"   {row['overall']['place'] or '-'}")
    for path, data in ((args.csv, lambda: export.results_csv(res).encode()), (args.png, lambda: export.results_png(res)),
                       (args.answers, lambda: export.answers_csv(rows).encode())):
        if path:
            Path(path).write_bytes(data())
            print(f"wrote {path}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `reader-study list` and `reader-study results`."""
    rs = subparsers.add_parser("reader-study", help="reader studies: list, results and exports")
    sub = rs.add_subparsers(dest="reader_study_command", metavar="ACTION")
    ls = sub.add_parser("list", help="studies with state and answers per reader")
    ls.add_argument("--config", required=True, help="YAML configuration file")
    ls.set_defaults(func=cmd_list)
    res = sub.add_parser("results", help="mean ranks with 95%% CIs, Kendall's W, PSNR/SSIM; CSV/PNG exports")
    res.add_argument("study", type=int, help="study id")
    res.add_argument("--config", required=True, help="YAML configuration file")
    res.add_argument("--csv", help="write the results table as CSV here")
    res.add_argument("--png", help="write the chart as PNG here")
    res.add_argument("--answers", help="write every submission (audit) as CSV here")
    res.add_argument("--json", action="store_true", help="print the full results as JSON")
    res.set_defaults(func=cmd_results)
