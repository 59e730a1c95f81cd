"""Check 3 (gap to the oracle) and check 8 (the verdict), from the numbers of the other checks alone.

The verdict never looks at what method made a checkpoint, only at evidence against the oracle, in
this order (the first that applies names it; every piece of evidence is listed either way):

* ``incomplete``: the outputs still produce the class. The forget set's accuracy, or the forget
  classes' test accuracy, or the share of starts (real images of other classes, or noise) that
  gradient ascent drives to the class, is clearly above the oracle's. In random-sample mode also:
  the forget samples still look like members (MIA efficacy clearly below the oracle's).
* ``hides``: the outputs look forgotten, but the representation still holds the class. A linear
  probe on some hidden layer ranks the class far better than the oracle's same layer allows, or the
  attacker's best relearning brings it back much faster than the oracle learns it, or fine-tuning on
  retain data alone brings it back where it does not for the oracle.
* ``damages``: nothing of the class is left, but neither is the model's utility: its test
  accuracy on the retain classes is clearly below the oracle's. A fresh network trained for a few
  steps "forgets" every class it was never taught; this keeps it from passing as unlearning.
* ``forgets``: none of these. In random-sample mode there is no class to probe, so ``hides`` cannot
  be told apart and the verdict rests on the output and utility evidence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from unlearning.evaluation.probe import INTERVAL_LEVEL
from unlearning.evaluation.relearn import mean_steps

GAP_METRICS = ("ua", "ra", "ta", "mia")
#: the verdict's lists of evidence, in the order they decide it
EVIDENCE = ("output_evidence", "representation_evidence", "utility_evidence")
PROBE_KEY = re.compile(r"probe_auc_layer(\d+)$")


@dataclass(frozen=True)
class Thresholds:
    """Where the evidence becomes a verdict, set on a calibration set of SeedMLP checkpoints (forget class 9,
    the bench's five-epoch recipe, seeds 0-2; ``python -m unlearning.evaluation.calibrate`` rebuilds the set
    and prints every number below). The set: each seed's oracle judged against the other seeds' oracles
    (must be ``forgets``), the pretrained models, the head mask (forget logit at -1e4), selective gradient,
    the pretrained model distilled from itself with the forget logit pinned at -1e4 (must not be
    ``forgets``), and a fresh network distilled for 100 steps on retain data (89% retain: must not be
    ``forgets``). Second set: the oracles of every digit and of four replacement pairs on seeds 0-5
    (configs/bench_all_classes.yaml and configs/bench_fresh_seeds.yaml) and of fifteen more pairs on seeds 0-2 (ten
    replaced, five forgotten together; configs/bench_pairs.yaml), each judged against its experiment's other seeds
    (``calibrate --oracles``): 510 pairs that must all be ``forgets``. Every limit that the oracles vary on sits past
    the most demanding pair by a tenth of its value, rounded outward (:func:`~.calibrate.rule_limit`; until 2026-12-07
    only a limit an oracle crossed was moved, so two had drifted off the rule: docs/evidence.md has the before and
    after). The limits no oracle pair differs on (``acc_margin``, ``recovery_margin``: every oracle reads 0) are floors,
    the smallest difference that counts. Tests pin every default at its boundary.

    Args:
        acc_margin: percentage points of forget accuracy (forget set, or forget classes' test set)
            above the oracle's that count as "still produced". Oracles score 0 and the pretrained
            models 92-94 points more; a head bias lowered only to -5 still leaves 47%.
        reach_margin: percentage points of reachability above the oracle's from real images of the other classes,
            on either norm. An oracle is reached from at most 14.1 points more of them than another seed's oracle
            (replace 9->7, seed 0 against seed 1): the limit is that plus a tenth, rounded outward (25 before, which
            let selective gradient's forget 1 seed 2 pass, reached from 21.9% of the real starts against its oracle's
            0%). The pretrained models are reached from 89-100 points more than their oracle, selective gradient
            (digit 9) from 52-89.
        noise_reach_margin: the same from noise starts, whose reachability measures a unit's response off the data,
            where a never-trained unit can win too: the oracles of two held-out replacement pairs have their
            never-trained old unit reached from 87.5% (9->7, seed 0, L∞) and 29.7% (3->8, seed 0, L2) of the noise
            starts, against 0% for their other seeds' oracles. The limit is 87.5 plus a tenth, rounded outward: a
            noise start convicts a model only where nearly all of them reach the class and almost none of the
            oracle's do (the pretrained models: more than 97 points above on 98 of their 153 bench runs). Until
            2026-12-06 one ``reach_margin`` of 25 held for both kinds, against the rule above, because moving it
            past 87.5 would have blinded the real starts as well.
        probe_ratio: some hidden layer still encodes the class when its probe's misranked share of
            (forget, other) pairs, 1 - AUC, is below this fraction of the oracle's at the same layer.
            At its most telling layer an oracle of digit 9 is at 0.51-1.22x another seed's oracle, but
            oracles of other digits go down to 0.28x (forget 0, seed 0 against seed 2; 0.37-0.38x for
            forget 5 and replace 1->7): the limit, 0.4 before, is 0.25. The head-mask and pinned-logit
            models sit at 0.12-0.23x their oracle; selective gradient's 0.20-0.27x (it is called
            ``incomplete`` by its outputs anyway).
        relearn_ratio: the class comes back "at once" when the attacker's best relearning (fewest
            steps over the optimiser and learning-rate grid, averaged over the oracle's targets:
            :func:`~.relearn.relearn_targets`) takes at most this fraction of the oracle's. Oracles of one
            digit relearn in 4-8 steps, so one takes 0.5x another's; over every digit the lowest is 0.38.
            Two confusable digits forgotten together are learned back to only 85-91% by every network, so
            they are timed to targets under the oracle's plateau, where the oracles of 7+9 read down to
            0.254x each other (seed 2 against seed 0): the limit is that less a tenth, rounded outward
            (0.25 before, set on digit 9 alone, with a 90% target that one oracle of 7+9 crossed). The
            pretrained models need 0 steps, selective gradient 2-3 on digit 9 and 0.06-0.17x on [3, 5].
        recovery_margin: percentage points of forget-class test accuracy that fine-tuning on retain
            data alone brings back above what it brings back for the oracle. The pretrained models
            keep 92-94%; no other case (and no oracle) gets anything back.
        proto_margin: percentage points of forget-class test accuracy that prototypical relearning (no gradient
            step, :func:`~unlearning.evaluation.attacks.prototype_relearn`) brings back above what it brings back for
            the oracle. Oracles themselves spread widely under it, 0.6-86% (the features of a network that never saw
            the class often set it apart anyway), and one stands 53.0 points above another seed's (replace 7->3, seed
            0 against seed 2; forget 1, seed 2 against seed 4, 52.95): the limit is that plus a tenth, rounded outward
            (48 from seeds 0-2 alone). The pretrained models and the head mask reach 93-99.8%. Quantisation (8 and 4
            bits) is read with ``acc_margin``: no oracle gains anything under it.
        utility_margin: percentage points of retain-class test accuracy (TA) below the oracle's that
            count as damage. Oracles of digit 9 lie within 0.44 points of each other, but replace 3->8's
            within 1.15 (seed 0 against seed 1; forget 4's within 1.01): the limit is that plus a tenth, rounded
            outward (1.0 on digit 9 alone, 1.2 from forget 4). Every other case of the first set is within 0.63 of its
            oracle; the distilled fresh networks are 8-10 below.
        mia_margin: random-sample mode only: percentage points of MIA efficacy below the oracle's
            that mean the forget samples still look like training members.
    """

    acc_margin: float = 5.0
    reach_margin: float = 16.0
    noise_reach_margin: float = 97.0
    probe_ratio: float = 0.25
    relearn_ratio: float = 0.22
    recovery_margin: float = 5.0
    proto_margin: float = 59.0
    utility_margin: float = 1.3
    class_margin: float = 10.0
    mia_margin: float = 20.0


def oracle_gap(metrics: dict, oracle: dict) -> dict[str, float]:
    """|metric - oracle| on UA, RA, TA and MIA, and their mean ``avg`` (SalUn's "Avg. Gap")."""
    gap = {k: abs(metrics[k] - oracle[k]) for k in GAP_METRICS}
    gap["avg"] = sum(gap.values()) / len(gap)
    return gap


def reach_keys(metrics: dict, start: str = "") -> list[str]:
    """The reachability results present (``reach_<start>_<norm>``), of one start kind (``noise``, ``real``) if given."""
    return [k for k in metrics if k.startswith(f"reach_{start}") and not k.endswith("_steps")]


def reach_margin(key: str, thresholds: Thresholds) -> float:
    """The margin a reachability result ``reach_<start>_<norm>`` is judged by: noise starts have their own."""
    return thresholds.noise_reach_margin if key.startswith("reach_noise") else thresholds.reach_margin


def quant_keys(metrics: dict) -> list[str]:
    """The quantisation results present (``quant<bits>_acc``)."""
    return [k for k in metrics if re.fullmatch(r"quant\d+_acc", k)]


def probe_ratios(metrics: dict, oracle: dict) -> dict[int, float]:
    """Per hidden layer both have: the probe's misranked share of pairs (1 - AUC) over the oracle's at that layer."""
    ratios = {}
    for key, auc in metrics.items():
        match = PROBE_KEY.match(key)
        if match and key in oracle:
            ratios[int(match.group(1))] = (1 - auc) / max(1 - oracle[key], 1e-12)
    return ratios


def relearning(metrics: dict, oracle: dict) -> tuple[float | None, float | None]:
    """``(steps, oracle_steps)``: the attacker's best mean steps to the oracle's relearning targets, of the network behind
    ``metrics`` and of the oracle (:func:`~.relearn.mean_steps`); ``steps`` is ``None`` where no target was reached, both
    where either network was not attacked. The oracle reaches its own targets by construction
    (:func:`~.relearn.relearn_targets`), so ``oracle_steps`` is a number wherever it was attacked."""
    if "relearn_curves" not in metrics or "relearn_curves" not in oracle:
        return None, None
    targets = oracle["relearn_targets"]
    return mean_steps(metrics["relearn_curves"], targets), mean_steps(oracle["relearn_curves"], targets)


def targets_text(targets: Sequence[float]) -> str:
    """``90%``, or ``80.6-88.6%``: the relearning targets, as reports quote them."""
    low, high = min(targets), max(targets)
    return f"{high:g}%" if low == high else f"{low:.1f}-{high:.1f}%"


def worst_class(metrics: dict, oracle: dict) -> tuple[int, float] | None:
    """``(class, points)``: the retain class whose test accuracy falls furthest below the oracle's same class; ``None``
    where the metrics hold no per-class accuracies (random-sample mode, or numbers from before they were kept)."""
    classes = metrics.get("retain_classes")
    if not classes or "class_acc" not in oracle:
        return None
    return max(((c, oracle["class_acc"][c] - metrics["class_acc"][c]) for c in classes), key=lambda item: (item[1], -item[0]))


def most_telling_layer(metrics: dict, oracle: dict) -> tuple[int, float] | None:
    """``(layer, ratio)`` of the hidden layer whose probe finds the class best relative to the oracle's; ``None`` without probes."""
    ratios = probe_ratios(metrics, oracle)
    return min(ratios.items(), key=lambda item: (item[1], item[0])) if ratios else None


def _targets(targets: Sequence[float]) -> str:
    text = targets_text(targets)
    return text if len(set(targets)) == 1 else f"each of {len(targets)} targets, {text} (under the oracle's best),"


def _spread(probe_intervals: Mapping[int, Sequence[float]] | None, layer: int) -> str:
    if not probe_intervals or layer not in probe_intervals:
        return ""
    low, high = probe_intervals[layer]
    return f"; {INTERVAL_LEVEL:.0%} of resamples of the held-out samples: {low:.2f}-{high:.2f}x"


def verdict(
    metrics: dict, oracle: dict, thresholds: Thresholds = Thresholds(), probe_intervals: Mapping[int, Sequence[float]] | None = None
) -> dict:
    """``{"verdict": ..., "output_evidence": [...], "representation_evidence": [...], "utility_evidence": [...]}``.

    ``metrics`` and ``oracle`` are flat metric dicts as the suite produces them; a check that
    did not apply (its keys missing) contributes no evidence. ``probe_intervals``: per hidden layer, the probe ratio's
    interval over resamples of the held-out samples (:func:`~.probe.misranked_ratio_interval`), quoted beside a probe
    that decides the verdict; it decides nothing itself.
    """
    t = thresholds
    class_mode = "forget_test_acc" in metrics
    output: list[str] = []
    forget_acc, oracle_forget_acc = 100.0 - metrics["ua"], 100.0 - oracle["ua"]
    if forget_acc > oracle_forget_acc + t.acc_margin:
        output.append(
            f"forget-set accuracy {forget_acc:.1f}% exceeds the oracle's {oracle_forget_acc:.1f}% by more than {t.acc_margin:g} points"
        )
    if class_mode and metrics["forget_test_acc"] > oracle["forget_test_acc"] + t.acc_margin:
        output.append(
            f"forget-class test accuracy {metrics['forget_test_acc']:.1f}% exceeds the oracle's {oracle['forget_test_acc']:.1f}% "
            f"by more than {t.acc_margin:g} points"
        )
    for key in reach_keys(metrics):
        if key in oracle and metrics[key] > oracle[key] + (limit := reach_margin(key, t)):
            output.append(f"{key}: {metrics[key]:.1f}% of starts reach the class, the oracle {oracle[key]:.1f}% (margin {limit:g})")
    if not class_mode and metrics["mia"] < oracle["mia"] - t.mia_margin:
        output.append(f"MIA efficacy {metrics['mia']:.1f}% is more than {t.mia_margin:g} points below the oracle's {oracle['mia']:.1f}%")

    representation: list[str] = []
    for layer, ratio in sorted(probe_ratios(metrics, oracle).items()):
        if ratio < t.probe_ratio:
            key = f"probe_auc_layer{layer}"
            representation.append(
                f"a linear probe on hidden layer {layer} misranks {1 - metrics[key]:.4f} of pairs, {ratio:.2f}x the oracle's "
                f"{1 - oracle[key]:.4f} (limit {t.probe_ratio:g}x{_spread(probe_intervals, layer)})"
            )
    steps, oracle_steps = relearning(metrics, oracle)
    if steps is not None and steps <= t.relearn_ratio * oracle_steps:
        representation.append(
            f"the attacker's best relearns the class to {_targets(oracle['relearn_targets'])} in {steps:.4g} steps on average, "
            f"the oracle's in {oracle_steps:.4g} (limit {t.relearn_ratio:g}x)"
        )
    proto, oracle_proto = metrics.get("proto_acc"), oracle.get("proto_acc")
    if proto is not None and oracle_proto is not None and proto > oracle_proto + t.proto_margin:
        representation.append(
            f"a prototype of the attacker's forget images, set into the head (no gradient step), brings the class back to "
            f"{proto:.1f}% test accuracy, the oracle's to {oracle_proto:.1f}% (margin {t.proto_margin:g})"
        )
    for key in quant_keys(metrics):
        if key in oracle and metrics[key] > oracle[key] + t.acc_margin:
            representation.append(
                f"rounding the weights to {key.removeprefix('quant').removesuffix('_acc')} bits brings the class back to "
                f"{metrics[key]:.1f}% test accuracy net of the other images it then calls the class, the oracle's to "
                f"{oracle[key]:.1f}% (margin {t.acc_margin:g})"
            )
    recovered, oracle_recovered = metrics.get("recovered_acc"), oracle.get("recovered_acc")
    if recovered is not None and oracle_recovered is not None and recovered > oracle_recovered + t.recovery_margin:
        representation.append(
            f"fine-tuning on retain data alone brings the class back to {recovered:.1f}% test accuracy, the oracle's to "
            f"{oracle_recovered:.1f}% (margin {t.recovery_margin:g})"
        )

    utility: list[str] = []
    if metrics["ta"] < oracle["ta"] - t.utility_margin:
        utility.append(
            f"retain-class test accuracy {metrics['ta']:.2f}% is more than {t.utility_margin:g} points below the oracle's {oracle['ta']:.2f}%"
        )

    if (worst := worst_class(metrics, oracle)) is not None and worst[1] > t.class_margin:
        c = worst[0]
        utility.append(
            f"class {c}'s test accuracy {metrics['class_acc'][c]:.1f}% is more than {t.class_margin:g} points below the oracle's "
            f"{oracle['class_acc'][c]:.1f}%"
        )

    name = "incomplete" if output else "hides" if representation else "damages" if utility else "forgets"
    return {"verdict": name, "output_evidence": output, "representation_evidence": representation, "utility_evidence": utility}
