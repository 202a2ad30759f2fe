"""The study definition an admin submits (validated with pydantic; errors name the key)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sr_engine.arch_names import INTERPOLATOR_ARCHS

# Scale settings: (input size, output size, whether a ground truth exists).
# 128→512: the 512 slice (or crop) is the truth, its x4 antialiased bicubic downscale the input.
# 512→2048: the native slice (or crop) is the input; nothing to compare against.
SCALES: dict[str, tuple[int, int, bool]] = {"128to512": (128, 512, True), "512to2048": (512, 2048, False)}
ScaleKey = Literal["128to512", "512to2048"]
FACTOR = 4


class RandomSlices(BaseModel):
    """Draw `count` slices at random (seeded) from stored series matching the filter."""

    model_config = ConfigDict(extra="forbid")
    count: int = Field(10, ge=1, le=500)
    modality: str = "CT"
    series_uids: list[str] = Field(default_factory=list, description="empty: any series of the modality")
    include_derived: bool = False


class StudyDefinition(BaseModel):
    """What a reader study shows, to whom and how."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    # Either explicit SOP Instance UIDs of stored slices, or a random draw.
    slices: list[str] = Field(default_factory=list)
    random: RandomSlices | None = None
    seed: int = Field(0, ge=0, lt=2**62)
    scales: list[ScaleKey] = Field(default_factory=lambda: list[ScaleKey](["128to512"]), min_length=1)
    # Side of the square region of the source slice shown (None: the whole slice). At 128→512 the
    # crop is the ground truth and crop/4 the input; at 512→2048 the crop is the input itself.
    crop: int | None = Field(None, ge=16, le=4096)
    # Only slices of slice_size x slice_size pixels (e.g. 512: native 512² CT): a random draw
    # skips other sizes, an explicit slice of another size is refused. None: any size.
    slice_size: int | None = Field(None, ge=16, le=8192)
    models: list[str] = Field(min_length=2)
    readers: list[str] = Field(min_length=1, description="token fingerprints of console users with role reader")
    task: Literal["rank", "pairwise"] = "rank"
    show_ground_truth: bool = False
    window: Literal["lung", "mediastinum", "bone", "brain"] = "mediastinum"

    @model_validator(mode="after")
    def _one_source(self) -> StudyDefinition:
        if bool(self.slices) == (self.random is not None):
            raise ValueError("slices: give either slices (SOP Instance UIDs) or random, not both or neither")
        if len(set(self.models)) != len(self.models):
            raise ValueError("models: a model is listed twice")
        if len(set(self.readers)) != len(self.readers):
            raise ValueError("readers: a reader is listed twice")
        if self.crop is not None and self.crop % FACTOR:
            raise ValueError(f"crop: must be a multiple of {FACTOR}")
        if self.show_ground_truth and not any(SCALES[s][2] for s in self.scales):
            # Native-resolution cases have no reference: asking for one is a design mistake.
            raise ValueError("show_ground_truth: only 128to512 cases have a ground truth; "
                             f"{', '.join(self.scales)} has none (a preference study)")
        return self


# Display presets (centre, width) in HU: display only, the arrays stay float.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


@dataclass(frozen=True)
class StudyPreset:
    """A ready-made study design; `preset_definition` turns it into a StudyDefinition."""

    name: str
    description: str
    scales: tuple[ScaleKey, ...]
    task: Literal["rank", "pairwise"]
    baselines: tuple[str, ...]  # built-in models always among the candidates
    slice_size: int | None
    show_ground_truth: bool
    window: Literal["lung", "mediastinum", "bone", "brain"]


STUDY_PRESETS: dict[str, StudyPreset] = {
    # The node's real job: native slices x4, nothing downscaled. No ground truth exists, so the
    # readers rank by preference; the native-resolution metrics (noise and edge ratios against
    # lanczos) are what a site checks this ranking against.
    "native-512to2048": StudyPreset(
        name="native-512to2048",
        description="native 512² slices upscaled x4 to 2048² (no downscaling): lanczos and the "
                    "configured x4 networks, ranked by preference (no ground truth at this scale)",
        scales=("512to2048",), task="rank", baselines=("lanczos",), slice_size=512,
        show_ground_truth=False, window="mediastinum",
    ),
}


def configured_networks(models: Mapping[str, Any]) -> list[str]:
    """Names of the configured x4 networks (config `models:` entries that are not interpolators)."""
    return [name for name, entry in models.items()
            if entry.scale == FACTOR and entry.arch not in INTERPOLATOR_ARCHS]


def preset_definition(preset: str, *, readers: Sequence[str], models: Sequence[str],
                      name: str | None = None, count: int = 20, seed: int = 0,
                      series_uids: Sequence[str] = (), slices: Sequence[str] = (),
                      modality: str = "CT", crop: int | None = None,
                      window: str | None = None) -> StudyDefinition:
    """A validated study definition from a preset: its baselines first, then `models`.

    `slices` (SOP Instance UIDs) replaces the seeded random draw of `count` slices.
    """
    try:
        p = STUDY_PRESETS[preset]
    except KeyError:
        raise ValueError(f"preset: unknown study preset {preset!r}; known: {', '.join(STUDY_PRESETS)}") from None
    candidates = list(p.baselines) + [m for m in models if m not in p.baselines]
    if len(candidates) < 2:
        raise ValueError(f"models: the {preset} preset compares {' and '.join(p.baselines)} with x{FACTOR} "
                         "networks, and none is configured or named")
    source: dict[str, Any] = (
        {"slices": list(slices)} if slices else
        {"random": {"count": count, "modality": modality, "series_uids": list(series_uids)}})
    return StudyDefinition(
        name=name or f"{preset} ({len(candidates)} candidates)", seed=seed, scales=list(p.scales),
        crop=crop, slice_size=p.slice_size, models=candidates, readers=list(readers), task=p.task,
        show_ground_truth=p.show_ground_truth, window=window or p.window, **source)
