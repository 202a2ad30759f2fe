"""`srnode` command line.

Each owning module contributes its subcommands through a `register(subparsers)` function that
sets `func` on its parser; this file only assembles them (one registry, no if/elif). `func` may be
a "module:function" string, imported only when that command runs: registering must stay cheap, so
that `srnode serve` or `srnode --help` never pays for importing torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config.schema import SRNodeConfig

# Modules that contribute subcommands, in help order. Each defines
#   register(subparsers: argparse._SubParsersAction) -> None
COMMAND_MODULES: list[str] = [
    "dicom_node.commands",  # serve, config check
    "sr_engine.cli",  # models list/add, evaluate
    "dicom_node.derive.sr_command",  # sr (upscaled DICOM files: the engine plus the derive writer)
    "training.cli",  # train, export-model, compare
    "workers.cli",  # worker
    "dicom_node.demo",  # demo
    "dicom_node.admin.commands",  # db upgrade
    "dicom_node.reader_study.cli",  # reader-study list/results
    "dicom_node.retention.cli",  # storage status/purge
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
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run `args.func` (a function or a lazy "module:function"); a bad config file is one message, exit 1."""
    from config.loader import ConfigError

    func = args.func
    if isinstance(func, str):
        module, _, name = func.partition(":")
        func = getattr(importlib.import_module(module), name)
    try:
        return int(func(args) or 0)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
