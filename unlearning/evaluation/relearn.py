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
from collections.abc import Iterable, Mapping, Sequence
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


def relearn_curve(
    net: nn.Module,
    train_x: Tensor,
    train_labels: Tensor,
    eval_x: Tensor,
    eval_labels: Tensor,
    unit_labels: Tensor,
    stop_acc: float = 90.0,
    lr: float = 1e-3,
    max_steps: int = 100,
    optimizer: OptimizerName = "adam",
) -> list[float]:
    """Accuracy (%) on ``eval_x`` before each full-batch step of ``optimizer`` on a copy of ``net``, and after the last.

    ``train_x``/``train_labels`` are the small relearning set, ``eval_x``/``eval_labels`` held-out
    samples of the class being relearned; ``unit_labels`` says which label each output unit stands
    for. The curve ends at the first accuracy of at least ``stop_acc``, else after ``max_steps`` steps
    (``max_steps + 1`` entries): entry ``i`` is the accuracy after ``i`` steps.
    """
    model = attack_copy(net)
    opt = make_optimizer(optimizer, model.parameters(), lr)
    curve = [class_accuracy(model, eval_x, eval_labels, unit_labels)]
    while curve[-1] < stop_acc and len(curve) <= max_steps:
        attack_step(model, opt, train_x, train_labels, unit_labels)
        curve.append(class_accuracy(model, eval_x, eval_labels, unit_labels))
    return curve


def steps_to(curve: Sequence[float], target: float) -> int | None:
    """Steps until ``curve`` (:func:`relearn_curve`) first reaches ``target`` percent; ``None`` if it never does."""
    return next((step for step, acc in enumerate(curve) if acc >= target), None)


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
    stop_acc: float = 90.0,
    max_steps: int = 100,
) -> dict[str, list[float]]:
    """:func:`relearn_curve` for every ``(optimizer, lr)`` cell of the attacker's grid, by :func:`attacker_name`.

    The attacker's best is what counts (:func:`mean_steps`): a method must hold against every cell, and the
    oracle is measured on the same grid, so neither side is judged by one optimiser's quirk.
    """
    return {
        attacker_name(name, lr): [
            round(acc, 4)
            for acc in relearn_curve(net, train_x, train_labels, eval_x, eval_labels, unit_labels, stop_acc, lr, max_steps, name)
        ]
        for name, lr in attackers
    }


def relearn_stop(ceiling: float, headrooms: Sequence[float]) -> float:
    """The accuracy past which the oracle's targets are ``ceiling`` alone (:func:`relearn_targets`): a curve may stop there."""
    return ceiling + min(headrooms)


def relearn_targets(curves: Mapping[str, Sequence[float]], ceiling: float, headrooms: Sequence[float]) -> list[float]:
    """The accuracies a relearning is timed to where ``curves`` are the reference oracle's: ``ceiling`` where the oracle
    learns the class back past ``ceiling`` plus the smallest headroom, else each headroom under the best it reaches.

    Why not ``ceiling`` alone: two confusable digits forgotten together (7 and 9, 3 and 8) are learned back from a hundred
    images to about 85-91% by every network, the oracles alike. Steps to 90% then time the plateau's height, not how fast
    the class comes back: one oracle reached it in 99 steps, another never in 3000. Targets under the oracle's own plateau
    are always reached by it, and several of them average out the plateau's jitter. A class learned back further (every
    single digit) is timed to ``ceiling``, as before; its curves stop at :func:`relearn_stop`.
    """
    best = max(max(curve) for curve in curves.values())
    return [ceiling] if best >= relearn_stop(ceiling, headrooms) else [best - headroom for headroom in headrooms]


def mean_steps(curves: Mapping[str, Sequence[float]], targets: Sequence[float]) -> float | None:
    """The attacker's best steps to each of ``targets`` (the fewest over the grid's ``curves``), averaged.

    A target that no cell reaches counts as the cap plus one step (the longest curve's length): the network is slower
    there than it could be shown to be. ``None`` where no target is reached at all.
    """
    steps = [min((s for curve in curves.values() if (s := steps_to(curve, target)) is not None), default=None) for target in targets]
    if all(s is None for s in steps):
        return None
    never = max(len(curve) for curve in curves.values())
    return sum(never if s is None else s for s in steps) / len(steps)


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
