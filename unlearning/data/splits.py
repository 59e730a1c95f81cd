"""Pure split maths: training labels in, disjoint index tensors out.

Nothing here knows about files, devices or Lightning, so every rule about which sample
belongs to which split is tested on hand-made label vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from unlearning.errors import UsageError

NUM_CLASSES = 10


def split_seed_of(seed: int | None, split_seed: int | None) -> int | None:
    """The seed a run splits its data with: ``split_seed`` where one is given, else ``seed`` (which then splits and
    shuffles alike)."""
    return seed if split_seed is None else split_seed


def recorded_split_seed(datamodule_hparams: Mapping[str, Any]) -> int | None:
    """:func:`split_seed_of` a run's datamodule's recorded hyperparameters; ``None`` where neither seed is recorded."""
    return split_seed_of(datamodule_hparams.get("seed"), datamodule_hparams.get("split_seed"))


def check_classes(forget_classes: Sequence[int], new_classes: Sequence[int], num_classes: int = NUM_CLASSES) -> None:
    """Reject classes outside ``0..num_classes-1``, repeats, and a class that is both forgotten and new."""
    for name, classes in (("forget_classes", forget_classes), ("new_classes", new_classes)):
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_classes:
                raise UsageError(f"{name} must hold class indices in 0..{num_classes - 1}, got {c!r}")
        if len(set(classes)) != len(classes):
            raise UsageError(f"{name} repeats a class: {list(classes)}")
    both = sorted(set(forget_classes) & set(new_classes))
    if both:
        raise UsageError(f"class {both} is in both forget_classes and new_classes; a forgotten class cannot also be the new one")


def retain_classes(forget_classes: Sequence[int], new_classes: Sequence[int], num_classes: int = NUM_CLASSES) -> list[int]:
    """The classes neither forgotten nor new: what the retain split holds, and where forgotten samples may go."""
    return [c for c in range(num_classes) if c not in forget_classes and c not in new_classes]


def build_splits(
    labels: Tensor,
    forget_classes: Sequence[int] = (9,),
    new_classes: Sequence[int] = (),
    forget_fraction: float | None = None,
    val_size: int = 5000,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Partition the training set into ``retain``, ``forget``, ``new`` and ``val`` index tensors.

    ``val`` is a seeded random hold-out of all classes, taken first so it never depends on the
    forgetting mode. Of the rest, ``new`` holds the new classes, ``forget`` holds the forget
    classes (class mode) or a seeded random ``forget_fraction`` of the non-new samples (random
    mode), and ``retain`` holds everything else. The four are disjoint, cover every index, and are
    sorted so that they are identical for the same inputs on every machine and rank.
    """
    n = len(labels)
    check_classes(forget_classes, new_classes)
    if forget_fraction is not None:
        if not 0.0 < forget_fraction < 1.0:
            raise UsageError(f"forget_fraction must lie in (0, 1), got {forget_fraction}")
        if forget_classes:
            raise UsageError(
                f"forget_fraction={forget_fraction} forgets random samples, so forget_classes must be empty "
                f"(got {list(forget_classes)}); set forget_classes: []"
            )
    elif not forget_classes:
        raise UsageError("nothing to forget: give forget_classes or forget_fraction")
    if not 0 < val_size < n:
        raise UsageError(f"val_size must lie in 1..{n - 1}, got {val_size}")

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    val, pool = order[:val_size], order[val_size:]
    pool_labels = labels[pool]
    is_new = torch.isin(pool_labels, torch.as_tensor(list(new_classes), dtype=labels.dtype))
    if forget_fraction is None:
        is_forget = torch.isin(pool_labels, torch.as_tensor(list(forget_classes), dtype=labels.dtype))
    else:
        candidates = (~is_new).nonzero().squeeze(1)
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[: round(forget_fraction * len(candidates))]]
        is_forget = torch.zeros_like(is_new)
        is_forget[chosen] = True
    splits = {
        "retain": pool[~is_forget & ~is_new],
        "forget": pool[is_forget],
        "new": pool[is_new],
        "val": val,
    }
    splits = {name: idx.sort().values for name, idx in splits.items()}
    for name, idx in splits.items():
        if len(idx) == 0 and (name != "new" or new_classes):
            raise UsageError(
                f"the {name!r} split is empty (forget_classes={list(forget_classes)}, new_classes={list(new_classes)}, "
                f"forget_fraction={forget_fraction}, val_size={val_size}, {n} training samples)"
            )
    return splits


def choose(n: int, k: int, seed: int) -> Tensor:
    """``min(k, n)`` distinct positions out of ``n``, sorted, the same for the same arguments on every machine."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[: min(k, n)].sort().values
