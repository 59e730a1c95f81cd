"""Check 4, continued: two attacks that need no gradient step, each run on a copy of the network, the oracle's alike.

* :func:`prototype_relearn`: Spotter's prototypical relearning (arXiv 2506.01318). The mean penultimate features of
  ``k`` forget-class images are blended into the forget class's row of the head. If the features still set the class
  apart, the row finds it again; the oracle's features were never shaped by the class, so its row finds it less.
* :func:`quantized_recovery`: round-to-nearest weight quantisation (arXiv 2410.16454). A method that moved the weights
  only a little can be undone by the rounding a deployment applies anyway.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unlearning.evaluation.outputs import net_logits, predicted_labels

#: how far the forget row moves towards the scaled prototype: the attacker keeps the best of these
BLENDS = (0.25, 0.5, 0.75, 1.0)
#: the share of the attacker's retain images the prototype rows may claim: what it pays in retain accuracy
RETAIN_COST = 0.01
#: weight widths the quantisation attack rounds to
QUANT_BITS = (8, 4)


@torch.no_grad()
def prototype_relearn(
    net: nn.Module,
    supports: dict[int, Tensor],
    retain_x: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    unit_labels: Tensor,
    retain_cost: float = RETAIN_COST,
    blends: Sequence[float] = BLENDS,
) -> float:
    """Forget-class test accuracy (%) once each forget unit's head row holds the prototype of its ``supports`` images,
    at a fixed price in retain accuracy.

    For each blend ``b`` a row becomes ``(1 - b) · row + b · r · μ / |μ|``, with ``μ`` the mean penultimate features of
    its support images and ``r`` the mean norm of the untouched rows. Its bias is then set as high as the attacker can
    afford: so that the forget units claim a ``retain_cost`` share of the attacker's own ``retain_x`` images and no more.
    A row that claims every image cannot win this way, as it pays in retain accuracy first. The attacker keeps the blend
    that claims most of its own support images, and the result is what that blend claims of the held-out
    ``test_x``/``test_y`` (forget-class images). ``net`` needs a linear ``head`` after ``features``
    (:class:`~unlearning.models.Classifier`).
    """
    model = copy.deepcopy(net).eval()
    head: nn.Linear = model.head
    units = list(supports)
    others = [u for u in range(head.out_features) if u not in supports]
    prototypes = torch.stack([model.features(x).mean(0) for x in supports.values()])
    prototypes = head.weight[others].norm(dim=1).mean() * prototypes / prototypes.norm(dim=1, keepdim=True).clamp_min(1e-12)
    features = {"retain": model.features(retain_x), "test": model.features(test_x), **{u: model.features(x) for u, x in supports.items()}}
    rivals = {k: head(f)[:, others].max(1).values for k, f in features.items()}  # the best untouched unit's logit
    rows = head.weight[units].clone()
    best_support, best_test = -1.0, 0.0
    for blend in blends:
        weight = (1 - blend) * rows + blend * prototypes
        # the forget units' best logit without bias, per image; a shared bias claims the images where it beats the rivals
        scores = {k: (f @ weight.T).max(1) for k, f in features.items()}
        bias = torch.quantile(rivals["retain"] - scores["retain"].values, retain_cost)
        claimed = {k: scores[k].values + bias > rivals[k] for k in features}
        support = float(torch.cat([claimed[u] & (scores[u].indices == units.index(u)) for u in units]).float().mean())
        if support > best_support:
            labels = unit_labels[torch.tensor(units, device=unit_labels.device)][scores["test"].indices]
            best_support, best_test = support, float((claimed["test"] & (labels == test_y)).float().mean() * 100)
    return best_test


def quantize_(net: nn.Module, bits: int) -> nn.Module:
    """Round every parameter tensor of ``net`` in place to ``bits``-bit symmetric integers, one scale per tensor (max |w|)."""
    levels = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for p in net.parameters():
            scale = p.abs().max().clamp_min(1e-12) / levels
            p.copy_(torch.round(p / scale).clamp(-levels, levels) * scale)
    return net


def quantized_recovery(
    net: nn.Module, test_x: Tensor, test_y: Tensor, unit_labels: Tensor, forget_classes: Sequence[int], bits: int
) -> float:
    """What a ``bits``-bit round-to-nearest copy of ``net`` knows of the forget classes (%): its accuracy on their images in
    ``test_x`` less the share of the other classes' images it gives a forget label, at least 0.

    Net of those false claims, as the prototype attack pays in retain images: rounding with one scale per tensor can zero
    every row of a head but one outlier's, and a copy that calls every image the forget class has not recovered it.
    """
    model = quantize_(copy.deepcopy(net).eval(), bits)
    forget_labels = torch.as_tensor(forget_classes, device=test_y.device)
    with torch.no_grad():
        predicted = predicted_labels(net_logits(model, test_x), unit_labels)
    is_forget = torch.isin(test_y, forget_labels)
    recall = (predicted[is_forget] == test_y[is_forget]).float().mean()
    claimed = torch.isin(predicted[~is_forget], forget_labels).float().mean()
    return max(0.0, float((recall - claimed) * 100))
