"""Which weights may move: gradient saliency of the forget data, top-k ranking, and an exact freeze of the rest.

Pure torch. The ranking is deterministic (stable sort, ties to the lower index), so every
rank of a DDP job that scores the same data with the same weights selects the same mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

Score = Literal["abs_grad", "fisher"]
Scope = Literal["global", "layer"]
LossFn = Callable[[Tensor, Tensor], Tensor]


def saliency_scores(
    net: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], score: Score = "abs_grad", loss_fn: LossFn | None = None
) -> dict[str, Tensor]:
    """Per-weight saliency of ``loss_fn`` over *all* ``batches``, with ``net`` in eval mode.

    ``abs_grad`` is SalUn's ``|sum_b grad_b|`` (the gradient of the summed loss); ``fisher`` is the
    diagonal empirical Fisher ``sum_b grad_b**2`` over batches, as SSD computes it.
    """
    if score not in ("abs_grad", "fisher"):
        raise ValueError(f"score must be 'abs_grad' or 'fisher', got {score!r}")
    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))
    params = {name: p for name, p in net.named_parameters() if p.requires_grad}
    totals = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = net.training
    net.eval()
    try:
        for x, y in batches:
            grads = torch.autograd.grad(loss_fn(net(x), y), list(params.values()), allow_unused=True)
            for (name, total), grad in zip(totals.items(), grads):
                if grad is not None:
                    total.add_(grad if score == "abs_grad" else grad.pow(2))
    finally:
        net.train(was_training)
    return {name: total.abs() for name, total in totals.items()}


def top_fraction_mask(scores: dict[str, Tensor], fraction: float, scope: Scope = "global") -> dict[str, Tensor]:
    """Boolean masks keeping the ``round(fraction * n)`` highest scores (at least one).

    ``global`` ranks all weights together, so layers with larger gradients get more of the budget;
    ``layer`` keeps the same fraction of every parameter tensor.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the kept fraction must lie in (0, 1], got {fraction}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if scope == "layer":
        return {name: _top(s.flatten(), fraction).view_as(s) for name, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = _top(flat, fraction)
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return masks


def _top(values: Tensor, fraction: float) -> Tensor:
    k = max(1, round(fraction * values.numel()))
    order = torch.argsort(values, descending=True, stable=True)
    keep = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    keep[order[:k]] = True
    return keep


def saliency_mask(
    net: nn.Module,
    forget_batches: Iterable[tuple[Tensor, Tensor]],
    fraction: float = 0.5,
    scope: Scope = "global",
    score: Score = "abs_grad",
    loss_fn: LossFn | None = None,
) -> dict[str, Tensor]:
    """The weights most involved in the forget data: ``top_fraction_mask(saliency_scores(...))``."""
    return top_fraction_mask(saliency_scores(net, forget_batches, score, loss_fn), fraction, scope)


def mask_summary(masks: dict[str, Tensor]) -> dict[str, float]:
    """Fraction of weights kept per parameter tensor, and overall under ``"all"``."""
    summary = {name: m.float().mean().item() for name, m in masks.items()}
    summary["all"] = sum(m.sum().item() for m in masks.values()) / max(1, sum(m.numel() for m in masks.values()))
    return summary


class ExactFreeze:
    """Keeps every unselected weight bit-identical, whatever the optimizer does.

    Masking gradients alone is not enough (SalUn issue #32): weight decay, momentum and Adam's
    running moments still move weights whose gradient is zero. So gradients are masked at
    backward time (clipping and the optimizer see only selected weights), and after every
    optimizer step the unselected entries are copied back from a snapshot.
    """

    def __init__(self, net: nn.Module, masks: dict[str, Tensor]):
        params = dict(net.named_parameters())
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise ValueError(f"masks name parameters the network does not have: {unknown}")
        self.entries = [(params[name], mask.to(params[name].device), params[name].detach().clone()) for name, mask in masks.items()]
        self.entries += [(p, torch.zeros_like(p, dtype=torch.bool), p.detach().clone()) for name, p in params.items() if name not in masks]
        self.handles: list[RemovableHandle] = []

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        for param, mask, _ in self.entries:
            if param.requires_grad:
                self.handles.append(param.register_hook(lambda grad, mask=mask: grad * mask))
        self.handles.append(optimizer.register_step_post_hook(lambda *_: self.restore()))

    @torch.no_grad()
    def restore(self) -> None:
        for param, mask, frozen in self.entries:
            param.copy_(torch.where(mask, param, frozen))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
