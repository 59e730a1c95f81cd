"""MNIST from the bundled IDX files, normalised once into tensors, served by split name."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torchvision.datasets import MNIST

import unlearning.nvml  # noqa: F401 - before Lightning's first use: see the module
from unlearning.data.loader import ShardedOrder, StepBudgetStreams, TensorBatchLoader
from unlearning.data.splits import build_splits, check_classes, choose, split_seed_of
from unlearning.errors import UsageError
from unlearning.files import atomic_file, unwritable_as_usage_error

log = logging.getLogger(__name__)

MEAN, STD = 0.1307, 0.3081

#: md5 of the *unpacked* IDX files (the canonical MNIST checksums).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


class DataError(UsageError):
    """The MNIST files are missing, unreachable or corrupt."""


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_mnist(data_dir: str | Path) -> Path:
    """Make ``data_dir/MNIST/raw`` hold the four unpacked, md5-verified IDX files.

    Bundled ``.gz`` files are unpacked once; an unpacked file that is missing or fails its md5 is
    unpacked again from its archive (a self-repair). Every write goes to a temporary file of its own
    and is renamed into place only once verified, so runs started together on a fresh clone, or on
    several nodes sharing one folder, never read or leave half a file. Where neither the files nor the
    archives are present, torchvision's own download is tried. Returns the raw folder.
    """
    root = Path(data_dir)
    raw = root / "MNIST" / "raw"
    missing = [name for name in MNIST_MD5 if not (raw / name).exists() and not (raw / f"{name}.gz").exists()]
    if missing and len(missing) < len(MNIST_MD5):  # a partial copy: downloading would replace the files that are there
        raise DataError(
            f"{raw} lacks {', '.join(f'{name}(.gz)' for name in missing)}; restore it (git checkout -- {raw}, or a fresh copy of MNIST)"
        )
    if missing:
        absent = [folder for folder in (raw, *raw.parents) if not folder.exists()]  # innermost first
        try:
            MNIST(root, train=True, download=True)
            MNIST(root, train=False, download=True)
        except Exception as err:  # torchvision raises RuntimeError or URLError depending on the failure
            for folder in absent:  # a failed download leaves no empty folders behind (a non-empty one is kept)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            first = next((line.strip(" :") for line in str(err).splitlines() if line.strip(" :")), type(err).__name__)
            raise DataError(
                f"MNIST is not in {raw.resolve()} and torchvision could not download it ({first}); "
                f"copy the four MNIST IDX files (.gz or unpacked) there, or point data_dir at a folder that has them"
            ) from err
    stamp_path = raw / ".verified.json"
    try:
        stamps = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamps = {}
    verified = dict(stamps)
    for name, expected in MNIST_MD5.items():
        target, archive = raw / name, raw / f"{name}.gz"
        if target.exists():
            if stamps.get(name) == _stamp(target, expected):
                continue  # verified before and untouched since: skip re-hashing 55 MB on every run
            actual = _md5(target)
            if actual == expected:
                stamps[name] = _stamp(target, expected)
                continue
            if not archive.exists():
                raise DataError(
                    f"{target} is corrupt: md5 {actual}, expected {expected}, and there is no {archive.name} to unpack it "
                    f"from again; restore the original MNIST file"
                )
            log.warning("%s is corrupt (md5 %s, expected %s): unpacking it again from %s", target, actual, expected, archive.name)
        _unpack(archive, target, expected)
        stamps[name] = _stamp(target, expected)
    if stamps != verified:  # a read-only data folder is fine: the files are hashed again next time
        with contextlib.suppress(OSError), atomic_file(stamp_path) as f:
            f.write(json.dumps(stamps).encode())
    return raw


def _stamp(path: Path, md5: str) -> list[Any]:
    """What identifies a file's verified contents: size, modification and change times, inode. A rewrite in
    place that keeps the size and the modification time still changes the change time."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, md5]


def _unpack(archive: Path, target: Path, expected: str) -> None:
    """Unpack ``archive`` to ``target`` through a temporary file of this process's own, renamed into place only if its md5 is right."""
    restore = f"restore it (git checkout -- {archive}, or a fresh copy of the MNIST archive)"
    advice = "unpack the data once as a user who can write there, or copy the data folder somewhere writable and point data_dir at it"
    with unwritable_as_usage_error(target.parent, advice), atomic_file(target) as dst:  # an error below leaves target as it was
        digest = hashlib.md5()
        try:
            with gzip.open(archive, "rb") as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    dst.write(chunk)
        except FileNotFoundError as err:
            raise DataError(f"{archive} is missing: cannot unpack {target.name}; {restore}") from err
        except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a damaged stream fails in zlib
            raise DataError(
                f"{archive} is corrupt ({type(err).__name__}: {err}); its contents should have md5 {expected}; {restore}"
            ) from err
        if digest.hexdigest() != expected:
            raise DataError(f"{archive} is corrupt: it unpacks to md5 {digest.hexdigest()}, expected {expected}; {restore}")


