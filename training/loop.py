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
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from sr_engine.archs import create_model, load_checkpoint, state_dict_for_export
from sr_engine.intensity import IntensityMapping, mapping_for
from sr_engine.upscale import grey_to_model, image_channels, model_to_grey
from training.checkpoint import load_training_state, rng_state, save_atomic, set_rng_state
from training.dataset_index import SeriesRecord, index_dicom_trees, split_records
from training.degradations import BLIND, NATIVE_CT, DegradationConfig
from training.distributed import DistInfo, barrier, init_distributed, shutdown
from training.ema import EMA
from training.patches import PatchPairs
from training.presets import Preset
from training.slice_cache import CachedSeries, build_cache
from training.validation import ValSet, evaluate_model, make_val_set

log = logging.getLogger(__name__)


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
        # The checkpoint decides the exact shape (e.g. 6-block RRDBNet for anime_6B).
        return load_checkpoint(init, expected_arch=preset.arch).model.train()
    return create_model(preset.arch, scale=preset.scale, **preset.arch_overrides).train()


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


def _records(paths: Sequence[Path], modality: str) -> list[SeriesRecord]:
    recs = index_dicom_trees(paths, modalities=[modality])
    if not recs:
        raise ValueError(f"no {modality} series found under {', '.join(map(str, paths))}")
    return recs


def prepare_data(cfg: RunConfig, info: DistInfo) -> tuple[list[CachedSeries], list[CachedSeries], dict[str, Any]]:
    """Index, split and cache the data; returns (train, val) cached series and a summary."""
    train_recs = _records(cfg.data, cfg.modality)
    if cfg.val_data:
        val_recs = _records(cfg.val_data, cfg.modality)
        overlap = {r.series_uid for r in train_recs} & {r.series_uid for r in val_recs}
        if overlap:
            raise ValueError(f"{len(overlap)} series are in both --data and --val-data")
    else:
        parts = split_records(train_recs, by=cfg.split_by, fractions=(0.9, 0.1, 0.0))
        train_recs, val_recs = parts["train"], parts["val"] or parts["train"][-1:]
        if not parts["val"]:
            log.warning("only one %s in --data: validating on training data (pass --val-data)",
                        cfg.split_by)
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
    }
    return train, val, summary


class _Logger:
    """CSV log (always) and TensorBoard (when installed) for the main rank."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.csv_path = out / "log.csv"
        self.tb = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tb"))
        except ImportError:  # tensorboard is in the optional `dev` extra
            self.tb = None

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


def train(preset: Preset, cfg: RunConfig) -> TrainResult:
    """Run (or resume) a training run described by `preset` and `cfg`."""
    if preset.perceptual_weight > 0 or preset.gan_weight > 0:
        raise NotImplementedError(
            "perceptual/GAN loss terms are not implemented (they need VGG/discriminator weights "
            "this project does not ship); set perceptual_weight=0 and gan_weight=0")
    info = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: let cuDNN pick the fastest kernels
    out = Path(cfg.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(info)
    torch.manual_seed(preset.seed + info.rank)

    train_series, val_series, data_summary = prepare_data(cfg, info)
    if mapping_is_percentile(cfg.modality):
        raise ValueError(f"training needs a fixed intensity mapping (CT); {cfg.modality} uses "
                         "per-series percentile mappings, which training does not support yet")
    mapping: IntensityMapping = mapping_for(cfg.modality)
    degr: DegradationConfig = (BLIND if preset.blind else NATIVE_CT if preset.native_noise
                               else DegradationConfig())
    dataset = PatchPairs(train_series, mapping, preset.scale, preset.hr_patch,
                         length=(preset.steps + 1) * preset.batch_size * info.world_size,
                         seed=preset.seed, degradations=degr)
    val_set: ValSet = make_val_set(val_series, cfg.val_slices, cfg.val_crop, preset.scale)

    model = build_model(preset, cfg.init).to(info.device)
    ema = EMA(model, preset.ema_decay)
    params = select_trainable(model, preset.trainable)
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
    logger = _Logger(out, info.is_main)
    if info.is_main:
        meta = {"preset": asdict(preset), "init": str(cfg.init) if cfg.init else None,
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
        stopping = cfg.stop_after is not None and step >= cfg.stop_after
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
    return TrainResult(out=out, step=step, best=best, last_val=last_val, baseline=baseline)


def mapping_is_percentile(modality: str) -> bool:
    """Whether the engine maps this modality per series (percentiles) rather than fixed."""
    try:
        mapping_for(modality)
    except ValueError:
        return True
    return False
