"""Running a parsed command line: the one place that turns a bad config file into one message."""
from __future__ import annotations

import argparse
import importlib
import sys

from config.loader import ConfigError


def run_command(args: argparse.Namespace) -> int:
    """Run `args.func`; a bad config file is one message on stderr and exit 1.

    `func` may be a "module:function" string, imported only when the command runs: a package low
    in the import graph (the SR engine's `models add`) can name a command of a package above it
    (training) without importing it.
    """
    func = args.func
    if isinstance(func, str):
        module, _, name = func.partition(":")
        func = getattr(importlib.import_module(module), name)
    try:
        return int(func(args) or 0)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1


def run_parsed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the parsed subcommand; without one, print the help and return 2."""
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args)