_loaded: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}


def load_mnist(data_dir: str | Path, train: bool) -> tuple[Tensor, Tensor]:
    """Normalised ``(N, 1, 28, 28)`` float images and int64 labels, read through torchvision.

    Kept for the life of the process, keyed by the files' sizes and times, so that the many fits of
    a benchmark or a test session read and normalise them once (a third of a second each). Nothing
    writes to these tensors: loaders serve copies (row gathers) of them.
    """
    raw = prepare_mnist(data_dir)
    key = (str(raw.resolve()), train, *(tuple(_stamp(raw / name, md5)) for name, md5 in MNIST_MD5.items()))
    if key not in _loaded:
        dataset = MNIST(Path(data_dir), train=train, download=False)
        _loaded[key] = dataset.data.unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD), dataset.targets.long()
    return _loaded[key]


def serves_step_budget(trainer: Any, task: Any) -> bool:
    """Whether ``task``'s training streams come as one :class:`StepBudgetStreams` epoch: a run bounded by ``max_steps``
    alone, unless an epoch-interval scheduler must still step at each epoch's end."""
    steps_only = trainer.max_steps > 0 and trainer.max_epochs in (None, -1)
    epoch_scheduler = getattr(task, "lr_scheduler", None) is not None and getattr(task, "scheduler_interval", None) == "epoch"
    return steps_only and not epoch_scheduler


