"""Check 4: attacks that try to bring the class back, each run on a copy of the network, the oracle's alike.

* :func:`relearn_attack`: a few forget samples, the attacker's best of several optimisers and learning
  rates. A class that is only hidden comes back in a handful of steps; one that was never learned (the
  oracle) takes many. One optimiser alone is not enough: Adam's bounded step mostly measures how far
  the class's logit bias was pushed, so a pinned logit looks "forgotten" to Adam and not to SGD.
* :func:`retain_finetune_recovery`: fine-tuning on retain data alone, no forget sample at all. Classes
  that an unlearning method only suppressed can come back this way (Siddiqui et al., 2025, "From
  Dormant to Deleted"); the oracle's cannot, as nothing in its training ever pointed at the class.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from unlearning.evaluation.data import seeded_batches
from unlearning.evaluation.outputs import label_log_probabilities, net_logits, predicted_labels

OptimizerName = Literal["adam", "sgd"]
#: SGD's momentum in every attack: the usual setting, and far stronger than plain SGD for a few steps
SGD_MOMENTUM = 0.9


def attack_copy(net: nn.Module) -> nn.Module:
    """A trainable copy of ``net`` in eval mode (no dropout noise, no batch-norm drift), so an attack is deterministic."""
    model = copy.deepcopy(net).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def make_optimizer(name: OptimizerName, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)
    raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")


def class_accuracy(model: nn.Module, eval_x: Tensor, eval_labels: Tensor, unit_labels: Tensor) -> float:
    """Accuracy in percent of ``model`` on ``eval_x`` (held-out samples of the attacked class)."""
    preds = predicted_labels(net_logits(model, eval_x), unit_labels)
    return float((preds == eval_labels).float().mean() * 100)


def attack_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, labels: Tensor, unit_labels: Tensor) -> None:
    """One step of cross-entropy on ``x`` towards ``labels``, through the output units that stand for them."""
    opt.zero_grad()
    nn.functional.nll_loss(label_log_probabilities(model(x), unit_labels), labels).backward()
    opt.step()


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
    optimizer: OptimizerName = "adam",
) -> int | None:
    """Full-batch steps of ``optimizer`` on a copy of ``net`` until its accuracy on ``eval_x`` reaches ``target_acc`` percent.

    ``train_x``/``train_labels`` are the small relearning set, ``eval_x``/``eval_labels`` held-out
    samples of the class being relearned; ``unit_labels`` says which label each output unit stands
    for. Returns 0 when the net already reaches the target, ``None`` when ``max_steps`` do not suffice.
    """
    model = attack_copy(net)
    opt = make_optimizer(optimizer, model.parameters(), lr)
    for step in range(max_steps):
        if class_accuracy(model, eval_x, eval_labels, unit_labels) >= target_acc:
            return step
        attack_step(model, opt, train_x, train_labels, unit_labels)
    return max_steps if class_accuracy(model, eval_x, eval_labels, unit_labels) >= target_acc else None


def attacker_name(optimizer: str, lr: float) -> str:
    """``adam_0.001``: one cell of the relearning grid, as reports name it."""
    return f"{optimizer}_{lr:g}"


def relearn_attack(
    net: nn.Module,
    train_x: Tensor,
    train_labels: Tensor,
    eval_x: Tensor,
    eval_labels: Tensor,
    unit_labels: Tensor,
    attackers: Sequence[tuple[OptimizerName, float]],
    target_acc: float = 90.0,
    max_steps: int = 100,
) -> dict[str, int | None]:
    """:func:`relearn_steps` for every ``(optimizer, lr)`` cell: ``relearn/<cell>`` each, and ``relearn_steps``, the fewest.

    The attacker's best is what counts: a method must hold against every cell, and the oracle is
    measured on the same grid, so neither side is judged by one optimiser's quirk.
    """
    cells = {
        f"relearn/{attacker_name(name, lr)}": relearn_steps(
            net, train_x, train_labels, eval_x, eval_labels, unit_labels, target_acc, lr, max_steps, name
        )
        for name, lr in attackers
    }
    reached = [steps for steps in cells.values() if steps is not None]
    return {**cells, "relearn_steps": min(reached) if reached else None}


def retain_finetune_recovery(
    net: nn.Module,
    retain_x: Tensor,
    retain_labels: Tensor,
    eval_x: Tensor,
    eval_labels: Tensor,
    unit_labels: Tensor,
    steps: int = 100,
    lr: float = 1e-3,
    batch_size: int = 128,
    every: int = 10,
    seed: int = 0,
) -> float:
    """Fine-tune a copy of ``net`` with Adam on retain data alone; the highest accuracy (%) on ``eval_x`` it passes through.

    ``eval_x`` holds held-out samples of the forgotten class; it is measured before the first step
    and every ``every`` steps. Mini-batches are drawn with a seeded generator, so the result is deterministic.
    """
    model = attack_copy(net)
    opt = make_optimizer("adam", model.parameters(), lr)
    best = class_accuracy(model, eval_x, eval_labels, unit_labels)
    for step, (x, y) in enumerate(seeded_batches(retain_x, retain_labels, batch_size, steps, seed), start=1):
        attack_step(model, opt, x, y, unit_labels)
        if step % every == 0 or step == steps:
            best = max(best, class_accuracy(model, eval_x, eval_labels, unit_labels))
    return best
