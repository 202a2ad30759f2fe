"""HR/LR training patch pairs drawn from the slice cache, LR made on the fly.

Sample i is a pure function of (seed, i): a resumed run continues with exactly the patches an
uninterrupted run would have drawn, and DDP ranks draw disjoint streams.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sr_engine.intensity import IntensityMapping
from sr_engine.metrics import degrade
from training.degradations import DegradationConfig, post_downsample, pre_downsample
from training.noise_model import NoiseModel, estimate
from training.slice_cache import CachedSeries

# Patches that are nearly flat in the model's range (air, table, padding) teach nothing;
# resample up to this many times before accepting one.
_MAX_TRIES = 10
_MIN_STD = 0.01


class PatchPairs(Dataset):
    """Random (LR, HR) float32 patch pairs in [0, 1] from cached series (LR made on the fly)."""

    def __init__(self, series: Sequence[CachedSeries], mapping: IntensityMapping, scale: int,
                 hr_patch: int, length: int, seed: int = 0,
                 degradations: DegradationConfig | None = None, augment: bool = True) -> None:
        if hr_patch % scale:
            raise ValueError(f"hr_patch {hr_patch} must be a multiple of scale {scale}")
        self.volumes = [s.volume() for s in series]
        for s, v in zip(series, self.volumes):
            if min(v.shape[1:]) < hr_patch:
                raise ValueError(f"series {s.record.cache_key} ({v.shape[1]}x{v.shape[2]}) is "
                                 f"smaller than hr_patch {hr_patch}")
        # Each slice is equally likely, whichever series it belongs to.
        counts = np.array([v.shape[0] for v in self.volumes], dtype=np.float64)
        self.weights = counts / counts.sum()
        self.mapping, self.scale, self.hr_patch = mapping, scale, hr_patch
        self.length, self.seed = length, seed
        self.degradations = degradations or DegradationConfig()
        self.augment = augment
        # Each series lends its own noise to its patches (None: no flat tissue to measure it on).
        self.noise_models: list[NoiseModel | None] = (
            [estimate(v) for v in self.volumes] if self.degradations.native_noise_prob > 0
            else [None] * len(self.volumes))

    def __len__(self) -> int:
        return self.length

    def _crop(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        p = self.hr_patch
        for _ in range(_MAX_TRIES):
            which = int(rng.choice(len(self.volumes), p=self.weights))
            vol = self.volumes[which]
            z = int(rng.integers(vol.shape[0]))
            y = int(rng.integers(vol.shape[1] - p + 1))
            x = int(rng.integers(vol.shape[2] - p + 1))
            values = np.array(vol[z, y:y + p, x:x + p], dtype=np.float32)  # a writable copy
            if float(self.mapping.to_unit(values).std()) >= _MIN_STD:
                break
        return values, which

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, int(index)))
        values, which = self._crop(rng)
        if self.augment:
            values = np.rot90(values, int(rng.integers(4)))
            if rng.random() < 0.5:
                values = values[:, ::-1]
            values = np.ascontiguousarray(values)
        # As in the evaluation protocol: downsample the modality values, then map to [0, 1].
        src = pre_downsample(values, self.degradations, rng) if self.degradations.enabled else values
        lr_values = degrade(torch.from_numpy(src).double()[None, None], self.scale)[0, 0].float().numpy()
        noise = self.noise_models[which]
        cfg = self.degradations
        if noise is not None and rng.random() < cfg.native_noise_prob:
            sigma = noise.sigma_hu * float(rng.uniform(*cfg.native_noise_scale))
            lr_values = lr_values + noise.synthesise(lr_values.shape, rng, sigma)
        lr = self.mapping.to_unit(lr_values)
        if self.degradations.enabled:
            lr = np.clip(post_downsample(lr, self.degradations, rng), 0, 1)
        hr = self.mapping.to_unit(values)
        return torch.from_numpy(lr)[None], torch.from_numpy(hr)[None]
