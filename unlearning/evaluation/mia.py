"""Check 2: MIA efficacy, SalUn's membership-inference test of whether the forget set still looks trained on.

An attack classifier learns to tell members (retain training samples) from non-members (test
samples) by one feature of the model's softmax output; the forget samples are then classified,
and the efficacy is the percentage called non-members. A model that never saw them (the oracle)
should score high. Follows ``evaluation/SVC_MIA.py`` of OPTML-Group/Unlearn-Saliency: its five
features, balanced members and non-members, and its ``SVC(C=3, gamma="auto")`` as ``attack="svc"``.

Two departures, both for stability on MNIST, where a trained net's outputs on training and test
samples are almost indistinguishable:

* The default attack (``threshold``) is Song & Mittal's metric attack: a threshold on the
  feature, on the side that members lie on (confident, low entropy), placed where it best tells
  the fitted members from non-members; the ten-value ``prob`` feature has no single side and
  gets a standardised logistic regression. The RBF SVM's answer on a pretrained model's forget
  set flips between ~3% and ~90% with the subsample's seed; the threshold's moves by under one point.
  A threshold whose side is fitted too (a logistic regression on one feature) is not enough: on a
  network whose training and test outputs are almost alike, the side itself can come out reversed,
  and forgotten samples, far beyond the fitted range, are then all called members (0% where the
  oracle has 100%).
* The headline ``mia`` uses the modified entropy (Song & Mittal, 2021), the strongest of these
  metric attacks. Forgotten samples lie outside the range the attack was fitted on, and with
  plain confidence the threshold's direction, hence the efficacy, flipped between 0% and 100%
  for oracles trained one and five epochs; modified entropy put both at 100%.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import Tensor

from unlearning.evaluation.data import choose

#: SalUn's attack features, and the one the headline ``mia`` (and the gap to the oracle) uses
MIA_FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")
HEADLINE_FEATURE = "m_entropy"
Attack = Literal["threshold", "svc"]
#: the side members lie on for each one-value feature: +1 above the threshold, -1 below it
MEMBER_SIDE = {"correctness": 1, "confidence": 1, "entropy": -1, "m_entropy": -1}


def mia_features(probs: Tensor, labels: Tensor, preds: Tensor) -> dict[str, np.ndarray]:
    """Each attack feature as an ``(N, D)`` array, from label probabilities, true labels and predicted labels.

    ``m_entropy`` is Song & Mittal's modified entropy ``-(1-p_y) log p_y - sum_{i!=y} p_i log(1-p_i)``,
    which, unlike plain entropy, is low only when the model is confidently *right*.
    """
    tiny = torch.finfo(probs.dtype).tiny
    log_p = probs.clamp_min(tiny).log()
    log_not_p = (1 - probs).clamp_min(tiny).log()
    is_true = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, labels[:, None], True)
    columns = {
        "correctness": (preds == labels).to(probs.dtype)[:, None],
        "confidence": probs.gather(1, labels[:, None]),
        "entropy": -(probs * log_p).sum(1, keepdim=True),
        "m_entropy": -torch.where(is_true, (1 - probs) * log_p, probs * log_not_p).sum(1, keepdim=True),
        "prob": probs,
    }
    return {name: value.double().cpu().numpy() for name, value in columns.items()}


def member_threshold(members: np.ndarray, non_members: np.ndarray) -> float:
    """The threshold ``t`` for "member iff value >= t" with the best balanced accuracy (the lowest such ``t`` on a tie).

    With no threshold better than chance that is the lowest value: everything is called a member,
    so an attack without power never reports a sample as forgotten.
    """
    members, non_members = np.sort(members.ravel()), np.sort(non_members.ravel())
    candidates = np.unique(np.concatenate([members, non_members]))
    true_positive = 1 - np.searchsorted(members, candidates, side="left") / len(members)
    false_positive = 1 - np.searchsorted(non_members, candidates, side="left") / len(non_members)
    return float(candidates[np.argmax(true_positive - false_positive)])


def mia_efficacy(
    members: np.ndarray,
    non_members: np.ndarray,
    targets: np.ndarray,
    max_per_side: int = 5000,
    seed: int = 0,
    attack: Attack = "threshold",
    member_side: int | None = None,
) -> float:
    """Percentage of ``targets`` that an attack fitted on balanced, seeded subsamples of members and non-members calls non-members.

    ``threshold`` with a ``member_side`` (+1: members lie above, -1: below) places a threshold on
    that side (:func:`member_threshold`); without one (a many-value feature) it fits a logistic regression.
    """
    k = min(len(members), len(non_members), max_per_side)
    members, non_members = members[choose(len(members), k, seed).numpy()], non_members[choose(len(non_members), k, seed + 1).numpy()]
    if attack == "threshold" and member_side is not None:
        t = member_threshold(member_side * members, member_side * non_members)
        return float((member_side * targets.ravel() < t).mean() * 100)
    x, y = np.concatenate([members, non_members]), np.concatenate([np.ones(k), np.zeros(k)])
    model = (
        SVC(C=3, gamma="auto", kernel="rbf") if attack == "svc" else make_pipeline(StandardScaler(), LogisticRegression(random_state=seed))
    )
    model.fit(x, y)
    return float((1 - model.predict(targets).mean()) * 100)


def mia_check(
    members: dict[str, np.ndarray],
    non_members: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    max_per_side: int = 5000,
    seed: int = 0,
    attack: Attack = "threshold",
) -> dict[str, float]:
    """MIA efficacy for every feature (``mia_<feature>``) and the headline ``mia`` (modified entropy), all in percent."""
    result = {
        f"mia_{name}": mia_efficacy(members[name], non_members[name], targets[name], max_per_side, seed, attack, MEMBER_SIDE.get(name))
        for name in MIA_FEATURES
    }
    result["mia"] = result[f"mia_{HEADLINE_FEATURE}"]
    return result
