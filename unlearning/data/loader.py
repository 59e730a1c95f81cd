"""A batch loader that serves slices of tensors already in memory (or on the GPU).

MNIST fits in memory, so a ``DataLoader`` that builds every sample through a transform and
collates it again is pure overhead. This loader indexes the normalised tensors directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor


class ShardedOrder:
    """The order in which one rank visits ``n`` samples in one epoch.

    The shuffle is seeded by ``(seed, epoch, pass)``, so it changes every epoch and every time a
    shorter stream is cycled, yet is the same on every machine. With ``pad=True`` (training) the
    order is padded by wrapping around, as ``DistributedSampler`` does, so every rank gets the same
    number of samples and therefore of batches; evaluation uses ``pad=False`` so no sample counts twice.
    Lightning calls :meth:`set_epoch` on the loader's ``sampler`` at the start of every epoch.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.passes = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.passes = epoch, 0

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def next_pass(self) -> Tensor:
        """Indices for the next pass over the data on this rank."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, self.passes)) % 2**63)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        self.passes += 1
        if self.pad:
            total = len(self) * self.world_size
            order = order.repeat(math.ceil(total / self.n))[:total]
        return order[self.rank :: self.world_size]


class TensorBatchLoader:
    """Yields ``(x, y)`` batches of ``x[order]``, ``y[order]`` for tensors that already live on the target device.

    With ``index``, the sampler's positions stand for the rows ``index`` names, so a split is served
    straight from the whole dataset without first copying it out. ``sampler`` is public because
    Lightning calls ``sampler.set_epoch`` each epoch; ``batch_sampler`` is ``None`` because
    Lightning inspects it to tell whether a loader shuffles.
    """

    batch_sampler = None

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, sampler: ShardedOrder, index: Tensor | None = None):
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.x, self.y, self.batch_size, self.sampler, self.index = x, y, batch_size, sampler, index
        self._position = {"epoch": 0, "pass": 0, "served": 0}  # where the current pass stands (see state_dict)
        self._resume_at: dict[str, int] | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def state_dict(self) -> dict[str, int]:
        """Where this loader stands: the epoch, which pass over the data within it, and the batches of that pass served.

        Lightning stores it in every checkpoint and hands it back on resume, so a run stopped mid-epoch
        (or inside a step budget's stream epoch: :class:`StepBudgetStreams`) continues with exactly the batches
        it would have seen.
        """
        return dict(self._position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = dict(state)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.index is None and not self.sampler.shuffle and self.sampler.world_size == 1:
            # every row in order (evaluation): the batches are slices, nothing is copied
            for start in range(0, len(self.x), self.batch_size):
                yield self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
            return
        skip = 0
        if self._resume_at is not None and self._resume_at["epoch"] == self.sampler.epoch:
            self.sampler.passes, skip = self._resume_at["pass"], self._resume_at["served"]
        self._resume_at = None
        self._position = {"epoch": self.sampler.epoch, "pass": self.sampler.passes, "served": skip}
        order = self.sampler.next_pass().to(self.x.device, non_blocking=True)
        if self.index is not None:
            order = self.index.index_select(0, order)
        for start in range(skip * self.batch_size, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            self._position["served"] += 1
            # index_select, not x[idx]: a third of the time of advanced indexing for whole rows
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)


class StepBudgetStreams:
    """The training streams of a run bounded by ``max_steps`` alone, served as one epoch that spans the budget.

    Lightning ends an epoch when its loader runs out, and with a ``dataloader_iter`` training step it validates and
    checkpoints at every epoch end, whatever ``val_check_interval`` says: a 200-step unlearning run over 194-batch
    epochs validated at step 194 as well as at 200, and where that happened depended on the forget class's size.
    This loader chains the streams' epochs itself, each served by ``CombinedLoader(mode="max_size_cycle")`` as before
    (every sampler set to the epoch, the longest stream ending it, the shorter ones cycled with a fresh shuffle), so
    the batches are the same and only the epoch ends are gone. Its length is the budget; it never runs out first.
    """

    def __init__(self, loaders: dict[str, TensorBatchLoader], steps: int):
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.loaders, self.steps, self.epoch = loaders, steps, 0
        self._iterated = False  # whether an iteration has begun since the start or the last load_state_dict

    def __len__(self) -> int:
        return self.steps

    def state_dict(self) -> dict[str, Any]:
        """The stream epoch under way and each stream's position in it, for Lightning's checkpoint (see
        :meth:`TensorBatchLoader.state_dict`): a resumed run continues with the batches it would have seen."""
        return {"epoch": self.epoch, "streams": {name: loader.state_dict() for name, loader in self.loaders.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self._iterated = state["epoch"], False
        for name, loader in self.loaders.items():
            loader.load_state_dict(state["streams"][name])

    @staticmethod
    def from_stream_states(states: Mapping[str, dict[str, int]]) -> dict[str, Any]:
        """The state of a budget whose streams stand where ``states`` say: one :meth:`TensorBatchLoader.state_dict` per
        stream, as a run checkpointed before budgets were one epoch kept them (Lightning held one state per stream then,
        and set every sampler to its own epoch, which is the stream epoch)."""
        return {"epoch": max(state["epoch"] for state in states.values()), "streams": dict(states)}

    def __iter__(self) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
        if self._iterated:  # Lightning's epoch ended first (``limit_train_batches`` below the budget): the next stream epoch
            self.epoch += 1
        self._iterated = True
        while True:
            yield from self._stream_epoch()
            self.epoch += 1

    def _stream_epoch(self) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
        """One epoch of the streams, served by Lightning's own ``max_size_cycle`` after each sampler is set to it."""
        for loader in self.loaders.values():
            loader.sampler.set_epoch(self.epoch)
        for batch, _, _ in CombinedLoader(self.loaders, mode="max_size_cycle"):
            yield batch
