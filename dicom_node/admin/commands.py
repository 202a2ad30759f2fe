"""`srnode db upgrade`: apply index migrations as a separate step (init containers, ExecStartPre).

`srnode serve` and `srnode worker` also migrate on start; running this first means several
processes starting together never race to create the same tables.
"""
from __future__ import annotations

import argparse

from config.loader import load_config


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Bring the index database named in the config to the newest revision."""
    from dicom_node.index.migrate import upgrade

    cfg = load_config(args.config)
    upgrade(cfg.node.database_url)
    print("index database is at the newest revision")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `db upgrade`."""
    db = subparsers.add_parser("db", help="index database tools")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="apply pending index migrations (also done by serve/worker on start)")
    up.add_argument("--config", required=True, help="YAML configuration file")
    up.set_defaults(func=cmd_db_upgrade)
