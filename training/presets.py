"""Training presets: the paper's hyperparameters per model, every field overridable."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

# The paper's schedule: MultiStepLR, gamma 0.5, at these steps, 1M steps in all, batch 24.
PAPER_MILESTONES: tuple[int, ...] = (500_000, 800_000, 900_000, 950_000, 1_000_000)


@dataclass(frozen=True)
class Preset:
    """Everything that defines a training run apart from its data and output folder."""

    name: str
    arch: str  # a name sr_engine.archs.create_model knows
    lr: float
    arch_overrides: dict[str, Any] = field(default_factory=dict)
    scale: int = 4
    batch_size: int = 24
    steps: int = 1_000_000
    milestones: tuple[int, ...] = PAPER_MILESTONES
    gamma: float = 0.5
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    hr_patch: int = 256
    ema_decay: float = 0.999
    # Loss weights: L1 always; perceptual (VGG) and GAN terms only for the GAN models, off by
    # default (see docs/training.md: they need VGG weights this project does not ship).
    l1_weight: float = 1.0
    perceptual_weight: float = 0.0
    gan_weight: float = 0.0
    blind: bool = False  # add blur/noise/JPEG-like degradations (BSRGAN / Real-ESRGAN style)
    # Add each series' own measured noise to its LR patches (training.noise_model), plus a mild
    # HR blur: for CT models that must not sharpen noise at native resolution.
    native_noise: bool = False
    grad_clip: float = 0.0
    # Regular expression (re.match) on parameter names: only those train; "" trains everything.
    # Partial fine-tuning (e.g. the last blocks and the upsampler) is what fits on a CPU.
    trainable: str = ""
    val_every: int = 5_000
    ckpt_every: int = 5_000
    log_every: int = 100
    seed: int = 0

    def with_overrides(self, **overrides: Any) -> "Preset":
        """A copy with the given fields replaced (None values are ignored)."""
        known = set(asdict(self))
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown preset field(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def scaled_milestones(self) -> list[int]:
        """Milestones for this run's length: the paper's 1M-step points scaled to `steps`."""
        if self.steps == 1_000_000 or not self.milestones:
            return list(self.milestones)
        return sorted({max(1, round(m * self.steps / 1_000_000)) for m in self.milestones})


PRESETS: dict[str, Preset] = {
    p.name: p for p in (
        Preset("bsrgan", arch="bsrgan", lr=1e-6, blind=True),
        Preset("realesrgan", arch="realesrgan", lr=1e-4, blind=True),
        Preset("dpsr", arch="dpsr", lr=2e-4),
        Preset("swinir", arch="swinir", lr=1e-6, hr_patch=256),
        Preset("hat", arch="hat", lr=1e-5, hr_patch=256),
        # Not in the paper: the fast CPU model (SRVGGNetCompact, grey in and out), from scratch.
        Preset("compact", arch="compact", lr=5e-4, hr_patch=128, native_noise=True,
               arch_overrides={"num_in_ch": 1, "num_out_ch": 1, "num_feat": 48, "num_conv": 16}),
    )
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name, with the list of names in the error."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
