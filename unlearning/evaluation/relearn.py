"""Check 4: the relearn test. A class that is only hidden comes back after a handful of steps on a few of its samples."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from unlearning.evaluation.outputs import label_log_probabilities, net_logits, predicted_labels


def relearn_steps(
    net: nn.Module,
    train_x: Tensor,
    train_labels: Tensor,
    eval_x: Tensor,
    eval_labels: Tensor,
    unit_labels: Tensor,
    target_acc: float = 90.0,
    lr: float = 1e-3,
    max_steps: int = 100,
) -> int | None:
    """Full-batch Adam steps on a copy of ``net`` until its accuracy on ``eval_x`` reaches ``target_acc`` percent.

    ``train_x``/``train_labels`` are the small relearning set, ``eval_x``/``eval_labels`` held-out
    samples of the class being relearned; ``unit_labels`` says which label each output unit stands for. The copy is
    trained in eval mode (no dropout noise, no batch-norm statistics drift), so the count is
    deterministic. Returns 0 when the net already reaches the target, ``None`` when
    ``max_steps`` do not suffice.
    """
    model = copy.deepcopy(net).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def reached() -> bool:
        preds = predicted_labels(net_logits(model, eval_x), unit_labels)
        return bool((preds == eval_labels).float().mean() * 100 >= target_acc)

    for step in range(max_steps):
        if reached():
            return step
        optimizer.zero_grad()
        nn.functional.nll_loss(label_log_probabilities(model(train_x), unit_labels), train_labels).backward()
        optimizer.step()
    return max_steps if reached() else None
