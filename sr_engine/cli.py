"""The `models` and `evaluate` subcommands: argument parsing only.

The commands themselves live in sr_engine/commands.py and are imported only when one runs (the
two small functions below), so `srnode --help` (and every other subcommand) starts without
importing torch. `srnode sr` writes
DICOM, so it is the node's (dicom_node.derive.sr_command), with these model options.
"""
from __future__ import annotations

import argparse


def _model_options(p: argparse.ArgumentParser, repeat_model: bool = False) -> None:
    if repeat_model:  # evaluate --native compares several models against lanczos in one run
        p.add_argument("--model", required=True, action="append",
                       help="registry name (bicubic, lanczos, realesrgan, ...); repeat with --native")
    else:
        p.add_argument("--model", required=True, help="registry name (bicubic, lanczos, realesrgan, ...)")
    p.add_argument("--weights", help="checkpoint file (.pth/.safetensors); overrides the config's")
    p.add_argument("--sha256", help="expected sha256 of --weights; a mismatch is refused")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the model's, 4)")
    p.add_argument("--config", help="srnode YAML, for the models: section")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--tile", type=int, default=256, help="LR tile size in pixels (0: untiled)")
    p.add_argument("--overlap", type=int, default=16, help="LR tile overlap in pixels")
    p.add_argument("--batch", type=int, default=4, help="slices per batch")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU; bf16 on CPU is faster where supported")


def _models_list(args: argparse.Namespace) -> int:
    from sr_engine.commands import cmd_models_list  # imports torch: only when the command runs

    return cmd_models_list(args)


def _evaluate(args: argparse.Namespace) -> int:
    from sr_engine.commands import cmd_evaluate  # imports torch: only when the command runs

    return cmd_evaluate(args)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `models` and `evaluate` to the srnode CLI."""
    models = subparsers.add_parser("models", help="super-resolution models")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    ls = msub.add_parser("list", help="list configured and built-in models")
    ls.add_argument("--config", help="srnode YAML, for the models: section")
    ls.set_defaults(func=_models_list)
    add = msub.add_parser("add", help="register an exported model (its model_card.json) in a node YAML")
    add.add_argument("--card", required=True, help="model_card.json written by `srnode export-model`")
    add.add_argument("--config", required=True, help="srnode YAML to add the models: entry to")
    add.add_argument("--name", help="registry name (default: the card's)")
    # The card format belongs to the training package; only the command lives in this group. A lazy
    # "module:function" string (config.command_runner.run_command imports it): training is above the
    # engine, so a real import from here would be a cycle (engine <-> training).
    add.set_defaults(func="training.export:cmd_models_add")

    ev = subparsers.add_parser("evaluate", help="zero-shot PSNR/SSIM in HU against bicubic; "
                               "--native: noise/edge ratios against lanczos at native resolution")
    _model_options(ev, repeat_model=True)
    ev.add_argument("--json", help="write per-slice results here")
    ev.add_argument("--max-slices", type=int, default=None,
                    help="evaluate only the first N slices (--native: N evenly spaced slices per series)")
    ev.add_argument("--project", action="store_true", help="also score the LR-consistent projection")
    ev.add_argument("--native", action="store_true",
                    help="no ground truth: upscale the native slices and compare with lanczos of them "
                         "(flat-tissue noise ratio, strong-edge ratio, MTF50)")
    ev.add_argument("--crop", type=int, default=None,
                    help="--native: centre-crop each native slice to N x N before upscaling (bounds CPU time)")
    ev.add_argument("--out", help="--native: folder for native.md, native.json, native.png and crops/")
    ev.add_argument("dirs", nargs="+", metavar="DIR")
    ev.set_defaults(func=_evaluate)
