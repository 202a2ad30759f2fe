"""Model registry: name -> architecture, weights, sha256, scale, intensity mapping.

The built-ins `bicubic` and `lanczos` are models like the others.  Names from the YAML
`models:` section take precedence over built-ins, but a built-in's name can only configure
that built-in's architecture (`check_model_name`).  `load` is what the pipeline calls.

The names and checks at the top import no torch: configuration validation (`srnode config
check`, listener processes) uses them; torch and spandrel load only when a model is built.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sr_engine.arch_names import INTERPOLATOR_ARCHS, KNOWN_ARCHS, NETWORK_ARCHS
from sr_engine.model_entry import IntensityConfig, ModelEntry

if TYPE_CHECKING:
    import numpy as np
    import torch

    from sr_engine.intensity import IntensityMapping
    from sr_engine.upscale import Upscaler


class RoutedModel(Protocol):
    """What the scale check reads of a routing rule (config.schema.RoutingRule); a Protocol, so
    that the engine does not import the node's configuration."""

    @property
    def skip(self) -> bool: ...
    @property
    def model(self) -> str | None: ...
    @property
    def scale(self) -> int | None: ...


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
        for a in NETWORK_ARCHS
    },
}


def check_model_name(name: str, arch: str) -> None:
    """Refuse (ValueError) a model name that would pass another model off as a built-in.

    A built-in's name (any letter case) may only configure that architecture: `bicubic` at x2, or
    `realesrgan` with its official weights, stay what their name says; a fine-tuned network called
    `bicubic` would label its output as the baseline (reader studies, series descriptions).
    Used for the YAML `models:` keys, `POST /api/models`, `srnode export-model` and `models add`.
    """
    builtin = name.strip().lower()
    if builtin in BUILTINS and arch != builtin:
        raise ValueError(f"{name!r} is the name of a built-in model: it can only configure arch {builtin!r}, "
                         f"not {arch!r}; choose another name")


def check_arch(arch: str) -> None:
    """Refuse (ValueError) an architecture the engine cannot build."""
    if arch not in KNOWN_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(KNOWN_ARCHS)}")


def config_errors(models: dict[str, ModelEntry], routing: Sequence[RoutedModel]) -> Iterator[tuple[str, str]]:
    """(key, message) for every model name, architecture and rule scale the engine cannot honour.

    The check `config.loader.parse_config` applies to the YAML file and to every admin change, so
    that a rule fails when it is written, not when a series is routed (pipeline.jobs compares the
    same scales).
    """
    for name, entry in models.items():
        checks = ((f"models.{name}", check_model_name, (name, entry.arch)),
                  (f"models.{name}.arch", check_arch, (entry.arch,)))
        for key, check, args in checks:
            try:
                check(*args)
            except ValueError as exc:
                yield key, str(exc)
        if entry.arch in INTERPOLATOR_ARCHS and entry.weights is not None:
            yield f"models.{name}.weights", f"{entry.arch} is an interpolator: it takes no weights"
    for i, rule in enumerate(routing):
        if rule.skip or not rule.model:
            continue
        try:
            spec = resolve(rule.model, models)
        except UnknownModelError as exc:
            yield f"routing.{i}.model", str(exc)
            continue
        if rule.scale is not None and rule.scale != spec.scale:
            how = (f"e.g. models: {{{spec.arch}-x{rule.scale}: {{arch: {spec.arch}, scale: {rule.scale}}}}}"
                   if spec.arch in INTERPOLATOR_ARCHS else f"a x{rule.scale} checkpoint")
            yield (f"routing.{i}.scale",
                   f"model {rule.model!r} is x{spec.scale}, not x{rule.scale}; use a x{rule.scale} model ({how})")


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
        from sr_engine.intensity import mapping_for

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
    **upscaler_options: Any,
) -> LoadedModel:
    """Build the model of `spec` on `device`: verify the checkpoint's sha256, load strictly."""
    from sr_engine.archs import ARCHS, CheckpointError, load_checkpoint_verified
    from sr_engine.interpolate import INTERPOLATORS
    from sr_engine.upscale import Upscaler

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
