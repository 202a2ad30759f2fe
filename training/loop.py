"""The training loop: L1 on HR/LR patch pairs, Adam + MultiStepLR, EMA, AMP, DDP, resume.

Checkpoints (`last.pt`, every `ckpt_every` steps and at the end) hold everything needed to
continue bit-for-bit: model, EMA, optimizer, scheduler, step and RNG states. Validation runs the
engine's evaluation protocol on the EMA weights; the best one is kept as `best_ema.pt` (plain
weights the engine loads). Sample i of the patch stream is a function of (seed, i), so the data
order resumes exactly as well.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from sr_engine.archs import create_model, file_sha256, state_dict_for_export
from sr_engine.intensity import IntensityMapping, mapping_for
from sr_engine.upscale import grey_to_model, image_channels, model_to_grey
from training.checkpoint import (
    load_init_checkpoint,
    load_training_state,
    rng_state,
    save_atomic,
    set_rng_state,
)
from training.dataset_index import SeriesRecord, index_dicom_trees, split_records
from training.degradations import BLIND, NATIVE_CT, DegradationConfig, with_overrides
from training.distributed import DistInfo, barrier, init_distributed, shutdown
from training.ema import EMA
from training.patches import PatchPairs
from training.presets import Preset
from training.slice_cache import CachedSeries, build_cache
from training.validation import ValSet, evaluate_model, make_val_set

log = logging.getLogger(__name__)


def _init_sha256(out: Path, init: Path | str | None) -> str | None:
    """The initial weights' sha256 when training began: the model card must name what the run
    started from even if that file is replaced later (exporting over a shipped model does). A
    resumed run keeps the figure its run.json already holds."""
    if not init:
        return None
    previous = out / "run.json"
    if previous.exists():
        old = json.loads(previous.read_text())
        if old.get("init") == str(init) and old.get("init_sha256"):
            return str(old["init_sha256"])
    return file_sha256(init)


@dataclass
class RunConfig:
    """Where the data is and where the run writes, beside the preset's hyperparameters."""

    data: list[Path]
    out: Path
    val_data: list[Path] = field(default_factory=list)
    init: Path | None = None
    resume: bool = True
    modality: str = "CT"
    cache_dir: Path | None = None
    device: str = "auto"
    amp: str = "auto"  # auto | bf16 | fp16 | off (AMP only on CUDA)
    num_workers: int = 0
    val_slices: int = 8
    val_crop: int | None = 256
    split_by: str = "patient"
    threads: int | None = None
    progress: bool = True
    # Stop (with a checkpoint) after this global step, as a time-boxed job would; --resume continues.
    stop_after: int | None = None


@dataclass
class TrainResult:
    """What a finished run produced."""

    out: Path
    step: int
    best: dict[str, float] | None
    last_val: dict[str, float] | None
    baseline: dict[str, float] | None


class StepSampler(Sampler[list[int]]):
    """Batches of global sample indices for steps [start, steps) of this rank."""

    def __init__(self, start_step: int, steps: int, batch: int, rank: int, world: int) -> None:
        self.start, self.steps, self.batch, self.rank, self.world = start_step, steps, batch, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            base = (step * self.world + self.rank) * self.batch
            yield list(range(base, base + self.batch))

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def forward_grey(model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
    """Grey [B, 1, h, w] → grey SR, fed the way the engine's Upscaler feeds the model.

    RGB models see the grey slice replicated and their output is averaged back, as at inference.
    """
    ch = image_channels(model.module if isinstance(model, DDP) else model)
    return model_to_grey(model(grey_to_model(lr, ch)))


def build_model(preset: Preset, init: Path | None) -> nn.Module:
    """The preset's architecture, from an official checkpoint (transfer learning) or scratch."""
    if init is not None:
        # The checkpoint decides the exact shape (e.g. 6-block RRDBNet for anime_6B); its
        # architecture is detected from the keys and must be the preset's.
        descriptor = load_init_checkpoint(init, preset.arch)
        if descriptor.scale != preset.scale:
            raise ValueError(f"{init}: checkpoint is x{descriptor.scale}, the preset trains x{preset.scale}")
        return descriptor.model.train()
    try:
        return create_model(preset.arch, scale=preset.scale, **preset.arch_overrides).train()
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError, IndexError) as exc:
        # Construction only fails on arch_overrides (the official configuration builds).
        raise ValueError(f"arch_overrides rejected by {preset.arch}: {type(exc).__name__}: {exc}") from None


