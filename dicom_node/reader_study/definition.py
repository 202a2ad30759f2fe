"""The study definition an admin submits (validated with pydantic; errors name the key)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    scales: list[ScaleKey] = Field(default_factory=lambda: ["128to512"], min_length=1)
    # Side of the square region of the source slice shown (None: the whole slice). At 128→512 the
    # crop is the ground truth and crop/4 the input; at 512→2048 the crop is the input itself.
    crop: int | None = Field(None, ge=16, le=4096)
    models: list[str] = Field(min_length=2)
    readers: list[str] = Field(min_length=1, description="token fingerprints of console users with role reader")
    task: Literal["rank", "pairwise"] = "rank"
    show_ground_truth: bool = False
    window: Literal["lung", "mediastinum", "bone", "brain"] = "mediastinum"

    @model_validator(mode="after")
    def _one_source(self) -> "StudyDefinition":
        if bool(self.slices) == (self.random is not None):
            raise ValueError("slices: give either slices (SOP Instance UIDs) or random, not both or neither")
        if len(set(self.models)) != len(self.models):
            raise ValueError("models: a model is listed twice")
        if len(set(self.readers)) != len(self.readers):
            raise ValueError("readers: a reader is listed twice")
        if self.crop is not None and self.crop % FACTOR:
            raise ValueError(f"crop: must be a multiple of {FACTOR}")
        return self


# Display presets (centre, width) in HU: display only, the arrays stay float.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
