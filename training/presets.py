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
    # Changes to the chosen degradation settings (training.degradations.DegradationConfig field →
    # value), e.g. {"blur_prob": 0.6, "native_noise_scale": [0.5, 2.5]}: where a model lands on
    # the noise/sharpness trade-off is set here (docs/training.md).
    degradation_overrides: dict[str, Any] = field(default_factory=dict)
    grad_clip: float = 0.0
    # Regular expression (re.match) on parameter names: only those train; "" trains everything.
    # Partial fine-tuning (e.g. the last blocks and the upsampler) is what fits on a CPU.
    trainable: str = ""
    val_every: int = 5_000
    ckpt_every: int = 5_000
    log_every: int = 100
    seed: int = 0

    def with_overrides(self, **overrides: Any) -> Preset:
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

    def validate(self) -> None:
        """Raise ValueError naming every field with a wrong type or an impossible value.

        Called before a run reads any data, so that `--set 'lr="abc"'` or `--steps -3` is one clear
        line instead of a torch error (or a silent no-op run) after minutes of slice decoding.
        """
        # Imported here: this module stays import-light (the CLI parser imports it).
        import math
        import re
        from collections.abc import Callable
        from dataclasses import fields
        from itertools import pairwise

        from sr_engine.arch_names import NETWORK_ARCHS
        from training.degradations import degradation_problem

        problems: list[str] = []
        ok: dict[str, bool] = {}
        for f in fields(self):
            v, kind = getattr(self, f.name), str(f.type)
            if kind == "bool":
                good, want = isinstance(v, bool), "true or false"
            elif kind == "int":
                good, want = isinstance(v, int) and not isinstance(v, bool), "an integer"
            elif kind == "float":
                good = isinstance(v, (int, float)) and not isinstance(v, bool)
                want = "a number"
            elif kind == "str":
                good, want = isinstance(v, str), "a string"
            elif kind.startswith("dict"):
                good, want = isinstance(v, dict), "a JSON object"
            elif kind.startswith("tuple"):
                good, want = isinstance(v, (list, tuple)), "a list"
            else:  # a field type this check does not know: left to the code that uses it
                good, want = True, ""
            ok[f.name] = good
            if not good:
                problems.append(f"{f.name} must be {want}, not {v!r}")

        def check(name: str, cond: Callable[[], bool], message: str) -> None:
            # Lazy condition: a field of the wrong type is reported once, never compared.
            if ok.get(name, True) and not cond():
                ok[name] = False
                problems.append(message)

        for name in ("steps", "batch_size", "hr_patch", "scale", "val_every", "ckpt_every", "log_every"):
            v = getattr(self, name)
            check(name, lambda v=v: v > 0, f"{name} must be > 0, not {v!r}")
        check("seed", lambda: self.seed >= 0, f"seed must be >= 0, not {self.seed!r}")
        # isfinite first: NaN and inf fail too.
        check("lr", lambda: math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, not {self.lr!r}")
        check("gamma", lambda: 0 < self.gamma <= 1, f"gamma must be in (0, 1], not {self.gamma!r}")
        check("ema_decay", lambda: 0 <= self.ema_decay < 1,
              f"ema_decay must be in [0, 1), not {self.ema_decay!r}")
        check("l1_weight", lambda: self.l1_weight > 0,
              f"l1_weight must be > 0 (L1 is the training loss), not {self.l1_weight!r}")
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            check(name, lambda v=v: math.isfinite(v) and v >= 0, f"{name} must be >= 0, not {v!r}")
        for name in ("perceptual_weight", "gan_weight"):
            v = getattr(self, name)
            check(name, lambda v=v: v == 0,
                  f"{name}={v!r}: perceptual/GAN loss terms are not implemented (they need "
                  "VGG/discriminator weights this project does not ship); set it to 0")
        check("degradation_overrides", lambda: degradation_problem(self.degradation_overrides) is None,
              f"degradation_overrides: {degradation_problem(self.degradation_overrides)}")
        check("arch", lambda: self.arch in NETWORK_ARCHS,
              f"arch must be one of {', '.join(NETWORK_ARCHS)}, not {self.arch!r}")
        check("betas", lambda: len(self.betas) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), not {self.betas!r}")
        ms = self.milestones
        check("milestones", lambda: all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in ms),
              f"milestones must be positive integers, not {ms!r}")
        check("milestones", lambda: all(a < b for a, b in pairwise(ms)),
              f"milestones must be strictly increasing, not {ms!r}")
        late = [m for m in ms if m > 1_000_000] if ok["milestones"] else []
        check("milestones", lambda: not late,
              f"milestones {late} are on the paper's 1M-step scale (they scale with steps): "
              "past 1000000 they land after the last step and never take effect")

        def compiles() -> bool:
            try:
                re.compile(self.trainable)
            except re.error:
                return False
            return True

        check("trainable", compiles, f"trainable is not a regular expression: {self.trainable!r}")
        if all(ok[k] for k in ("hr_patch", "scale", "arch", "arch_overrides")):
            check("hr_patch", lambda: self.hr_patch % self.scale == 0,
                  f"hr_patch {self.hr_patch} must be a multiple of scale {self.scale}")
            # A 3x3-convolution network needs some LR context; a window-attention one at least
            # one whole window (smaller patches train on padding).
            need, why = 8, "smaller LR patches are mostly border"
            if self.arch in ("swinir", "hat"):
                from sr_engine.archs import OFFICIAL_CONFIGS

                need = int({**OFFICIAL_CONFIGS[self.arch], **self.arch_overrides}.get("window_size", need))
                why = f"one attention window of {need} LR pixels"
            lr_patch = self.hr_patch // self.scale
            check("hr_patch", lambda: lr_patch >= need,
                  f"hr_patch {self.hr_patch} is too small for {self.arch}: its LR patch ({lr_patch} "
                  f"pixels) must be at least {need} ({why}), i.e. hr_patch >= {need * self.scale}")
        if problems:
            raise ValueError(f"invalid preset {self.name!r}: {'; '.join(problems)}")


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
