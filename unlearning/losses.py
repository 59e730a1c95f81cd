"""Forget objectives, focal cross-entropy and distillation. Pure torch: logits and labels in, a scalar loss out."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ForgetObjective = Literal["random_label", "bounded_ascent", "uniform_kl"]


def random_labels(y: Tensor, allowed: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random label from ``allowed`` for every sample (SalUn's RL relabelling).

    Drawn on the labels' device (a ``generator`` must live there too): no host-to-device copy, and so no
    synchronisation, in a training step.
    """
    pick = torch.randint(len(allowed), y.shape, generator=generator, device=y.device)
    return allowed.to(y.device)[pick]


def bounded_ascent(logits: Tensor, y: Tensor, bound: float) -> Tensor:
    """Gradient ascent on cross-entropy that stops pushing a sample once its loss reaches ``bound``.

    Unbounded ascent diverges and drags every class with it; the hinge keeps it finite.
    """
    return F.relu(bound - F.cross_entropy(logits, y, reduction="none")).mean()


def uniform_kl(logits: Tensor, allowed: Tensor) -> Tensor:
    """KL(u || softmax(logits)) for u uniform over ``allowed``: the forget class gets probability zero."""
    log_probs = F.log_softmax(logits, dim=1)[:, allowed.to(logits.device)]
    return -log_probs.mean(dim=1).mean() - math.log(len(allowed))


def forget_loss(
    objective: ForgetObjective, logits: Tensor, y: Tensor, allowed: Tensor, bound: float = 5.0, generator: torch.Generator | None = None
) -> Tensor:
    """The chosen forget objective on a batch of forget samples; ``allowed`` are the classes they may go to."""
    if objective == "random_label":
        return F.cross_entropy(logits, random_labels(y, allowed, generator))
    if objective == "bounded_ascent":
        return bounded_ascent(logits, y, bound)
    if objective == "uniform_kl":
        return uniform_kl(logits, allowed)
    raise ValueError(f"unknown forget objective {objective!r}; choose random_label, bounded_ascent or uniform_kl")


def focal_cross_entropy(logits: Tensor, y: Tensor, gamma: float, smoothing: float = 0.0, classes: Tensor | None = None) -> Tensor:
    """Cross-entropy with each sample weighted by (1 - p_true)^gamma (Lin et al. 2017), the weights rescaled to sum to
    the batch's size; ``gamma`` 0 is plain cross-entropy.

    The weight moves the step towards the samples the model still gets wrong, and the rescaling keeps the loss's scale,
    and with it the optimiser's effective rate, that of cross-entropy. The weights are constants: no gradient flows
    through them. ``smoothing`` moves that share of each target uniformly onto ``classes`` (label smoothing, Szegedy et
    al. 2016), the units the task trains: a forgotten class's unit gets none of it.
    """
    if gamma == 0 and not smoothing:
        return F.cross_entropy(logits, y)
    ce = F.cross_entropy(logits, y, reduction="none")
    loss = ce
    if smoothing:
        assert classes is not None, "label smoothing needs the classes it spreads over"
        uniform = -F.log_softmax(logits, dim=1).index_select(1, classes).mean(dim=1)
        loss = (1 - smoothing) * ce + smoothing * uniform
    if gamma == 0:
        return loss.mean()
    weight = (1 - torch.exp(-ce.detach())).pow(gamma)
    return (weight * loss).sum() / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny)


def distillation(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) on temperature-softened outputs, scaled by T² as in Hinton et al."""
    t = temperature
    student, teacher = F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t
