"""The architectures through one spandrel code path, and strict checkpoint loading.

RealESRGAN and BSRGAN are spandrel's RRDBNet (ESRGAN); SwinIR, HAT and Compact (Real-ESRGAN's
SRVGGNetCompact, the fast CPU model) are spandrel's own; DPSR is
ours (sr_engine.dpsr) and is added to a copy of spandrel's registry so that every checkpoint,
whatever its layout, goes through ``REGISTRY.load``.
"""
from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from spandrel import (
    MAIN_REGISTRY,
    Architecture,
    ArchRegistry,
    ArchSupport,
    ImageModelDescriptor,
    ModelDescriptor,
    SizeRequirements,
    StateDict,
    UnsupportedModelError,
    canonicalize_state_dict,
)
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN as RRDBNet
from spandrel.architectures.HAT import HAT
from spandrel.architectures.SwinIR import SwinIR
from spandrel.util import KeyCondition

from sr_engine.arch_names import NETWORK_ARCHS
from sr_engine.dpsr import DPSR, dpsr_hyperparameters

ARCHS: tuple[str, ...] = NETWORK_ARCHS

# Our architecture names -> spandrel architecture ids (RealESRGAN and BSRGAN share RRDBNet).
SPANDREL_ID: dict[str, str] = {
    "realesrgan": "ESRGAN",
    "bsrgan": "ESRGAN",
    "dpsr": "DPSR",
    "swinir": "SwinIR",
    "hat": "HAT",
    "compact": "Compact",
}


class CheckpointError(ValueError):
    """A checkpoint that srnode refuses to load; the message names the file and the reason."""


class DPSRArch(Architecture[DPSR]):
    """spandrel architecture entry for DPSR (KAIR ``MSRResNet_prior`` key layout)."""

    def __init__(self) -> None:
        super().__init__(
            id="DPSR",
            detect=KeyCondition.has_all(
                "model.0.weight",
                "model.0.bias",
                "model.1.sub.0.res.0.weight",
                "model.1.sub.0.res.2.weight",
            ),
        )

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[DPSR]:
        hp = dpsr_hyperparameters(state_dict)
        model = DPSR(**hp)
        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="SR",
            tags=[f"{hp['nc']}nc", f"{hp['nb']}nb"],
            supports_half=True,
            supports_bfloat16=True,
            scale=hp["upscale"],
            input_channels=hp["in_nc"] - 1,  # the noise map is appended by DPSR.forward
            output_channels=hp["out_nc"],
            size_requirements=SizeRequirements(minimum=2),
            call_fn=lambda m, x: m(x),
        )


def _build_registry() -> ArchRegistry:
    reg = MAIN_REGISTRY.copy()
    # DPSR keys (model.N...) must be tried before the old-arch ESRGAN and DnCNN detectors.
    reg.add(ArchSupport.from_architecture(DPSRArch(), before=("ESRGAN", "DnCNN")))
    return reg


REGISTRY: ArchRegistry = _build_registry()


# Official configurations (the released x4 checkpoints these names refer to).
OFFICIAL_CONFIGS: dict[str, dict[str, Any]] = {
    # Real-ESRGAN RealESRGAN_x4plus / BSRGAN BSRGAN.pth: RRDBNet 64 features, 23 RRDB, growth 32.
    "realesrgan": dict(in_nc=3, out_nc=3, num_filters=64, num_blocks=23),
    "bsrgan": dict(in_nc=3, out_nc=3, num_filters=64, num_blocks=23),
    # KAIR DPSRx4.pth.
    "dpsr": dict(in_nc=4, out_nc=3, nc=96, nb=16),
    # SwinIR release 003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN (real-world SR, large).
    "swinir": dict(
        in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6] * 9, embed_dim=240,
        num_heads=[8] * 9, mlp_ratio=2.0, upsampler="nearest+conv", resi_connection="3conv",
    ),
    # HAT release HAT-L_SRx4_ImageNet-pretrain (classical SR, large).
    "hat": dict(
        in_chans=3, img_size=64, window_size=16, compress_ratio=3, squeeze_factor=30,
        conv_scale=0.01, overlap_ratio=0.5, img_range=1.0, depths=[6] * 12, embed_dim=180,
        num_heads=[6] * 12, mlp_ratio=2.0, upsampler="pixelshuffle", resi_connection="1conv",
    ),
    # Real-ESRGAN realesr-general-x4v3: SRVGGNetCompact 64 features, 32 convolutions.
    "compact": dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32),
}

_FACTORIES: dict[str, Callable[..., torch.nn.Module]] = {
    "realesrgan": lambda scale, **kw: RRDBNet(scale=scale, **kw),
    "bsrgan": lambda scale, **kw: RRDBNet(scale=scale, **kw),
    "dpsr": lambda scale, **kw: DPSR(upscale=scale, **kw),
    "swinir": lambda scale, **kw: SwinIR(upscale=scale, **kw),
    "hat": lambda scale, **kw: HAT(upscale=scale, **kw),
    "compact": lambda scale, **kw: Compact(upscale=scale, **kw),
}


def create_model(arch: str, scale: int = 4, **overrides: Any) -> torch.nn.Module:
    """A fresh, untrained model of `arch` in its official configuration (overrides for tiny ones)."""
    if arch not in _FACTORIES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    config = {**OFFICIAL_CONFIGS[arch], **overrides}
    return _FACTORIES[arch](scale, **config)


