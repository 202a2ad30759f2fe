"""`srnode demo`: the whole pipeline on one machine, on a small real CT series (no network)."""
from __future__ import annotations

import argparse


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the end-to-end demo."""
    from dicom_node.demo_run import run_demo

    return run_demo(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `srnode demo`."""
    p = subparsers.add_parser("demo", help="end-to-end demo: node + worker + destination on a small real CT")
    p.add_argument("--out", default="var/demo", help="working folder (storage, index, PNG)")
    p.add_argument("--model", default=None, help="model name (default: the shipped CT checkpoint, else bicubic)")
    p.add_argument("--slices", type=int, default=8, help="slices to send")
    p.set_defaults(func=cmd_demo)
