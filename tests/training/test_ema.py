"""training.ema.EMA (torch.optim.swa_utils.AveragedModel underneath) against the formula it replaced.

`_ReferenceEMA` below is the previous hand-written class, copied verbatim: it is the REFERENCE
the AveragedModel-backed EMA must keep matching (shadow weights, checkpoint layout).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from training.ema import EMA


# --- REFERENCE: the hand-written EMA that training/ema.py had before AveragedModel. ---
class _ReferenceEMA:
    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        live = model.state_dict()
        for name, shadow in self.module.state_dict().items():
            src = live[name]
            if shadow.dtype.is_floating_point:
                shadow.mul_(d).add_(src.detach().to(shadow.dtype), alpha=1 - d)
            else:
                shadow.copy_(src)
# --- end of REFERENCE ---


class _Net(nn.Module):
    """Parameters, a frozen parameter, float buffers (BatchNorm) and an integer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 1, 1)
        self.head.bias.requires_grad_(False)
        self.register_buffer("index", torch.arange(6).view(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))))  # type: ignore[no-any-return]


def _train(steps: int, decay: float, resume_at: int | None = None) -> tuple[nn.Module, nn.Module, EMA]:
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ema, ref = EMA(model, decay), _ReferenceEMA(model, decay)
    for step in range(1, steps + 1):
        x = torch.randn(4, 1, 8, 8)
        loss = (model(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.index.add_(1)  # an integer buffer that changes: copied, not averaged
        ema.update(model, step)
        ref.update(model, step)
        if step == resume_at:  # a resumed run: a fresh EMA loaded from the checkpoint's "ema" entry
            saved = ema.state_dict()
            ema = EMA(model, decay)
            ema.load_state_dict(saved)
    return ema.module, ref.module, ema


def test_shadow_weights_equal_the_reference_formula() -> None:
    # decay 0.9: the warm-up (1 + step) / (10 + step) is the smaller one for the first 80 steps.
    for decay in (0.9, 0.999):
        got, want, _ = _train(100, decay)
        got_sd, want_sd = got.state_dict(), want.state_dict()
        assert list(got_sd) == list(want_sd)
        for name in want_sd:
            assert got_sd[name].dtype == want_sd[name].dtype, name
            assert torch.equal(got_sd[name], want_sd[name]), name


def test_first_update_blends_the_initial_copy() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMA(model, 0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, 1)
    d = 2 / 11
    for name, shadow in ema.state_dict().items():
        torch.testing.assert_close(shadow, d * init[name] + (1 - d) * model.state_dict()[name])


def test_resume_and_checkpoint_layout() -> None:
    got, want, ema = _train(30, 0.99, resume_at=12)
    assert all(torch.equal(got.state_dict()[k], v) for k, v in want.state_dict().items())
    # The checkpoint's "ema" entry and the exported weights: the model's own keys, no prefix.
    assert list(ema.state_dict()) == list(_Net().state_dict())
    assert ema.module is got and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
