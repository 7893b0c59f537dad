"""The optimiser of an ensemble: AdamW with a learning rate per member, and
gradient clipping per member, so that members never interact."""
from __future__ import annotations

import torch

from trainer.model import decay_mask


class AdamW:
    """AdamW over ensemble parameters with a per-member learning rate: a
    member whose rate is 0 (stopped, failed) is frozen exactly, and its
    gradient (even NaN) is masked out so it touches nothing."""

    def __init__(self, params: dict[str, torch.nn.Parameter], betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.1):
        self.betas, self.weight_decay = betas, weight_decay
        self.names = list(params)
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}
        self.t = 0

    @torch.no_grad()
    def step(self, params: dict[str, torch.nn.Parameter], lr: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        live = lr > 0
        for n in self.names:
            p = params[n]
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = torch.where(live.view(shape), p.grad, 0.0)
            self.m[n].lerp_(g, 1 - b1)
            self.v[n].mul_(b2).addcmul_(g, g, value=1 - b2)
            step = lr.view(shape)
            if decay_mask(n):
                p.mul_(1 - step * self.weight_decay)
            p.sub_(step * (self.m[n] / bc1) / ((self.v[n] / bc2).sqrt() + 1e-8))

    def select(self, keep: torch.Tensor) -> None:
        for d in (self.m, self.v):
            for n in d:
                d[n] = d[n].index_select(0, keep).contiguous()


@torch.no_grad()
def clip_per_member(params: dict[str, torch.nn.Parameter], max_norm: float) -> None:
    """Clip each member's gradient to max_norm on its own."""
    sq = sum(p.grad.float().pow(2).flatten(1).sum(1) for p in params.values())
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params.values():
        p.grad.mul_(scale.view(-1, *([1] * (p.dim() - 1))).to(p.grad.dtype))
