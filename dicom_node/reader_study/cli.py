"""`srnode reader-study list|results|create`: the studies and their results from the index, for
scripts and reports without the console (the same numbers and exports as the results page), and
studies created from a preset (`definition.STUDY_PRESETS`)."""
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


def _one_line(exc: Exception) -> str:
    """A definition error as `key: message` (pydantic's own text spans several lines)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        return f"{key + ': ' if key else ''}{err['msg'].removeprefix('Value error, ')}"
    return str(exc)


def cmd_create(args: argparse.Namespace) -> int:
    """Create a study from a preset and compute its candidates here, so it opens for the readers."""
    from dicom_node.index.db import make_engine, session_factory
    from dicom_node.index.live_config import LiveConfig
    from dicom_node.reader_study.definition import (
        configured_networks,
        preset_definition,
    )
    from dicom_node.reader_study.records import StudyError, reader_accounts
    from dicom_node.reader_study.service import (
        compute_candidates,
        create_study,
        mark_computing,
        study_summary,
    )

    try:
        base = load_config(args.config)
        sessions = session_factory(make_engine(base.node.database_url))
        # The node's effective configuration: models an admin added in the console count too.
        cfg = LiveConfig(base, sessions, ttl_s=0.0).current()
        definition = preset_definition(
            args.preset, readers=args.readers or reader_accounts(cfg),
            models=args.models or configured_networks(cfg.models), name=args.name, count=args.count,
            seed=args.seed, series_uids=args.series or (), slices=args.slices or (),
            modality=args.modality, crop=args.crop, window=args.window)
        if args.dry_run:
            print(definition.model_dump_json(indent=2))
            return 0
        study_id = create_study(sessions, cfg, definition, actor="cli")
    except (ConfigError, StudyError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        print(f"reader-study create: {_one_line(exc)}", file=sys.stderr)
        return 1
    print(f"study {study_id} created: {', '.join(definition.models)}; {len(definition.readers)} reader(s)",
          file=sys.stderr)
    if args.no_compute:
        print(f"study {study_id} is a draft: POST /api/reader-studies/{study_id}/start computes its candidates",
              file=sys.stderr)
        return 0
    mark_computing(sessions, study_id)
    compute_candidates(sessions, cfg, study_id)  # records a failure in the study's state
    study = study_summary(sessions, study_id)[0]
    if study["state"] != "open":
        print(f"study {study_id} {study['state']}: {study['error']}", file=sys.stderr)
        return 1
    print(f"study {study_id} open: {study['cases']} cases x {len(definition.models)} candidates; "
          "readers answer at /reading.html")
    return 0


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
    for path, data in ((args.csv, lambda: export.results_csv(res).encode()),
                       (args.png, lambda: export.results_png(res)),
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
    from dicom_node.reader_study.definition import STUDY_PRESETS, WINDOWS

    cr = sub.add_parser("create", help="create a study from a preset and compute its candidates",
                        description="; ".join(f"{p.name}: {p.description}" for p in STUDY_PRESETS.values()))
    cr.add_argument("--config", required=True, help="YAML configuration file")
    cr.add_argument("--preset", required=True, choices=list(STUDY_PRESETS))
    cr.add_argument("--readers", nargs="+", help="reader fingerprints (default: every reader account)")
    cr.add_argument("--models", nargs="+",
                    help="networks beside the preset's baselines (default: every configured x4 network)")
    cr.add_argument("--count", type=int, default=20, help="slices drawn at random (seeded)")
    cr.add_argument("--seed", type=int, default=0)
    cr.add_argument("--series", nargs="+", help="draw only from these Series Instance UIDs")
    cr.add_argument("--slices", nargs="+", help="these SOP Instance UIDs instead of a random draw")
    cr.add_argument("--modality", default="CT")
    cr.add_argument("--crop", type=int, help="centred square of each slice (multiple of 4; default whole)")
    cr.add_argument("--window", choices=list(WINDOWS), help="initial display window (default: the preset's)")
    cr.add_argument("--name", help="shown to readers: no model names")
    cr.add_argument("--dry-run", action="store_true", help="print the definition (JSON for the API); create nothing")
    cr.add_argument("--no-compute", action="store_true", help="create it as a draft; compute later")
    cr.set_defaults(func=cmd_create)
