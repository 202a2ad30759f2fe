"""Model registry: name -> architecture, weights, sha256, scale, intensity mapping.

The built-ins `bicubic` and `lanczos` are models like the others.  Names from the YAML
`models:` section take precedence over built-ins.  `load` is what the pipeline calls.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from config.schema import IntensityConfig, ModelEntry
from sr_engine.archs import ARCHS, CheckpointError, load_checkpoint_verified
from sr_engine.intensity import IntensityMapping, mapping_for
from sr_engine.interpolate import INTERPOLATORS
from sr_engine.upscale import Upscaler


class UnknownModelError(KeyError):
    """A model name that is neither configured nor built in."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one model: arch, checkpoint (+ expected sha256), scale, mapping."""

    name: str
    arch: str
    weights: Path | None = None
    sha256: str | None = None
    scale: int = 4
    intensity: IntensityConfig | None = None
    description: str = ""


BUILTINS: dict[str, ModelSpec] = {
    "bicubic": ModelSpec("bicubic", "bicubic", description="bicubic interpolation (a=-0.75)"),
    "lanczos": ModelSpec("lanczos", "lanczos", description="Lanczos-3 interpolation"),
    **{
        a: ModelSpec(a, a, description=f"{a} (official x4 configuration; needs --weights or models.{a}.weights)")
        for a in ARCHS
    },
}


def builtin_digest(name: str) -> str:
    """Stable stand-in for a checkpoint sha256 of a weight-free built-in (for deterministic UIDs)."""
    return hashlib.sha256(f"srnode-builtin:{name}:v1".encode()).hexdigest()


def resolve(name: str, models_config: dict[str, ModelEntry] | None = None) -> ModelSpec:
    """The spec of model `name`: the YAML entry if configured, else a built-in."""
    if models_config and name in models_config:
        e = models_config[name]
        return ModelSpec(name, e.arch, e.weights, e.sha256, e.scale, e.intensity, e.description)
    if name in BUILTINS:
        return BUILTINS[name]
    known = sorted(set(BUILTINS) | set(models_config or {}))
    raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(known)}")


def all_specs(models_config: dict[str, ModelEntry] | None = None) -> list[ModelSpec]:
    """Every resolvable model, configured ones first."""
    names = list(models_config or {}) + [n for n in BUILTINS if n not in (models_config or {})]
    return [resolve(n, models_config) for n in names]


@dataclass
class LoadedModel:
    """A ready model: `.upscale(values, mapping)` on float modality values, plus provenance."""

    spec: ModelSpec
    upscaler: Upscaler
    checkpoint_sha256: str
    parameters: int

    @property
    def scale(self) -> int:
        return self.upscaler.scale

    def mapping(self, modality: str | None, values: np.ndarray | None = None) -> IntensityMapping:
        """The intensity mapping this model uses for a series of `modality`."""
        return mapping_for(modality, values, self.spec.intensity)

    def upscale(self, values: np.ndarray, mapping: IntensityMapping) -> np.ndarray:
        """Float32 modality values [N, H, W] -> upscaled float32 modality values."""
        return self.upscaler.upscale_slices(values, mapping)


def load(
    spec: ModelSpec,
    device: str | torch.device = "cpu",
    tile: int | None = 256,
    overlap: int = 16,
    batch: int = 4,
    **upscaler_options: object,
) -> LoadedModel:
    """Build the model of `spec` on `device`: verify the checkpoint's sha256, load strictly."""
    if spec.arch in INTERPOLATORS:
        module = INTERPOLATORS[spec.arch](spec.scale)
        up = Upscaler(module, spec.scale, device, tile=None, batch=batch, channels_last=False)
        return LoadedModel(spec, up, builtin_digest(spec.arch), 0)
    if spec.arch not in ARCHS:
        raise CheckpointError(f"model {spec.name!r}: unknown architecture {spec.arch!r}")
    if spec.weights is None:
        raise CheckpointError(
            f"model {spec.name!r} ({spec.arch}) has no weights: pass --weights or set models.{spec.name}.weights"
        )
    descriptor, digest = load_checkpoint_verified(spec.weights, expected_arch=spec.arch, sha256=spec.sha256)
    if descriptor.scale != spec.scale:
        raise CheckpointError(
            f"{spec.weights}: checkpoint is x{descriptor.scale}, model {spec.name!r} is configured x{spec.scale}"
        )
    params = sum(p.numel() for p in descriptor.model.parameters())
    up = Upscaler(descriptor, descriptor.scale, device, tile=tile, overlap=overlap, batch=batch, **upscaler_options)
    return LoadedModel(spec, up, digest, params)
