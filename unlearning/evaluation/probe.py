"""Check 5: a linear probe on the frozen penultimate features, to see whether they still encode the forget class.

Outputs can be silenced (a masked head) while the features keep separating the class perfectly;
a probe trained on a model that never learned the class is the reference for "not encoded".
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from unlearning.evaluation.data import choose


def linear_probe(
    train_features: np.ndarray,
    train_is_forget: np.ndarray,
    test_features: np.ndarray,
    test_is_forget: np.ndarray,
    max_per_side: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Fit standardised logistic regression "forget class vs rest" on a balanced training subsample; score it on the test set.

    Returns ``probe_acc`` (balanced accuracy in percent, so the 1:9 test imbalance cannot flatter a
    constant answer) and ``probe_auc`` (the chance that a forget-class sample scores above another).
    """
    positives, negatives = np.flatnonzero(train_is_forget), np.flatnonzero(~train_is_forget)
    k = min(len(positives), len(negatives), max_per_side)
    rows = np.concatenate([positives[choose(len(positives), k, seed).numpy()], negatives[choose(len(negatives), k, seed + 1).numpy()]])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    probe.fit(train_features[rows], train_is_forget[rows])
    scores = probe.decision_function(test_features)
    acc = float(balanced_accuracy_score(test_is_forget, scores > 0) * 100)
    return {"probe_acc": acc, "probe_auc": float(roc_auc_score(test_is_forget, scores))}