def select_trainable(model: nn.Module, pattern: str) -> list[nn.Parameter]:
    """Freeze parameters whose names don't match `pattern` (all train when it is empty)."""
    if not pattern:
        return list(model.parameters())
    rx = re.compile(pattern)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(bool(rx.match(name)))
        if p.requires_grad:
            params.append(p)
    if not params:
        raise ValueError(f"trainable pattern {pattern!r} matches no parameter "
                         f"(names look like {next(iter(dict(model.named_parameters())))!r})")
    return params


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def validate_run_config(cfg: RunConfig) -> None:
    """Raise ValueError for an option the run cannot honour, before any data is read."""
    problems = []
    for flag, value, low in (("--val-slices", cfg.val_slices, 1), ("--workers", cfg.num_workers, 0),
                             ("--threads", cfg.threads, 1), ("--stop-after", cfg.stop_after, 1),
                             ("--val-crop", cfg.val_crop, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            problems.append(f"{flag} must be {'>= 0' if low == 0 else '> 0'}, not {value!r}")
    if not cfg.data:
        problems.append("--data names no folder")
    if cfg.split_by not in ("patient", "series"):
        problems.append(f"--split-by must be patient or series, not {cfg.split_by!r}")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        problems.append(f"--amp must be auto, bf16, fp16 or off, not {cfg.amp!r}")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        problems.append(f"--out {cfg.out} is a file, not a folder")
    if mapping_is_percentile(cfg.modality):
        problems.append(f"training needs a fixed intensity mapping (CT); {cfg.modality} uses per-series "
                        "percentile mappings, which training does not support yet")
    if problems:
        raise ValueError("; ".join(problems))


def _records(paths: Sequence[Path], modality: str) -> list[SeriesRecord]:
    recs = index_dicom_trees(paths, modalities=[modality])
    if not recs:
        raise ValueError(f"no {modality} series found under {', '.join(map(str, paths))}")
    return recs


def prepare_data(cfg: RunConfig, info: DistInfo, hr_patch: int | None = None
                 ) -> tuple[list[CachedSeries], list[CachedSeries], dict[str, Any]]:
    """Index, split and cache the data; returns (train, val) cached series and a summary.

    Everything that can be checked from the headers (series overlap, slice size against
    `hr_patch`) is checked before the cache is built.
    """
    train_recs = _records(cfg.data, cfg.modality)
    if cfg.val_data:
        val_recs = _records(cfg.val_data, cfg.modality)
        overlap = {r.series_uid for r in train_recs} & {r.series_uid for r in val_recs}
        if overlap:
            raise ValueError(f"{len(overlap)} series are in both --data and --val-data")
        source = "--val-data"
    else:
        parts = split_records(train_recs, by=cfg.split_by, fractions=(0.9, 0.1, 0.0))
        if parts["val"]:
            train_recs, val_recs = parts["train"], parts["val"]
            source = f"held-out {cfg.split_by}s of --data"
        else:
            # A 90/10 split holds a group out only from 3 groups on (split_records).
            groups = len({r.patient_key if cfg.split_by == "patient" else r.series_uid for r in train_recs})
            val_recs = train_recs[-1:]
            source = "a training series (too few groups in --data to hold one out)"
            log.warning("--data has %d %s%s, too few for a 90/10 split by %s (3 needed): validating on "
                        "a training series, which measures fit, not generalisation (pass --val-data)",
                        groups, cfg.split_by, "" if groups == 1 else "s", cfg.split_by)
    shared_series = {r.series_uid for r in train_recs} & {r.series_uid for r in val_recs}
    shared_patients = {r.patient_key for r in train_recs} & {r.patient_key for r in val_recs}
    if shared_patients and not shared_series:
        log.warning("%d validation patient(s) also have series in --data: validation is not independent "
                    "of training", len(shared_patients))
    if hr_patch is not None:
        small = [r for r in train_recs if min(r.rows, r.columns) < hr_patch]
        if small:
            raise ValueError(f"{len(small)} training series are smaller than hr_patch {hr_patch} (e.g. "
                             f"series {small[0].cache_key}: {small[0].rows}x{small[0].columns}); "
                             "lower --hr-patch")
    cache_dir = cfg.cache_dir or cfg.out / "cache"
    # Rank 0 decodes; the others wait and then open the same memmaps.
    if info.is_main:
        build_cache(train_recs + [r for r in val_recs if r not in train_recs], cache_dir,
                    progress=cfg.progress)
    barrier(info)
    train = build_cache(train_recs, cache_dir, progress=False)
    val = build_cache(val_recs, cache_dir, progress=False)
    summary = {
        "modality": cfg.modality,
        "train_series": [r.summary() for r in train_recs],
        "val_series": [r.summary() for r in val_recs],
        "train_slices": sum(r.n_slices for r in train_recs),
        "val_slices": sum(r.n_slices for r in val_recs),
        "train_patients": len({r.patient_key for r in train_recs}),
        "val_patients": len({r.patient_key for r in val_recs}),
        # Whether the validation scores measure generalisation (model cards repeat this).
        "validation": {
            "source": source,
            "overlaps_training": bool(shared_series or shared_patients),
            "series_also_in_training": len(shared_series),
            "patients_also_in_training": len(shared_patients),
        },
    }
    return train, val, summary


class _Logger:
    """CSV log (always) and TensorBoard (when installed) for the main rank."""

    def __init__(self, out: Path, enabled: bool, start_step: int = 0) -> None:
        self.enabled = enabled
        self.csv_path = out / "log.csv"
        self.tb = None
        if not enabled:
            return
        self._start_at(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step: TensorBoard drops the events a crashed run wrote after the checkpoint.
            self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1 if start_step else None)
        except ImportError:  # tensorboard is in the optional `dev` extra
            self.tb = None

    def _start_at(self, step: int) -> None:
        """Drop the rows a previous process wrote after `step` (the checkpoint resumed from).

        Rows up to the checkpoint's step were written before it was saved; later ones (a run
        killed between checkpoints) would be written again by this run: duplicated steps.
        A fresh start (step 0) keeps an old log aside as log.prev.csv instead of appending to it.
        """
        if not self.csv_path.exists():
            return
        if step == 0:
            os.replace(self.csv_path, self.csv_path.with_name("log.prev.csv"))
            return
        with self.csv_path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        keep = [rows[0]] + [r for r in rows[1:] if len(r) == 4 and r[1].isdigit() and int(r[1]) <= step]
        if len(keep) == len(rows):
            return
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        with tmp.open("w", newline="") as fh:
            csv.writer(fh).writerows(keep)
        os.replace(tmp, self.csv_path)
        log.info("log.csv: dropped %d rows written after step %d (the checkpoint resumed from)",
                 len(rows) - len(keep), step)

    def write(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["time", "step", "key", "value"])
            now = f"{time.time():.1f}"
            for k, v in values.items():
                w.writerow([now, step, k, f"{v:.6g}"])
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _save_weights(module: nn.Module, path: Path) -> None:
    save_atomic(state_dict_for_export(module), path)


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run; `exit_status` is the shell's 128 + signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_status = 128 + signum


class _StopSignals:
    """SIGINT/SIGTERM during the training loop: finish the current step, save last.pt, stop.

    Before the loop (indexing, caching, baseline) there is nothing to save and the signal stops
    the run at once, as does a second signal while the first is being honoured.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self.step = 0
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> Self:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():  # signal.signal's rule
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker (Ctrl-C reaches it too): the main process stops it
        name = signal.Signals(signum).name
        if not self.armed:
            raise TrainingInterrupted(signum, f"interrupted by {name} before training started: nothing to save")
        if self.signum is not None:
            raise TrainingInterrupted(signum, f"interrupted by {name} again: stopped without saving; "
                                              "last.pt holds the previous checkpoint")
        self.signum = signum
        log.warning("%s: finishing step %d, then saving last.pt (%s again stops without saving)",
                    name, self.step + 1, name)

    def agreed(self, info: DistInfo) -> int:
        """The signal to stop on (0: none), the same on every rank so they stop at one step."""
        if info.world_size == 1:
            return self.signum or 0
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0], device=info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def train(preset: Preset, cfg: RunConfig) -> TrainResult:
    """Run (or resume) a training run described by `preset` and `cfg`.

    On SIGINT/SIGTERM the current step is finished, `last.pt` saved and TrainingInterrupted
    raised; the same call again resumes from it.
    """
    # Everything that can be checked without the data is checked first: a typo costs a
    # second, not the minutes of decoding a slice cache takes.
    preset.validate()
    validate_run_config(cfg)
    with _StopSignals() as stop:
        return _train(preset, cfg, stop)


def _train(preset: Preset, cfg: RunConfig, stop: _StopSignals) -> TrainResult:
    info = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: let cuDNN pick the fastest kernels
    torch.manual_seed(preset.seed + info.rank)
    # Before the data too: a missing or wrong --init, or bad arch_overrides, fails in seconds.
    model = build_model(preset, cfg.init)
    params = select_trainable(model, preset.trainable)  # a pattern matching nothing fails here too
    out = Path(cfg.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(info)

    train_series, val_series, data_summary = prepare_data(cfg, info, preset.hr_patch)
    mapping: IntensityMapping = mapping_for(cfg.modality)
    degr: DegradationConfig = with_overrides(
        BLIND if preset.blind else NATIVE_CT if preset.native_noise else DegradationConfig(),
        preset.degradation_overrides)
    dataset = PatchPairs(train_series, mapping, preset.scale, preset.hr_patch,
                         length=(preset.steps + 1) * preset.batch_size * info.world_size,
                         seed=preset.seed, degradations=degr)
    val_set: ValSet = make_val_set(val_series, cfg.val_slices, cfg.val_crop, preset.scale)

    model = model.to(info.device)  # in place: `params` stay the model's parameters
    ema = EMA(model, preset.ema_decay)
    if info.is_main:
        log.info("training %d of %d parameters", sum(p.numel() for p in params),
                 sum(p.numel() for p in model.parameters()))
    optimizer = torch.optim.Adam(params, lr=preset.lr, betas=preset.betas,
                                 weight_decay=preset.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, preset.scaled_milestones(),
                                                     gamma=preset.gamma)
    amp_dtype = _amp_dtype(cfg.amp, info.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    step, best, last_val, baseline = 0, None, None, None
    last_path = out / "last.pt"
    if cfg.resume and last_path.exists():
        state = load_training_state(last_path)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)])
        step, best, baseline = int(state["step"]), state.get("best"), state.get("baseline")
        last_val = state.get("last_val")
        if info.is_main:
            saved = state.get("preset", {})
            changed = sorted(k for k, v in asdict(preset).items()
                             if k in saved and json.dumps(saved[k], default=str) != json.dumps(v, default=str))
            log.info("resumed from %s at step %d%s", last_path, step,
                     f" (changed since the checkpoint: {', '.join(changed)}; the optimizer and "
                     f"LR schedule continue as saved)" if changed else "")
    ema.module.to(info.device)

    net: nn.Module = DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None) \
        if info.world_size > 1 else model
    logger = _Logger(out, info.is_main, start_step=step)
    if info.is_main:
        # The schedule actually stepped (the scheduler's, restored on resume), not the preset's
        # milestones on the paper's 1M-step scale; those are kept beside them.
        used = {**asdict(preset), "milestones": sorted(scheduler.milestones),
                "preset_milestones": list(preset.milestones)}
        meta = {"preset": used, "init": str(cfg.init) if cfg.init else None,
                "init_sha256": _init_sha256(out, cfg.init),
                "data": data_summary, "intensity": {"low": mapping.low, "high": mapping.high},
                "world_size": info.world_size, "amp": str(amp_dtype) if amp_dtype else "off",
                "degradations": asdict(degr),
                "native_noise": [{"series": s.record.cache_key, **(m.as_dict() if m else {"sigma_hu": None})}
                                 for s, m in zip(train_series, dataset.noise_models)]}
        (out / "run.json").write_text(json.dumps(meta, indent=1, default=str))
        if baseline is None:
            baseline = evaluate_model(None, val_set, mapping, preset.scale)
            log.info("validation baseline bicubic: PSNR %.3f dB SSIM %.4f", baseline["psnr"], baseline["ssim"])
            logger.write(step, **{"val/bicubic_psnr": baseline["psnr"], "val/bicubic_ssim": baseline["ssim"]})
        if step == 0 and last_val is None:
            last_val = evaluate_model(ema.module, val_set, mapping, preset.scale, info.device)
            log.info("validation step 0 (init weights): PSNR %.3f dB SSIM %.4f", last_val["psnr"], last_val["ssim"])
            logger.write(0, **{"val/psnr": last_val["psnr"], "val/ssim": last_val["ssim"]})

    def checkpoint(at: int) -> None:
        if not info.is_main:
            return
        rngs = [rng_state()]
        save_atomic({"model": model.state_dict(), "ema": ema.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "rng": rngs, "step": at, "best": best,
                     "last_val": last_val, "baseline": baseline, "preset": asdict(preset)},
                    last_path)

    def validate(at: int) -> None:
        nonlocal best, last_val
        if not info.is_main:
            return
        last_val = evaluate_model(ema.module, val_set, mapping, preset.scale, info.device)
        logger.write(at, **{"val/psnr": last_val["psnr"], "val/ssim": last_val["ssim"]})
        if best is None or last_val["psnr"] > best["psnr"]:
            best = {**last_val, "step": at}
            _save_weights(ema.module, out / "best_ema.pt")
        log.info("validation step %d: PSNR %.3f dB SSIM %.4f (best %.3f at %d)", at,
                 last_val["psnr"], last_val["ssim"], best["psnr"], best["step"])

    loader = DataLoader(dataset, batch_sampler=StepSampler(step, preset.steps, preset.batch_size,
                                                           info.rank, info.world_size),
                        num_workers=cfg.num_workers, pin_memory=info.device.type == "cuda",
                        persistent_workers=False)
    bar = tqdm(total=preset.steps, initial=step, desc=f"train {preset.name}", unit="step",
               disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
    model.train()
    window_loss, window_n, t0 = 0.0, 0, time.perf_counter()
    stop.step, stop.armed = step, True  # from here a signal is honoured after the current step
    signum = 0
    for lr_b, hr_b in loader:
        lr_b = lr_b.to(info.device, non_blocking=True)
        hr_b = hr_b.to(info.device, non_blocking=True)
        ctx = torch.autocast(info.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
        with ctx:
            sr = forward_grey(net, lr_b)
        loss = preset.l1_weight * torch.nn.functional.l1_loss(sr.float(), hr_b)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower the LR or disable AMP")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if preset.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, preset.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        ema.update(model, step)
        window_loss += loss.item()
        window_n += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if step % preset.log_every == 0 or step == preset.steps:
            dt = (time.perf_counter() - t0) / window_n
            logger.write(step, **{"train/l1": window_loss / window_n, "train/lr": scheduler.get_last_lr()[0],
                                  "train/sec_per_step": dt})
            window_loss, window_n, t0 = 0.0, 0, time.perf_counter()
        if step % preset.val_every == 0 or step == preset.steps:
            validate(step)
        stop.step = step
        signum = stop.agreed(info)
        stopping = (cfg.stop_after is not None and step >= cfg.stop_after) or signum > 0
        if step % preset.ckpt_every == 0 or step == preset.steps or stopping:
            checkpoint(step)
        if stopping:
            break
    bar.close()
    if info.is_main and step >= preset.steps:
        if not last_path.exists():
            checkpoint(step)
        # The EMA weights of the finished run, in the plain layout the engine loads.
        _save_weights(ema.module, out / "final_ema.pt")
    logger.close()
    barrier(info)
    shutdown(info)
    if signum and step < preset.steps:
        raise TrainingInterrupted(signum, f"interrupted by {signal.Signals(signum).name}: step {step} "
                                          f"saved in {last_path}; run the same command again to resume "
                                          f"from step {step}")
    return TrainResult(out=out, step=step, best=best, last_val=last_val, baseline=baseline)


def mapping_is_percentile(modality: str) -> bool:
    """Whether the engine maps this modality per series (percentiles) rather than fixed."""
    try:
        mapping_for(modality)
    except ValueError:
        return True
    return False
