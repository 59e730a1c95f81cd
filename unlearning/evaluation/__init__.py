"""The evidence suite: is a class forgotten, or only hidden? (``unlearning evaluate``)

Each check is a pure function on tensors or arrays, run on any network that follows the ``net``
contract (normalised ``(N, 1, 28, 28)`` in, 10 logits out, ``head(features(x))``):

1. :func:`~.accuracy.accuracy_check`: UA, RA, TA, forget-class and per-class test accuracy.
2. :func:`~.mia.mia_check`: SalUn's MIA efficacy on the forget set.
3. :func:`~.verdict.oracle_gap`: distance to the oracle on UA, RA, TA, MIA and their mean.
4. :func:`~.relearn.relearn_curve`: how fast a few forget samples bring the class back, timed to the oracle's
   targets by :func:`~.relearn.mean_steps`.
5. :func:`~.probe.linear_probe`: whether the penultimate features still separate the class.
6. :func:`~.reachability.reach_class`: whether gradient ascent on inputs still reaches the class.
7. :func:`~.accuracy.notebook_metrics`: the retrain notebook's effectiveness and utility ratios.
8. :func:`~.verdict.verdict`: forgets, hides or incomplete, against :class:`~.verdict.Thresholds`.

:mod:`.suite` runs them on a network; :func:`~.run.judge` on checkpoint files beside an oracle
and a pretrained model, for the command (:mod:`.cli`), and :func:`~.run.evaluate_against` for the
benchmark grid. This package knows networks only through :mod:`unlearning.checkpoints`.
"""

from unlearning.evaluation.accuracy import accuracy_check, notebook_metrics
from unlearning.evaluation.mia import member_threshold, mia_check, mia_efficacy, mia_features
from unlearning.evaluation.probe import linear_probe
from unlearning.evaluation.reachability import reach_class
from unlearning.evaluation.relearn import mean_steps, relearn_curve
from unlearning.evaluation.run import evaluate_against, judge
from unlearning.evaluation.verdict import Thresholds, oracle_gap, verdict

__all__ = [
    "Thresholds",
    "accuracy_check",
    "evaluate_against",
    "judge",
    "linear_probe",
    "mean_steps",
    "member_threshold",
    "mia_check",
    "mia_efficacy",
    "mia_features",
    "notebook_metrics",
    "oracle_gap",
    "reach_class",
    "relearn_curve",
    "verdict",
]
