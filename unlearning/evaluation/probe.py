"""Check 5: a linear probe on the frozen penultimate features, to see whether they still encode the forget class.

Outputs can be silenced (a masked head) while the features keep separating the class perfectly;
a probe trained on a model that never learned the class is the reference for "not encoded".
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from unlearning.evaluation.data import choose

#: the share of bootstrap resamples a probe ratio's interval holds (:func:`misranked_ratio_interval`)
INTERVAL_LEVEL = 0.9


def fit_probe(train_features: np.ndarray, train_is_forget: np.ndarray, max_per_side: int = 1000, seed: int = 0) -> Pipeline:
    """Standardised logistic regression "forget class vs rest", fitted on a balanced training subsample."""
    positives, negatives = np.flatnonzero(train_is_forget), np.flatnonzero(~train_is_forget)
    k = min(len(positives), len(negatives), max_per_side)
    rows = np.concatenate([positives[choose(len(positives), k, seed).numpy()], negatives[choose(len(negatives), k, seed + 1).numpy()]])
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    return probe.fit(train_features[rows], train_is_forget[rows])


def probe_metrics(scores: np.ndarray, is_forget: np.ndarray) -> dict[str, float]:
    """``probe_acc`` (balanced accuracy in percent, so the 1:9 imbalance of held-out samples cannot flatter a constant
    answer) and ``probe_auc`` (the chance that a forget-class sample scores above another) of a probe's ``scores``."""
    acc = float(balanced_accuracy_score(is_forget, scores > 0) * 100)
    return {"probe_acc": acc, "probe_auc": float(roc_auc_score(is_forget, scores))}


def linear_probe(
    train_features: np.ndarray,
    train_is_forget: np.ndarray,
    test_features: np.ndarray,
    test_is_forget: np.ndarray,
    max_per_side: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`fit_probe` on the training features, :func:`probe_metrics` on the test set."""
    probe = fit_probe(train_features, train_is_forget, max_per_side, seed)
    return probe_metrics(probe.decision_function(test_features), test_is_forget)


def bootstrap_weights(is_forget: np.ndarray, draws: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stratified bootstrap as counts: per draw (rows), how often each forget-class sample and each other sample
    (columns) is drawn, each group resampled with replacement to its own size."""
    rng = np.random.default_rng(seed)

    def counts(n: int) -> np.ndarray:
        picks = rng.integers(0, n, size=(draws, n))
        return np.stack([np.bincount(row, minlength=n) for row in picks])

    return counts(int(is_forget.sum())), counts(int((~is_forget).sum()))


def resampled_aucs(scores: np.ndarray, is_forget: np.ndarray, weights: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The AUC of ``scores`` on each resample that :func:`bootstrap_weights` describes (ties count half, as
    ``roc_auc_score`` has them): no resampled copies are built, each draw is a weighted count over one sort."""
    positive_counts, negative_counts = weights
    positives, negatives = scores[is_forget], scores[~is_forget]
    order = np.argsort(negatives, kind="stable")
    ranked = negatives[order]
    below, at_or_below = np.searchsorted(ranked, positives, "left"), np.searchsorted(ranked, positives, "right")
    cumulative = np.concatenate([np.zeros((len(negative_counts), 1)), np.cumsum(negative_counts[:, order], axis=1)], axis=1)
    beaten = (cumulative[:, below] + cumulative[:, at_or_below]) / 2  # per draw and positive: the negatives under it
    return (beaten * positive_counts).sum(1) / (positive_counts.sum(1) * negative_counts.sum(1))


def misranked_ratio_interval(
    scores: np.ndarray,
    oracle_misranked: np.ndarray,
    is_forget: np.ndarray,
    weights: tuple[np.ndarray, np.ndarray],
    level: float = INTERVAL_LEVEL,
) -> tuple[float, float]:
    """The central ``level`` interval of the probe ratio, (1 - AUC) over the oracle's (1 - AUC), over the stratified
    bootstrap resamples of the held-out samples that ``weights`` describes (:func:`bootstrap_weights`), both networks'
    probes scored on the same draws. ``oracle_misranked`` is the oracle's 1 - :func:`resampled_aucs` on those draws,
    computed once for every network judged against it.

    A ratio is a quotient of two small misranked shares, so a few held-out images can move it across its limit; the
    interval says how firmly the images decide it (not how a different split of writers would: docs/evidence.md).
    """
    misranked = 1 - resampled_aucs(scores, is_forget, weights)
    low, high = np.quantile(misranked / np.maximum(oracle_misranked, 1e-12), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