def count_parameters(model: torch.nn.Module | ModelDescriptor) -> int:
    """Number of trainable parameters (buffers such as attention indices are not counted)."""
    module = model.model if isinstance(model, ImageModelDescriptor) else model
    return sum(p.numel() for p in module.parameters())


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_for_export(model: torch.nn.Module | ModelDescriptor) -> dict[str, torch.Tensor]:
    """A flat CPU state dict that `load_checkpoint` reads back (torch.save or safetensors)."""
    module = model.model if isinstance(model, ImageModelDescriptor) else model
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def _read_state_dict(path: Path, data: bytes) -> dict[str, Any]:
    """Tensors from safetensors bytes or a weights-only torch pickle (nothing executable)."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load as load_safetensors

            return dict(load_safetensors(data))
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one refusal
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


# Key patterns of the three RRDBNet naming schemes spandrel converts (old ESRGAN/BSRGAN/BasicSR).
_RRDB_KEY = re.compile(
    r"^(model\.\d+(\.sub\.\d+(\.RDB\d\.conv(\d+|1x1)\.0)?)?\.(weight|bias)"
    r"|(conv_first|conv_body|trunk_conv|conv_up\d|upconv\d|conv_hr|HRconv|conv_last)\.(weight|bias)"
    r"|body\.\d+\.rdb\d\.conv\d\.(weight|bias)"
    r"|RRDB_trunk\.\d+\.RDB\d\.conv\d\.(weight|bias))$"
)
# Buffers the release files of window-attention models carry and the model rebuilds itself.
_DERIVED_BUFFER = re.compile(r"(attn_mask|relative_position_index(_SA|_OCA)?|relative_coords_table)$")


def _unexpected_keys(state_dict: StateDict, descriptor: ModelDescriptor) -> list[str]:
    """Keys of a checkpoint that the loaded model did not take (spandrel would drop them silently)."""
    if descriptor.architecture.id == "ESRGAN":
        return sorted(k for k in state_dict if not _RRDB_KEY.match(k))
    model_keys = set(descriptor.model.state_dict())
    renamed = {"conv_first.1.weight", "conv_first.1.bias"}  # SwinIR unshuffle variant
    return sorted(
        k for k in state_dict
        if k not in model_keys and k not in renamed and not _DERIVED_BUFFER.search(k)
    )


def _arch_id(name: str) -> str:
    return SPANDREL_ID.get(name.lower(), name)


def load_state_dict(
    state_dict: StateDict, expected_arch: str | None = None, source: str = "state dict"
) -> ModelDescriptor:
    """Detect and strictly load a state dict (any official layout) through `REGISTRY`."""
    sd = canonicalize_state_dict(dict(state_dict))
    non_tensors = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if non_tensors:
        raise CheckpointError(f"{source}: entries that are not tensors: {', '.join(non_tensors[:8])}")
    want = _arch_id(expected_arch) if expected_arch else None
    if want is not None and want not in REGISTRY:
        raise CheckpointError(f"{source}: unknown architecture {expected_arch!r}")
    try:
        if want is not None and not REGISTRY[want].detect(sd):
            # Let the expected architecture try anyway: its error names the missing keys.
            descriptor = REGISTRY[want].architecture.load(dict(sd))
        else:
            descriptor = REGISTRY.load(dict(sd))
    except UnsupportedModelError as exc:
        sample = ", ".join(sorted(sd)[:6])
        raise CheckpointError(f"{source}: no known architecture matches keys ({sample}, ...)") from exc
    except KeyError as exc:
        raise CheckpointError(
            f"{source}: missing key {exc.args[0]!r} for {want or 'the detected architecture'}") from exc
    except RuntimeError as exc:  # load_state_dict(strict=True): names missing/unexpected keys
        raise CheckpointError(f"{source}: state dict does not match the architecture: {exc}") from exc
    if not isinstance(descriptor, ImageModelDescriptor):
        raise CheckpointError(f"{source}: {descriptor.architecture.id} is not an image-to-image model")
    got = str(descriptor.architecture.id)
    if want is not None and got != want:
        raise CheckpointError(f"{source}: expected architecture {want}, the keys are those of {got}")
    extra = _unexpected_keys(sd, descriptor)
    if extra:
        raise CheckpointError(f"{source}: unexpected keys for {got}: {', '.join(extra[:12])}")
    return descriptor.eval()


def load_checkpoint_verified(
    path: str | Path, expected_arch: str | None = None, sha256: str | None = None
) -> tuple[ModelDescriptor, str]:
    """`load_checkpoint` plus the sha256 of the bytes actually loaded (read once: no swap after the check)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if sha256 is not None and actual != sha256.lower():
        raise CheckpointError(
            f"{path}: sha256 mismatch (expected {sha256.lower()}, file has {actual}); refusing to load"
        )
    return load_state_dict(_read_state_dict(path, data), expected_arch, source=str(path)), actual


def load_checkpoint(
    path: str | Path, expected_arch: str | None = None, sha256: str | None = None
) -> ModelDescriptor:
    """Strictly load a checkpoint file; a sha256 mismatch or a key mismatch is a refusal."""
    return load_checkpoint_verified(path, expected_arch, sha256)[0]
