"""The evaluation's data: MNIST split exactly as the checkpoint's run split it, and seeded subsamples."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from unlearning.data.mnist import load_mnist
from unlearning.data.splits import build_splits, choose, retain_classes
from unlearning.errors import UsageError

__all__ = ["HELD_OUT_NAME", "EvalData", "Holdout", "choose", "load_eval_data", "seeded_batches"]

#: What the held-out checks read: the test set, or the validation split (for tuning, so that the test set stays unseen).
Holdout = Literal["test", "val"]
#: how tables and figures name each holdout's samples
HELD_OUT_NAME: dict[str, str] = {"test": "test", "val": "validation"}


@dataclass(frozen=True)
class EvalData:
    """Normalised train and held-out tensors, the training splits' indices, and the classes they were split by.

    ``test_x``/``test_y`` are the held-out samples: the test set, or the validation split when the
    evaluation was loaded with ``holdout="val"``. ``forget_classes`` is empty in random-sample mode,
    where ``forget`` is a random subset of the training samples instead of whole classes.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    splits: dict[str, Tensor]
    forget_classes: tuple[int, ...]
    new_classes: tuple[int, ...]

    @property
    def class_mode(self) -> bool:
        """Whether whole classes are forgotten, so the class-specific checks apply."""
        return bool(self.forget_classes)

    @property
    def retain_classes(self) -> tuple[int, ...]:
        """Classes neither forgotten nor new: the utility a method must keep."""
        return tuple(retain_classes(self.forget_classes, self.new_classes))

    def test_mask(self, classes: Sequence[int]) -> Tensor:
        """Which test samples belong to ``classes``; built on the labels' device (CUDA's ``isin`` takes one device)."""
        return torch.isin(self.test_y, torch.as_tensor(list(classes), dtype=self.test_y.dtype, device=self.test_y.device))

    def to(self, device: torch.device) -> EvalData:
        return EvalData(
            self.train_x.to(device), self.train_y.to(device), self.test_x.to(device), self.test_y.to(device),
            {k: v.to(device) for k, v in self.splits.items()}, self.forget_classes, self.new_classes,
        )  # fmt: skip


def seeded_batches(x: Tensor, y: Tensor, size: int, steps: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``steps`` mini-batches of ``size`` rows drawn with replacement by a seeded generator: the same on every machine."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(len(x), (size,), generator=generator).to(x.device)
        yield x.index_select(0, rows), y.index_select(0, rows)


def load_eval_data(
    data_dir: str | Path,
    forget_classes: Sequence[int],
    new_classes: Sequence[int],
    forget_fraction: float | None,
    val_size: int,
    seed: int,
    holdout: Holdout = "test",
) -> EvalData:
    """MNIST with the retain/forget/new/val splits that ``build_splits`` gives the checkpoint's run.

    ``holdout="val"`` puts the run's validation split where the test set would be: no training split
    holds it, so it serves every held-out check while a method is tuned.
    """
    train_x, train_y = load_mnist(data_dir, train=True)
    splits = build_splits(train_y, forget_classes, new_classes, forget_fraction, val_size, seed)
    if holdout == "val":
        test_x, test_y = train_x[splits["val"]], train_y[splits["val"]]
    elif holdout == "test":
        test_x, test_y = load_mnist(data_dir, train=False)
    else:
        raise UsageError(f"holdout must be test or val, got {holdout!r}")
    return EvalData(train_x, train_y, test_x, test_y, splits, tuple(forget_classes), tuple(new_classes))
