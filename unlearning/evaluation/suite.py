"""Runs checks 1-7 on networks: one at a time, then several beside a pretrained one.

Every check that needs a class (probe, relearn, reachability) is marked not applicable in
random-sample mode, and relearn and reachability also when no output unit stands for the
forgotten class any more (a replacement that reused its unit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from unlearning.data.mnist import MEAN, STD
from unlearning.evaluation.accuracy import accuracy_check, notebook_metrics
from unlearning.evaluation.data import EvalData, choose
from unlearning.evaluation.mia import Attack, mia_check, mia_features
from unlearning.evaluation.outputs import label_log_probabilities, net_features, net_logits, predicted_labels, units_for
from unlearning.evaluation.probe import linear_probe
from unlearning.evaluation.reachability import Norm, reach_class
from unlearning.evaluation.relearn import relearn_steps

REACH_STARTS = ("noise", "real")
REACH_NORMS: tuple[Norm, ...] = ("linf", "l2")


@dataclass(frozen=True)
class Budget:
    """What each check may spend. The defaults keep a whole evaluation (three SeedMLPs) to seconds on 2 CPU cores.

    Args:
        train_samples: at most this many retain and forget training samples (seeded) for RA, UA and the MIA.
        mia_per_side: members and non-members each that the MIA's attack is fitted on.
        mia_attack: ``logistic`` (a threshold, stable) or ``svc`` (SalUn's exact RBF SVM; see :mod:`.mia`).
        probe_per_side: forget-class and other training samples each that the probe is fitted on.
        relearn_samples: forget-class training images the relearn test trains on, with as many retain
            images beside them so that answering "forget class" everywhere cannot pass.
        relearn_lr, relearn_steps, relearn_target: Adam's rate, the step cap, and the forget-class test accuracy (%) to reach.
        reach_starts: starts per kind (noise, real images of other classes).
        reach_steps: gradient steps per start.
        linf_eps, linf_step: the L∞ ball's radius and step in pixel units ([0, 1]).
        l2_eps, l2_step: the L2 ball's radius and step in pixel units.
        sample_seed: every subsample, start and noise image (the data split's seed is the run's own).
    """

    train_samples: int = 10_000
    mia_per_side: int = 5000
    mia_attack: Attack = "logistic"
    probe_per_side: int = 1000
    relearn_samples: int = 100
    relearn_lr: float = 1e-3
    relearn_steps: int = 100
    relearn_target: float = 90.0
    reach_starts: int = 64
    reach_steps: int = 50
    linf_eps: float = 0.3
    linf_step: float = 0.02
    l2_eps: float = 3.0
    l2_step: float = 0.2
    sample_seed: int = 0

    def ball(self, norm: Norm) -> tuple[float, float]:
        """``(eps, step)`` of a norm."""
        return (self.linf_eps, self.linf_step) if norm == "linf" else (self.l2_eps, self.l2_step)


@dataclass
class NetEvaluation:
    """One network's numbers and the inputs reachability ended on (for the figures).

    A check that does not apply leaves its keys out of ``metrics`` and says why in
    ``not_applicable``; ``None`` in ``metrics`` means a budget ran out (never relearned, never reached).
    """

    metrics: dict = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    reach_images: dict[str, Tensor] = field(default_factory=dict)


def evaluate_net(net: nn.Module, unit_labels: Tensor, data: EvalData, budget: Budget) -> NetEvaluation:
    """Checks 1, 2, 4, 5 and 6 on ``net`` (in eval mode, on ``data``'s device)."""
    result = NetEvaluation()
    seed = budget.sample_seed
    retain = data.splits["retain"][choose(len(data.splits["retain"]), budget.train_samples, seed).to(data.train_y.device)]
    forget = data.splits["forget"][choose(len(data.splits["forget"]), budget.train_samples, seed + 1).to(data.train_y.device)]
    labels, preds, probs = {}, {}, {}
    for name, x, y in (
        ("retain", data.train_x[retain], data.train_y[retain]),
        ("forget", data.train_x[forget], data.train_y[forget]),
        ("test", data.test_x, data.test_y),
    ):
        logits = net_logits(net, x)
        labels[name], preds[name] = y, predicted_labels(logits, unit_labels)
        probs[name] = label_log_probabilities(logits, unit_labels).exp()
    pairs = [tensor for split in ("forget", "retain", "test") for tensor in (labels[split], preds[split])]
    result.metrics.update(accuracy_check(*pairs, data.forget_classes, data.new_classes))

    features = {name: mia_features(probs[name], labels[name], preds[name]) for name in labels}
    non_member = data.test_mask(data.retain_classes).cpu().numpy()  # test samples of the classes the members come from
    non_members = {k: v[non_member] for k, v in features["test"].items()}
    result.metrics.update(mia_check(features["retain"], non_members, features["forget"], budget.mia_per_side, seed, budget.mia_attack))

    if not data.class_mode:
        reason = "random-sample forgetting has no class to probe, relearn or reach"
        result.not_applicable.update(probe=reason, relearn=reason, reach=reason)
        return result
    result.metrics.update(_probe(net, data, retain, forget, budget))
    target_units = units_for(data.forget_classes, unit_labels)
    if not target_units:
        reason = f"no output unit stands for class {list(data.forget_classes)} any more"
        result.not_applicable.update(relearn=reason, reach=reason)
        return result
    result.metrics["relearn_steps"] = _relearn(net, unit_labels, data, forget, budget)
    for start in REACH_STARTS:
        starts = _reach_starts(start, data, budget)
        for norm in REACH_NORMS:
            eps, step = budget.ball(norm)
            reach = reach_class(net, starts, target_units, norm, eps, step, budget.reach_steps)
            summary = reach.summary()
            result.metrics[f"reach_{start}_{norm}"] = summary["reach"]
            result.metrics[f"reach_{start}_{norm}_steps"] = summary["reach_steps"]
            result.reach_images[f"{start}_{norm}"] = reach.images
    return result


def _probe(net: nn.Module, data: EvalData, retain: Tensor, forget: Tensor, budget: Budget) -> dict[str, float]:
    train_idx = torch.cat([retain, forget])
    train_features = net_features(net, data.train_x[train_idx]).cpu().numpy()
    train_is_forget = np.concatenate([np.zeros(len(retain), bool), np.ones(len(forget), bool)])
    in_probe = data.test_mask(data.retain_classes + data.forget_classes)
    test_features = net_features(net, data.test_x[in_probe]).cpu().numpy()
    test_is_forget = data.test_mask(data.forget_classes)[in_probe].cpu().numpy()
    return linear_probe(train_features, train_is_forget, test_features, test_is_forget, budget.probe_per_side, budget.sample_seed)


def _relearn(net: nn.Module, unit_labels: Tensor, data: EvalData, forget: Tensor, budget: Budget) -> int | None:
    n = budget.relearn_samples
    retain = data.splits["retain"]
    rows = torch.cat([
        forget[choose(len(forget), n, budget.sample_seed + 2).to(forget.device)],
        retain[choose(len(retain), n, budget.sample_seed + 3).to(retain.device)],
    ])  # fmt: skip
    held_out = data.test_mask(data.forget_classes)
    return relearn_steps(
        net, data.train_x[rows], data.train_y[rows], data.test_x[held_out], data.test_y[held_out], unit_labels,
        budget.relearn_target, budget.relearn_lr, budget.relearn_steps,
    )  # fmt: skip


def _reach_starts(kind: str, data: EvalData, budget: Budget) -> Tensor:
    """Uniform noise, or real test images of the retain classes, in pixel space."""
    generator = torch.Generator().manual_seed(budget.sample_seed + 4)
    if kind == "noise":
        return torch.rand(budget.reach_starts, 1, 28, 28, generator=generator).to(data.test_x.device)
    candidates = data.test_mask(data.retain_classes).nonzero().flatten()
    chosen = candidates[choose(len(candidates), budget.reach_starts, budget.sample_seed + 4).to(candidates.device)]
    return (data.test_x[chosen] * STD + MEAN).clamp(0, 1)


def evaluate_nets(nets: dict[str, tuple[nn.Module, Tensor]], data: EvalData, budget: Budget, pretrained: str) -> dict[str, NetEvaluation]:
    """``evaluate_net`` for each named network, plus check 7 against the ``pretrained`` one's TA."""
    results = {name: evaluate_net(net, unit_labels, data, budget) for name, (net, unit_labels) in nets.items()}
    pretrained_ta = results[pretrained].metrics["ta"]
    for result in results.values():
        result.metrics.update(notebook_metrics(100.0 - result.metrics["ua"], result.metrics["ta"], pretrained_ta))
    return results
