"""Exponential moving average of model weights (evaluated and exported instead of raw weights).

Built on `torch.optim.swa_utils.AveragedModel`, which keeps the shadow copy and walks the
parameters and buffers; this module only supplies the decay with its warm-up.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EMA:
    """Keeps a shadow copy of a model whose weights trail the live ones by `decay`.

    Each update is `shadow = d * shadow + (1 - d) * live` with `d = min(decay, (1 + step) /
    (10 + step))`, for the parameters and the floating-point buffers alike; integer buffers are
    copied. The shadow starts as a copy of the model as it is at construction, so the first
    update already blends (AveragedModel's usual first-update copy is skipped).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self._d = decay  # the decay of the update in progress (set by `update`)
        self._avg = AveragedModel(model, multi_avg_fn=self._blend, use_buffers=True)
        # The deep copy made above counts as the first sample: without this, AveragedModel's
        # first update_parameters would overwrite the shadow with the live weights.
        self._avg.n_averaged.fill_(1)
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The shadow model (plain module: its state_dict keys are the model's own)."""
        module: nn.Module = self._avg.module
        return module

    def _blend(self, shadow: Sequence[torch.Tensor], live: Sequence[torch.Tensor],
               _n_averaged: torch.Tensor | int) -> None:
        """AveragedModel's multi_avg_fn: one group of tensors of one device and dtype."""
        d = self._d
        if shadow[0].dtype.is_floating_point:
            torch._foreach_mul_(list(shadow), d)
            torch._foreach_add_(list(shadow), list(live), alpha=1 - d)
        else:
            for s, src in zip(shadow, live, strict=True):
                s.copy_(src)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend the live weights in; early steps use a smaller decay so EMA warms up quickly."""
        self._d = min(self.decay, (1 + step) / (10 + step))
        self._avg.update_parameters(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore shadow weights from a checkpoint."""
        self.module.load_state_dict(state)
