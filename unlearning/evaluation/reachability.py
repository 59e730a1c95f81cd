"""Check 6: class reachability. Can any nearby input still be made to come out as the forgotten class?

The first notebook could not prove that no 28x28 image is ever classified as the removed digit.
This searches for one: projected gradient ascent on the forget class's logit margin from noise
and from real images of other classes, within an L∞ or L2 ball in pixel space ([0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from unlearning.data.mnist import MEAN, STD

Norm = Literal["linf", "l2"]


@dataclass(frozen=True)
class Reach:
    """Per start: whether and after how many steps it was classified as the target, and where it ended."""

    reached: Tensor  # (N,) bool
    steps: Tensor  # (N,) int, meaningful where reached
    images: Tensor  # (N, 1, 28, 28) in pixel space

    def summary(self) -> dict[str, float | None]:
        """``reach`` (percent of starts that reached the class) and ``reach_steps`` (their mean steps; None if none did)."""
        reach = float(self.reached.float().mean() * 100)
        return {"reach": reach, "reach_steps": float(self.steps[self.reached].float().mean()) if self.reached.any() else None}


def margin(logits: Tensor, target_units: Sequence[int]) -> Tensor:
    """Best target logit minus best other logit: positive exactly when a target unit wins."""
    is_target = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    is_target[list(target_units)] = True
    return logits[:, is_target].amax(1) - logits[:, ~is_target].amax(1)


def reach_class(net: nn.Module, starts: Tensor, target_units: Sequence[int], norm: Norm, eps: float, step_size: float, steps: int) -> Reach:
    """Projected gradient ascent on ``margin`` from pixel-space ``starts``, at most ``steps`` steps.

    Each step moves by ``step_size`` along the gradient's sign (L∞) or its unit direction (L2),
    then projects back into the ``eps`` ball around the start and into [0, 1]. A start that
    reaches the target stops moving, so ``images`` shows the first input found.
    """
    x0 = starts.detach()
    x = x0.clone()
    reached = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
    first = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
    for step in range(steps + 1):
        x.requires_grad_(True)
        score = margin(net((x - MEAN) / STD), target_units)
        newly = (score > 0) & ~reached
        first[newly] = step
        reached = reached | newly
        if step == steps or reached.all():
            break
        (grad,) = torch.autograd.grad(score.sum(), x)
        with torch.no_grad():
            moving = (~reached).view(-1, 1, 1, 1).to(x.dtype)
            if norm == "linf":
                x = x + moving * step_size * grad.sign()
                x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps)
            else:
                direction = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                delta = x + moving * step_size * direction - x0
                delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1)
                x = x0 + delta
            x = x.clamp(0, 1)
    return Reach(reached.cpu(), first.cpu(), x.detach().cpu())
