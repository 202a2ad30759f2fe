"""`srnode` command line: every package's subcommands, listed here in help order.

Each owning module contributes its subcommands through `register(subparsers)`, which sets `func`
on its parsers. Registering must stay cheap (`srnode --help` and `srnode serve` never pay for
importing torch): command modules import their heavy parts inside the command.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.command_runner import run_parsed
from dicom_node import commands as node_commands
from dicom_node import demo
from dicom_node.admin import commands as admin_commands
from dicom_node.derive import sr_command
from dicom_node.reader_study import cli as reader_study_cli
from dicom_node.retention import cli as retention_cli
from sr_engine import cli as sr_engine_cli
from training import cli as training_cli
from workers import cli as worker_cli

if TYPE_CHECKING:
    from config.schema import SRNodeConfig

Register = Callable[[Any], None]

COMMANDS: list[Register] = [
    node_commands.register,  # serve, config check
    sr_engine_cli.register,  # models list/add, evaluate
    sr_command.register,  # sr (upscaled DICOM files: the engine plus the derive writer)
    training_cli.register,  # train, export-model, compare
    worker_cli.register,  # worker
    demo.register,  # demo
    admin_commands.register,  # db upgrade
    reader_study_cli.register,  # reader-study list/results
    retention_cli.register,  # storage status/purge
]


def load_node_config(path: str | Path) -> SRNodeConfig:
    """Read a node YAML (imported on use: `srnode --help` stays cheap)."""
    from config.loader import load_config

    return load_config(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srnode", description="DICOM super-resolution node")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # Commands of packages below config (the SR engine's `--config`) read the YAML through this.
    parser.set_defaults(load_config=load_node_config)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # Libraries' INFO chatter (Alembic's plugin set-up, pynetdicom's PDU traces) hides srnode's own lines.
        for name in ("alembic", "pynetdicom"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return run_parsed(parser, args)


if __name__ == "__main__":
    sys.exit(main())