class MNISTDataModule(LightningDataModule):
    """Serves MNIST's ``retain``, ``forget``, ``new``, ``val`` and ``test`` splits from memory.

    A task declares which splits it trains on through ``train_streams``, a mapping from stream
    name to the splits concatenated into it, e.g. ``{"train": ("retain", "forget")}`` for
    pretraining or ``{"forget": ("forget",), "retain": ("retain",)}`` for unlearning. Every
    training batch is then a dict ``{stream: (x, y)}``; shorter streams cycle with a fresh shuffle.
    Each stream holds ``batch_size`` samples unless the task's ``stream_batch_sizes`` names another size.

    Args:
        forget_classes: classes to forget (class mode).
        new_classes: classes held out of pretraining and learned later (class replacement).
        forget_fraction: forget this random fraction of the non-new training samples instead
            of whole classes (random mode); ``forget_classes`` must then be empty.
        val_size: training samples held out for validation, all classes, fixed by the split's seed.
        batch_size: samples per stream per batch, per device.
        seed: fixes the shuffles and the samples a task draws (and the split, unless ``split_seed`` is given); the
            CLI links it to ``seed_everything``.
        split_seed: fixes the split alone (retain, forget, new and validation samples); ``None``: ``seed``. Another
            ``seed_everything`` with the same ``split_seed`` reruns a method with other randomness (its batches, the
            images it ranks on, a reset's fresh draw) on the data a pretrained model and its oracle were split with:
            the same model, another draw of the method.
        data_dir: folder with ``MNIST/raw``; the bundled files live in ``data``.
        eval_batch_size: batch size for validation and test.
    """

    def __init__(
        self,
        forget_classes: list[int] = [9],  # noqa: B006 - jsonargparse needs the literal default
        new_classes: list[int] = [],  # noqa: B006
        forget_fraction: float | None = None,
        val_size: int = 5000,
        batch_size: int = 200,
        seed: int = 0,
        data_dir: str = "data",
        eval_batch_size: int = 2000,
        split_seed: int | None = None,
    ):
        super().__init__()
        check_classes(forget_classes, new_classes)
        if batch_size < 1 or eval_batch_size < 1:
            raise UsageError(f"batch sizes must be at least 1, got batch_size={batch_size}, eval_batch_size={eval_batch_size}")
        self.save_hyperparameters()
        self.forget_classes, self.new_classes = list(forget_classes), list(new_classes)
        self.forget_fraction, self.val_size = forget_fraction, val_size
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.split_seed = split_seed_of(seed, split_seed)
        self.data_dir = data_dir
        self._tensors: dict[str, tuple[Tensor, Tensor]] = {}
        self.split_index: dict[str, Tensor] = {}
        self._placement = (torch.device("cpu"), torch.float32)  # where and in what dtype the tensors are now
        self._eval_rows: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}  # evaluation rows gathered per (splits, rank, world, device)

    def setup(self, stage: str | None = None) -> None:
        """Read (and on first use unpack and verify) MNIST on every rank.

        Not in ``prepare_data``: there local rank 0 works alone while the others wait at a barrier, so a
        corrupt file would leave them waiting for the collective timeout. Here each rank fails at once
        with the same one-line error, and concurrent unpacking is safe (see :func:`prepare_mnist`).
        """
        if self._tensors:
            return
        train_x, train_y = load_mnist(self.data_dir, train=True)
        test_x, test_y = load_mnist(self.data_dir, train=False)
        self.split_index = build_splits(
            train_y, self.forget_classes, self.new_classes, self.forget_fraction, self.val_size, self.split_seed
        )
        self._tensors = {"train": (train_x, train_y), "test": (test_x, test_y)}
        self.split_index["test"] = torch.arange(len(test_y))

    # -- where batches come from -----------------------------------------------------------
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def split_tensors(self, *splits: str, samples: int | None = None) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of the named splits, concatenated, on the trainer's device (moved there once).

        ``samples``: at most this many of their rows, chosen by the seed (in split order).
        """
        x, y, idx = self._split_source(*splits)
        if samples is not None:
            idx = idx[choose(len(idx), samples, self.seed).to(idx.device)]
        return x.index_select(0, idx), y.index_select(0, idx)

    def _split_source(self, *splits: str) -> tuple[Tensor, Tensor, Tensor]:
        """The whole ``(x, y)`` the named splits index into, on the trainer's device and in the task's dtype, and their indices.

        Under a ``*-true`` precision the task's parameters are bf16, fp16 or fp64; the images are cast once
        here, so every batch, saliency pass and probe is born in the dtype the network computes in
        (training steps take ``dataloader_iter``, which Lightning's own input conversion skips).
        """
        if not self._tensors:
            self.setup()
        device, dtype = torch.device("cpu"), torch.float32
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            first = next(self.trainer.lightning_module.parameters(), None) if self.trainer.lightning_module is not None else None
            dtype = first.dtype if first is not None else dtype
        if (device, dtype) != self._placement:
            self._tensors = {k: (x.to(device, dtype), y.to(device)) for k, (x, y) in self._tensors.items()}
            self._placement = (device, dtype)
            self._eval_rows.clear()
        unknown = [s for s in splits if s not in self.split_index]
        if unknown:
            raise KeyError(f"unknown split {unknown}; the splits are {sorted(self.split_index)}")
        source = "test" if splits == ("test",) else "train"
        if "test" in splits and source != "test":
            raise ValueError("the test split cannot be mixed with training splits")
        x, y = self._tensors[source]
        idx = torch.cat([self.split_index[s] for s in splits]).to(device)
        return x, y, idx

    def loader(self, *splits: str, train: bool = False, shard: bool = True, batch_size: int | None = None) -> TensorBatchLoader:
        """A loader over the named splits: shuffled and padded for training, in order for evaluation.

        ``shard=False`` gives every rank the whole split (e.g. to compute a saliency mask that
        must be identical on all ranks). ``batch_size`` defaults to ``batch_size`` for training and
        ``eval_batch_size`` otherwise.
        """
        x, y, idx = self._split_source(*splits)
        if len(idx) == 0:
            raise UsageError(f"split {'+'.join(splits)} is empty")
        rank, world = self._rank_and_world() if shard else (0, 1)
        if not train:
            # evaluation visits this rank's rows in the same order every time: gather them once per device, serve slices
            key = (splits, rank, world, x.device)
            if key not in self._eval_rows:
                rows = idx[rank::world]
                self._eval_rows[key] = x.index_select(0, rows), y.index_select(0, rows)
            x, y = self._eval_rows[key]
            return TensorBatchLoader(x, y, batch_size or self.eval_batch_size, ShardedOrder(len(y), shuffle=False, pad=False))
        order = ShardedOrder(len(idx), shuffle=True, seed=self.seed, rank=rank, world_size=world)
        return TensorBatchLoader(x, y, batch_size or self.batch_size, order, index=idx)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches are already on the device (the tensors moved there once): skip Lightning's per-step walk over them."""
        return batch

    def train_dataloader(self) -> CombinedLoader | StepBudgetStreams:
        """The task's ``train_streams``, cycled to the longest; a run that ``max_steps`` alone bounds gets them as one
        epoch spanning the budget (:class:`StepBudgetStreams`: the same batches, no epoch end to validate at before it)."""
        task = self.trainer.lightning_module
        streams: Mapping[str, Sequence[str]] = task.train_streams
        sizes: Mapping[str, int] = getattr(task, "stream_batch_sizes", {})
        loaders = {name: self.loader(*splits, train=True, batch_size=sizes.get(name)) for name, splits in streams.items()}
        if serves_step_budget(self.trainer, task):
            return StepBudgetStreams(loaders, self.trainer.max_steps)
        return CombinedLoader(loaders, mode="max_size_cycle")

    def eval_dataloaders(self, main: str) -> list[TensorBatchLoader]:
        """``main`` (val or test) first; in random mode the forget samples follow, as their accuracy is the forget metric."""
        loaders = [self.loader(main)]
        if self.forget_fraction is not None:
            loaders.append(self.loader("forget"))
        return loaders

    def val_dataloader(self) -> list[TensorBatchLoader]:
        return self.eval_dataloaders("val")

    def test_dataloader(self) -> list[TensorBatchLoader]:
        return self.eval_dataloaders("test")
