"""A model's entry: architecture, checkpoint, scale and intensity mapping, validated (pydantic).

The engine owns these types so that it can be used without the node: the node's YAML `models:`
section is a dict of ModelEntry (config.schema imports them from here), and `registry.resolve`
turns an entry into a ModelSpec.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    # A typo in a key is an error, not a silently ignored setting (as in config.schema).
    model_config = ConfigDict(extra="forbid")


class IntensityConfig(_Strict):
    """How modality values map to the model's [0, 1] input.

    mode "fixed": [low, high] in modality units (CT default: HU [-1024, 3071]).
    mode "percentile": robust per-series range (MR/CR/DX default).
    """

    mode: Literal["fixed", "percentile"] = "fixed"
    low: float = -1024.0
    high: float = 3071.0
    percentile_low: float = Field(0.5, ge=0, le=100)
    percentile_high: float = Field(99.5, ge=0, le=100)


class ModelEntry(_Strict):
    arch: str
    weights: Path | None = None
    sha256: str | None = None
    scale: int = Field(4, ge=1, le=8)
    intensity: IntensityConfig | None = None
    description: str = ""

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("sha256 must be 64 hexadecimal characters")
        return value.lower() if value else value
