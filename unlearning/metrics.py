"""Pure metric maths on confusion matrices (rows: true labels, columns: predicted labels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from unlearning.data.splits import retain_classes


def group_accuracy(confmat: Tensor, classes: Sequence[int]) -> Tensor:
    """Accuracy over all samples whose true label is in ``classes`` (NaN when there are none)."""
    classes = list(classes)
    total = confmat[classes].sum()
    correct = confmat[classes, classes].sum()
    return correct.float() / total if total > 0 else torch.tensor(float("nan"))


def accuracy_summaries(confmat: Tensor, forget_classes: Sequence[int], new_classes: Sequence[int]) -> dict[str, Tensor]:
    """``acc`` overall, plus ``forget_acc``, ``retain_acc`` and ``new_acc`` over the samples of those classes."""
    num_classes = confmat.shape[0]
    retain = retain_classes(forget_classes, new_classes, num_classes)
    summary = {"acc": group_accuracy(confmat, range(num_classes)), "retain_acc": group_accuracy(confmat, retain)}
    if forget_classes:
        summary["forget_acc"] = group_accuracy(confmat, forget_classes)
    if new_classes:
        summary["new_acc"] = group_accuracy(confmat, new_classes)
    return summary


def unit_to_label(num_classes: int, old_classes: Sequence[int] = (), new_classes: Sequence[int] = ()) -> Tensor:
    """Which label each output unit stands for when the new classes reuse the old classes' units.

    With ``old=[6], new=[3]`` unit 6 now means 3; unit 3 keeps meaning 3, so no unit means 6 any more.
    """
    mapping = torch.arange(num_classes)
    for old, new in zip(old_classes, new_classes, strict=True):
        mapping[old] = new
    return mapping
