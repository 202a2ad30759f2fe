"""`srnode train`, `srnode export-model` and `srnode compare`: the training package's commands."""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def _paths(values: list[str] | None) -> list[Path]:
    return [Path(v) for v in values or []]


def _cmd_train(args: argparse.Namespace) -> int:
    from training.loop import RunConfig, TrainingInterrupted, train
    from training.presets import get_preset

    preset = get_preset(args.preset)
    overrides = {
        "steps": args.steps, "batch_size": args.batch, "lr": args.lr, "hr_patch": args.hr_patch,
        "val_every": args.val_every, "ckpt_every": args.ckpt_every, "log_every": args.log_every,
        "ema_decay": args.ema_decay, "seed": args.seed,
        "trainable": args.trainable,
        "blind": {"on": True, "off": False, "native": False}.get(args.degradations),
        "native_noise": {"native": True, "off": False, "on": False}.get(args.degradations),
    }
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item}: expected KEY=JSON, e.g. --set 'lr=2e-4'")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--set {item}: the value is not JSON ({exc.msg}); strings need JSON "
                             f"quotes, e.g. --set 'trainable=\"conv_last\"'") from None
    preset = preset.with_overrides(**overrides)
    cfg = RunConfig(
        data=_paths(args.data), out=Path(args.out), val_data=_paths(args.val_data),
        init=Path(args.init) if args.init else None, resume=not args.no_resume,
        modality=args.modality, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        device=args.device, amp=args.amp, num_workers=args.workers, val_slices=args.val_slices,
        val_crop=None if args.val_crop == 0 else args.val_crop, split_by=args.split_by,
        threads=args.threads, progress=not args.no_progress, stop_after=args.stop_after,
    )
    try:
        result = train(preset, cfg)
    except TrainingInterrupted as exc:
        # 130 (SIGINT) / 143 (SIGTERM), as a shell reports a command stopped by a signal: a script's
        # `srnode train ... && srnode export-model ...` must not go on to export an unfinished run.
        if os.environ.get("RANK", "0") == "0":  # one line, not one per torchrun process
            log.warning("%s", exc)
        return exc.exit_status
    print(json.dumps({"out": str(result.out), "step": result.step, "best": result.best,
                      "last_val": result.last_val, "bicubic": result.baseline}, indent=1))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_run

    attribution = Path(args.attribution).read_text() if args.attribution else ""
    card = export_run(Path(args.run), Path(args.dest), name=args.name,
                      weights=args.weights, fp16=args.fp16, register=args.config,
                      test_data=_paths(args.test_data), attribution=attribution,
                      test_max_slices=args.test_max_slices, test_crop=args.test_crop or None,
                      interpolate=(Path(args.interpolate[0]), float(args.interpolate[1])) if args.interpolate else None)
    print(json.dumps(card, indent=1, default=str))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from training.compare import compare_cli

    return compare_cli(args)


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """User errors become one log line and exit status 2, not a traceback."""
    def run(args: argparse.Namespace) -> int:
        from sr_engine.archs import CheckpointError

        try:
            return func(args)
        except (CheckpointError, FileNotFoundError, ValueError, KeyError, NotImplementedError) as exc:
            log.error("srnode %s: %s", args.command, exc)
            return 2
    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train`, `export-model` and `compare` to the srnode CLI."""
    p = subparsers.add_parser("train", help="fine-tune or train an SR model on DICOM series")
    p.add_argument("--preset", required=True, help="bsrgan | realesrgan | dpsr | swinir | hat")
    p.add_argument("--data", nargs="+", required=True, help="DICOM folder tree(s) to train on")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, cache)")
    p.add_argument("--val-data", nargs="+", help="DICOM tree(s) for validation (else a split of --data)")
    p.add_argument("--init", help="start from this checkpoint (transfer learning); default scratch")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int, help="batch size per process")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--hr-patch", type=int, help="HR patch size (LR is this / scale)")
    p.add_argument("--val-every", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--degradations", choices=["preset", "on", "native", "off"], default="preset",
                   help="on: blur/noise/JPEG-like (blind models); native: each series' own "
                        "measured CT noise on the LR plus mild blur; off: bicubic only")
    p.add_argument("--trainable", help="regex on parameter names to train (default: all)")
    p.add_argument("--set", action="append", metavar="KEY=JSON", help="override any preset field")
    p.add_argument("--modality", default="CT")
    p.add_argument("--split-by", choices=["patient", "series"], default="patient")
    p.add_argument("--cache-dir", help="slice cache folder (default OUT/cache)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--val-slices", type=int, default=8)
    p.add_argument("--val-crop", type=int, default=256, help="centre crop for validation (0: whole slice)")
    p.add_argument("--stop-after", type=int, help="checkpoint and stop at this step (resume later)")
    p.add_argument("--no-resume", action="store_true", help="ignore OUT/last.pt and start over")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_guard(_cmd_train))

    e = subparsers.add_parser("export-model", help="export a training run for the node (weights, card, registry entry)")
    e.add_argument("--run", required=True, help="training run folder")
    e.add_argument("--dest", required=True, help="output folder for weights + model card")
    e.add_argument("--name", required=True, help="model name in the node's registry")
    e.add_argument("--weights", choices=["final_ema", "best_ema"], default="final_ema")
    e.add_argument("--fp16", action="store_true", help="store weights as fp16 (half the size)")
    e.add_argument("--config", help="node config YAML to add the models: entry to")
    e.add_argument("--test-data", nargs="+", help="DICOM tree(s) never seen in training to score on")
    e.add_argument("--test-max-slices", type=int, default=0, help="0: every test slice")
    e.add_argument("--test-crop", type=int, default=0, help="centre crop of test slices (0: whole)")
    e.add_argument("--attribution", help="text file with the data attribution for the model card")
    e.add_argument("--interpolate", nargs=2, metavar=("OTHER_RUN", "ALPHA"),
                   help="network interpolation (ESRGAN): export (1-ALPHA) x this run's weights + ALPHA x "
                        "OTHER_RUN's (same architecture, e.g. two points of a noise/sharpness trade-off)")
    e.set_defaults(func=_guard(_cmd_export))

    c = subparsers.add_parser("compare", help="zero-shot vs fine-tuned table, bar plot and crop grid")
    c.add_argument("--data", nargs="+", required=True, help="test DICOM tree(s)")
    c.add_argument("--pair", nargs=3, action="append", required=True,
                   metavar=("NAME", "ZERO_SHOT_CKPT", "FINE_TUNED_CKPT"))
    c.add_argument("--out", required=True, help="folder for table.md, results.json and PNGs")
    c.add_argument("--max-slices", type=int, default=0, help="0: every slice")
    c.add_argument("--crop", type=int, default=0, help="centre crop of each HR slice (0: whole)")
    c.add_argument("--device", default="auto")
    c.add_argument("--threads", type=int)
    c.set_defaults(func=_guard(_cmd_compare))
