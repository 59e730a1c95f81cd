"""Runs checks 1-7 on networks: one at a time, then several beside a pretrained one.

Every check that needs a class (probe, relearn, reachability) is marked not applicable in
random-sample mode, and relearn and reachability also when no output unit stands for the
forgotten class any more (a replacement that reused its unit).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from unlearning.data.mnist import MEAN, STD
from unlearning.errors import UsageError
from unlearning.evaluation.accuracy import accuracy_check, notebook_metrics
from unlearning.evaluation.attacks import QUANT_BITS, prototype_relearn, quantized_recovery
from unlearning.evaluation.data import EvalData, choose
from unlearning.evaluation.mia import Attack, mia_check, mia_features
from unlearning.evaluation.outputs import label_log_probabilities, layer_features, net_logits, predicted_labels, units_for
from unlearning.evaluation.probe import fit_probe, probe_metrics
from unlearning.evaluation.reachability import Norm, reach_class
from unlearning.evaluation.relearn import OptimizerName, relearn_attack, relearn_stop, relearn_targets, retain_finetune_recovery

REACH_STARTS = ("noise", "real")
REACH_NORMS: tuple[Norm, ...] = ("linf", "l2")


@dataclass(frozen=True)
class Budget:
    """What each check may spend. The defaults keep a whole evaluation (three SeedMLPs) to seconds on 2 CPU cores.

    Args:
        train_samples: at most this many retain and forget training samples (seeded) for RA, UA and the MIA.
        mia_per_side: members and non-members each that the MIA's attack is fitted on.
        mia_attack: ``threshold`` (Song & Mittal's metric attack, stable) or ``svc`` (SalUn's exact RBF SVM; see ``unlearning.evaluation.mia``).
        probe_per_side: forget-class and other training samples each that the probe of every hidden layer is fitted on.
        probe_draws: bootstrap resamples of the held-out samples behind each probe ratio's interval (``unlearning.evaluation.probe.misranked_ratio_interval``).
        relearn_samples: forget-class training images the relearn attack trains on, with as many retain
            images beside them so that answering "forget class" everywhere cannot pass.
        relearn_adam_lrs: the attacker's Adam learning rates; the fewest steps over the whole grid (Adam and SGD)
            is the result.
        relearn_sgd_lrs: the attacker's learning rates for SGD with momentum 0.9.
        relearn_steps: the attacker's step cap for each optimizer and learning rate.
        relearn_oracle_steps: the same cap for the oracle, longer: its curves set the targets, so they must show where it
            levels off.
        relearn_target: the forget-class accuracy (%) on the held-out images that the attacker is timed to.
        relearn_headrooms: where the oracle learns the class back to less than relearn_target plus the smallest of these,
            points under the oracle's best that the attacker is timed to instead, one target each.
        recover_steps: Adam steps of the retain-only fine-tuning attack.
        recover_lr: the retain-only fine-tuning attack's learning rate.
        recover_batch: the retain-only fine-tuning attack's batch size.
        reach_starts: starts per kind (noise, real images of other classes) of the reachability attack.
        reach_steps: the reachability attack's gradient steps per start.
        linf_eps: the L∞ ball's radius in pixel units ([0, 1]).
        linf_step: the L∞ attack's step in pixel units.
        l2_eps: the L2 ball's radius in pixel units.
        l2_step: the L2 attack's step in pixel units.
        sample_seed: every subsample, start and noise image (the data split's seed is the run's own).
    """

    train_samples: int = 10_000
    mia_per_side: int = 5000
    mia_attack: Attack = "threshold"
    probe_per_side: int = 1000
    probe_draws: int = 200
    relearn_samples: int = 100
    relearn_adam_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    relearn_sgd_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    relearn_steps: int = 100
    relearn_oracle_steps: int = 400
    relearn_target: float = 90.0
    relearn_headrooms: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
    recover_steps: int = 100
    recover_lr: float = 1e-3
    recover_batch: int = 128
    reach_starts: int = 64
    reach_steps: int = 50
    linf_eps: float = 0.3
    linf_step: float = 0.02
    l2_eps: float = 3.0
    l2_step: float = 0.2
    sample_seed: int = 0

    def __post_init__(self) -> None:
        """Refuse a budget no check can run on (``--mia-per-side 0`` failed deep in the MIA; a negative step cap passed)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "sample_seed" or isinstance(value, str):
                continue
            if any(v <= 0 for v in (value if isinstance(value, tuple) else (value,))):
                raise UsageError(f"--{f.name.replace('_', '-')} must be positive, got {value}")
        if self.relearn_oracle_steps < self.relearn_steps:
            raise UsageError(
                f"--relearn-oracle-steps ({self.relearn_oracle_steps}) must be at least --relearn-steps ({self.relearn_steps})"
            )

    def attackers(self) -> list[tuple[OptimizerName, float]]:
        """The relearning grid: ``(optimizer, lr)`` cells."""
        return [("adam", lr) for lr in self.relearn_adam_lrs] + [("sgd", lr) for lr in self.relearn_sgd_lrs]

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
    probe_scores: dict[int, np.ndarray] = field(default_factory=dict)  # per hidden layer, on the samples of probe_held_out


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
    in_probe, is_forget = probe_held_out(data)
    result.probe_scores = _probe_scores(net, data, retain, forget, in_probe, budget)
    is_forget = is_forget.cpu().numpy()  # once, not per layer
    for layer, scores in result.probe_scores.items():
        result.metrics |= {f"{key}_layer{layer}": value for key, value in probe_metrics(scores, is_forget).items()}
    target_units = units_for(data.forget_classes, unit_labels)
    if not target_units:
        reason = f"no output unit stands for class {list(data.forget_classes)} any more"
        result.not_applicable.update(relearn=reason, reach=reason)
        return result
    result.metrics.update(_relearn(net, unit_labels, data, forget, budget))
    result.metrics["recovered_acc"] = _recover(net, unit_labels, data, retain, budget)
    result.metrics.update(_gradient_free_attacks(net, unit_labels, data, forget, budget))
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


