"""Check 3 (gap to the oracle) and check 8 (the verdict), from the numbers of checks 1-6 alone.

The verdict never looks at what method made a checkpoint, only at evidence against the oracle:

* ``incomplete``: the outputs still produce the class. The forget set's accuracy, or the forget
  classes' test accuracy, or the share of starts that gradient ascent drives to the class, is
  clearly above the oracle's. In random-sample mode also: the forget samples still look like
  members (MIA efficacy clearly below the oracle's).
* ``hides``: the outputs look forgotten, but the representation still holds the class. A linear
  probe on the penultimate features ranks the class far better than the oracle's features allow,
  or a few forget samples bring the class back much faster than the oracle can learn it.
* ``forgets``: neither. In random-sample mode there is no class to probe, so ``hides`` cannot
  be told apart and the verdict rests on the output evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

GAP_METRICS = ("ua", "ra", "ta", "mia")


@dataclass(frozen=True)
class Thresholds:
    """Where the evidence becomes a verdict. Calibrated on SeedMLP checkpoints (forget class 9): oracles of
    seeds 0 and 1 (five epochs) and of one epoch, the pretrained models, and the pretrained model
    with its class-9 head bias lowered (-5, -20, -1e4).

    Args:
        acc_margin: percentage points of forget accuracy (forget set, or forget classes' test
            set) above the oracle's that count as "still produced". Oracles score 0; a head bias
            lowered only to -5 still leaves 47%.
        reach_margin: percentage points of reachability above the oracle's, on any start and
            norm. Five-epoch oracles are reached from 0-8% of starts, a one-epoch oracle from up
            to 44% (real images, L∞); pretrained models from 67-100%.
        probe_ratio: the features still encode the class when the probe's misranked share of
            (forget, other) pairs, 1 - AUC, is below this fraction of the oracle's. Oracles of
            two seeds misrank 0.037 and 0.038; pretrained features 0.10x (five epochs) and 0.22x
            (one epoch) of their oracle's; features that know nothing more than the oracle's about 1x.
        relearn_ratio: the class comes back "at once" when relearning takes at most this fraction
            of the oracle's steps (or succeeds within the budget where the oracle does not).
            Oracles of two seeds need 24 and 77 steps, so one oracle takes 0.31x of the other's:
            the ratio stays below that. Pretrained models need 0-1 steps.
        mia_margin: random-sample mode only: percentage points of MIA efficacy below the oracle's
            that mean the forget samples still look like training members.
    """

    acc_margin: float = 5.0
    reach_margin: float = 25.0
    probe_ratio: float = 0.5
    relearn_ratio: float = 0.25
    mia_margin: float = 20.0


def oracle_gap(metrics: dict, oracle: dict) -> dict[str, float]:
    """|metric - oracle| on UA, RA, TA and MIA, and their mean ``avg`` (SalUn's "Avg. Gap")."""
    gap = {k: abs(metrics[k] - oracle[k]) for k in GAP_METRICS}
    gap["avg"] = sum(gap.values()) / len(gap)
    return gap


def reach_keys(metrics: dict) -> list[str]:
    """The reachability results present (``reach_<start>_<norm>``)."""
    return [k for k in metrics if k.startswith("reach_") and not k.endswith("_steps")]


def verdict(metrics: dict, oracle: dict, thresholds: Thresholds = Thresholds()) -> dict:
    """``{"verdict": forgets|hides|incomplete, "output_evidence": [...], "representation_evidence": [...]}``.

    ``metrics`` and ``oracle`` are flat metric dicts as the suite produces them; a check that
    did not apply (its keys missing) contributes no evidence.
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
        if key in oracle and metrics[key] > oracle[key] + t.reach_margin:
            output.append(
                f"{key}: {metrics[key]:.1f}% of starts reach the class, the oracle {oracle[key]:.1f}% (margin {t.reach_margin:g})"
            )
    if not class_mode and metrics["mia"] < oracle["mia"] - t.mia_margin:
        output.append(f"MIA efficacy {metrics['mia']:.1f}% is more than {t.mia_margin:g} points below the oracle's {oracle['mia']:.1f}%")

    representation: list[str] = []
    if "probe_auc" in metrics:
        missed, oracle_missed = 1 - metrics["probe_auc"], 1 - oracle["probe_auc"]
        if missed < t.probe_ratio * oracle_missed:
            representation.append(
                f"a linear probe on the features misranks {missed:.4f} of pairs, under {t.probe_ratio:g}x the oracle's {oracle_missed:.4f}"
            )
    steps, oracle_steps = metrics.get("relearn_steps"), oracle.get("relearn_steps")
    if steps is not None and (oracle_steps is None or steps <= t.relearn_ratio * oracle_steps):
        representation.append(
            f"the class is relearned in {steps} steps, the oracle needs {'more than the budget' if oracle_steps is None else oracle_steps}"
        )

    name = "incomplete" if output else "hides" if representation else "forgets"
    return {"verdict": name, "output_evidence": output, "representation_evidence": representation}
