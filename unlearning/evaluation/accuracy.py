"""Check 1 (accuracy: UA, RA, TA, per class) and check 7 (the retrain notebook's two ratios), from predictions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from unlearning.data.splits import NUM_CLASSES, retain_classes
from unlearning.metrics import group_accuracy


def percent(correct: Tensor) -> float:
    """Mean of a boolean tensor in percent (NaN when empty)."""
    return float(correct.float().mean() * 100) if len(correct) else float("nan")


def confusion_matrix(labels: Tensor, preds: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """Counts with true labels as rows and predicted labels as columns."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes**2).view(num_classes, num_classes).cpu()


def accuracy_check(
    forget_labels: Tensor,
    forget_preds: Tensor,
    retain_labels: Tensor,
    retain_preds: Tensor,
    test_labels: Tensor,
    test_preds: Tensor,
    forget_classes: Sequence[int],
    new_classes: Sequence[int],
) -> dict:
    """SalUn's UA, RA and TA in percent, plus the per-class picture of the test set.

    ``ua`` is 100 minus the accuracy on the training forget set (whole classes, or random samples
    when ``forget_classes`` is empty); ``ra`` is the accuracy on the retain training samples given;
    ``ta`` the test accuracy over the retain classes (neither forgotten nor new, every class in
    random mode), so that a forgotten class does not count against utility. In class mode
    ``forget_test_acc`` is the forget classes' test accuracy; with new classes, ``new_acc`` and
    ``old_acc`` (the replaced classes' test accuracy) are added.
    """
    confmat = confusion_matrix(test_labels, test_preds)
    result = {
        "ua": 100.0 - percent(forget_preds == forget_labels),
        "ra": percent(retain_preds == retain_labels),
        "ta": float(group_accuracy(confmat, retain_classes(forget_classes, new_classes)) * 100),
        "test_acc": percent(test_preds == test_labels),
    }
    if forget_classes:
        result["forget_test_acc"] = float(group_accuracy(confmat, forget_classes) * 100)
    if new_classes:
        result["new_acc"] = float(group_accuracy(confmat, new_classes) * 100)
        if forget_classes:
            result["old_acc"] = result["forget_test_acc"]
    result["class_acc"] = [float(group_accuracy(confmat, [c]) * 100) for c in range(NUM_CLASSES)]
    result["retain_classes"] = list(retain_classes(forget_classes, new_classes)) if forget_classes else []
    result["confusion"] = confmat.tolist()
    return result


def notebook_metrics(forget_set_acc: float, ta: float, pretrained_ta: float) -> dict[str, float]:
    """The retrain notebook's ratios: forgetting effectiveness (forget-set accuracy, lower is better)
    and utility preservation (accuracy on the data not forgotten relative to the original model's, 1 is best)."""
    return {"forgetting_effectiveness": forget_set_acc / 100, "utility_preservation": ta / pretrained_ta}