def probe_held_out(data: EvalData) -> tuple[Tensor, Tensor]:
    """The held-out samples the probes score, the retain and forget classes' (a new class is neither), and which of
    those are the forget class's."""
    in_probe = data.test_mask(data.retain_classes + data.forget_classes)
    return in_probe, data.test_mask(data.forget_classes)[in_probe]


def _probe_scores(
    net: nn.Module, data: EvalData, retain: Tensor, forget: Tensor, in_probe: Tensor, budget: Budget
) -> dict[int, np.ndarray]:
    """A linear probe "forget class vs the rest" on every hidden layer, numbered from 1 at the input: its scores on the
    held-out samples ``in_probe`` marks (:func:`probe_held_out`).

    Every layer, not only the penultimate one: the first layer of an MLP holds most of its weights,
    and detectors of the class left there are invisible to a probe of the last.
    """
    train_idx = torch.cat([retain, forget])
    probe_per_side = min(budget.probe_per_side, len(retain), len(forget))
    # the rows the probe fits on: only these need features
    rows = torch.cat(
        [choose(len(retain), probe_per_side, budget.sample_seed), len(retain) + choose(len(forget), probe_per_side, budget.sample_seed + 1)]
    )
    train_features = layer_features(net, data.train_x[train_idx[rows.to(train_idx.device)]])
    train_is_forget = np.concatenate([np.zeros(probe_per_side, bool), np.ones(probe_per_side, bool)])
    test_features = layer_features(net, data.test_x[in_probe])
    return {
        i: fit_probe(train_features[layer].cpu().numpy(), train_is_forget, probe_per_side, budget.sample_seed).decision_function(
            test_features[layer].cpu().numpy()
        )
        for i, layer in enumerate(train_features, start=1)
    }


def _relearn(net: nn.Module, unit_labels: Tensor, data: EvalData, forget: Tensor, budget: Budget) -> dict[str, Any]:
    """``relearn_curves``, per cell of the attacker's grid, until the accuracy passes every target this network could set as
    an oracle; ``relearn_targets``, those targets (:func:`~.relearn.relearn_targets`)."""
    n = budget.relearn_samples
    retain = data.splits["retain"]
    rows = torch.cat([
        forget[choose(len(forget), n, budget.sample_seed + 2).to(forget.device)],
        retain[choose(len(retain), n, budget.sample_seed + 3).to(retain.device)],
    ])  # fmt: skip
    held_out = data.test_mask(data.forget_classes)
    curves = relearn_attack(
        net, data.train_x[rows], data.train_y[rows], data.test_x[held_out], data.test_y[held_out], unit_labels,
        budget.attackers(), relearn_stop(budget.relearn_target, budget.relearn_headrooms), budget.relearn_steps,
    )  # fmt: skip
    return {"relearn_curves": curves, "relearn_targets": relearn_targets(curves, budget.relearn_target, budget.relearn_headrooms)}


