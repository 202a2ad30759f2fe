"""Exponential moving average of model weights (evaluated and exported instead of raw weights)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps a shadow copy of a model whose weights trail the live ones by `decay`."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend the live weights in; early steps use a smaller decay so EMA warms up quickly."""
        d = min(self.decay, (1 + step) / (10 + step))
        live = model.state_dict()
        for name, shadow in self.module.state_dict().items():
            src = live[name]
            if shadow.dtype.is_floating_point:
                shadow.mul_(d).add_(src.detach().to(shadow.dtype), alpha=1 - d)
            else:
                shadow.copy_(src)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore shadow weights from a checkpoint."""
        self.module.load_state_dict(state)