def _gradient_free_attacks(net: nn.Module, unit_labels: Tensor, data: EvalData, forget: Tensor, budget: Budget) -> dict[str, float]:
    """``proto_acc``: prototypical relearning from the relearning attacker's forget images, paying 1% of its retain images
    (as many as nine times its forget images, the natural mix); ``quant<b>_acc``: the forget classes' test accuracy
    after ``b``-bit rounding, less the share of the other test images the rounded copy gives a forget label."""
    metrics = {
        f"quant{bits}_acc": quantized_recovery(net, data.test_x, data.test_y, unit_labels, data.forget_classes, bits) for bits in QUANT_BITS
    }
    if not isinstance(getattr(net, "head", None), nn.Linear):
        return metrics
    held_out = data.test_mask(data.forget_classes)
    shown = forget[choose(len(forget), budget.relearn_samples, budget.sample_seed + 2).to(forget.device)]
    retain = data.splits["retain"]
    retain = retain[choose(len(retain), 9 * len(shown), budget.sample_seed + 6).to(retain.device)]
    supports = {unit: data.train_x[shown[data.train_y[shown] == unit_labels[unit]]] for unit in units_for(data.forget_classes, unit_labels)}
    supports = {unit: x for unit, x in supports.items() if len(x)}
    if supports:
        metrics["proto_acc"] = prototype_relearn(
            net, supports, data.train_x[retain], data.test_x[held_out], data.test_y[held_out], unit_labels
        )
    return metrics


def _recover(net: nn.Module, unit_labels: Tensor, data: EvalData, retain: Tensor, budget: Budget) -> float:
    held_out = data.test_mask(data.forget_classes)
    return retain_finetune_recovery(
        net, data.train_x[retain], data.train_y[retain], data.test_x[held_out], data.test_y[held_out], unit_labels,
        budget.recover_steps, budget.recover_lr, budget.recover_batch, seed=budget.sample_seed + 5,
    )  # fmt: skip


def _reach_starts(kind: str, data: EvalData, budget: Budget) -> Tensor:
    """Uniform noise, or real test images of the retain classes, in pixel space."""
    generator = torch.Generator().manual_seed(budget.sample_seed + 4)
    if kind == "noise":
        return torch.rand(budget.reach_starts, 1, 28, 28, generator=generator).to(data.test_x.device)
    candidates = data.test_mask(data.retain_classes).nonzero().flatten()
    chosen = candidates[choose(len(candidates), budget.reach_starts, budget.sample_seed + 4).to(candidates.device)]
    return (data.test_x[chosen] * STD + MEAN).clamp(0, 1)


def evaluate_nets(
    nets: dict[str, tuple[nn.Module, Tensor]], data: EvalData, budget: Budget, pretrained: str, oracle: str | None = None
) -> dict[str, NetEvaluation]:
    """``evaluate_net`` for each named network, plus check 7 against the ``pretrained`` one's TA.

    The ``oracle`` relearns for ``budget.relearn_oracle_steps`` instead of ``budget.relearn_steps``: its curves set every
    network's relearning targets (:func:`~.relearn.relearn_targets`), so they must run on to where it levels off.
    """
    budgets = {name: budget for name in nets}
    if oracle is not None:
        budgets[oracle] = oracle_budget(budget)
    results = {name: evaluate_net(net, unit_labels, data, budgets[name]) for name, (net, unit_labels) in nets.items()}
    pretrained_ta = results[pretrained].metrics["ta"]
    for result in results.values():
        result.metrics.update(notebook_metrics(100.0 - result.metrics["ua"], result.metrics["ta"], pretrained_ta))
    return results


def oracle_budget(budget: Budget) -> Budget:
    """``budget`` as the oracle spends it: the oracle's relearning cap in place of the others'."""
    return replace(budget, relearn_steps=budget.relearn_oracle_steps)
