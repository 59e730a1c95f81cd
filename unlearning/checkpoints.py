"""Writing ``last.ckpt`` and reading network weights from user files safely (``weights_only=True``).

Reading is the ``net`` contract's only door: a Lightning checkpoint of any task here (its state
dict keys start with ``net.``) or a bare ``state_dict`` of the network. The readers take the file's
path, and optionally its contents already read by :func:`read_checkpoint`, so that a caller who
needs several things from one file reads it once (the path then only names it in errors).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from unlearning.errors import UsageError
from unlearning.files import atomic_file


class LatestCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt``, rewritten with the latest state at every checkpoint trigger.

    Since Lightning 2.6, ``save_last=True`` writes ``last.ckpt`` only when a top-k checkpoint is written
    at the same step, so beside a monitored best it stays at the best epoch, and resuming or testing
    "the last checkpoint" silently uses an older model. This unmonitored callback keeps one checkpoint,
    named ``last``, so it is always the newest; a monitored ``ModelCheckpoint`` beside it keeps the best.
    """

    def __init__(self) -> None:
        super().__init__(filename="last", save_top_k=1, enable_version_counter=False)

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        """A fit can stop between checkpoint triggers (``max_steps`` before the next validation): save its final state."""
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # skips fast_dev_run and a step already saved
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


def last_checkpoint(trainer: Trainer) -> Path:
    """The ``last.ckpt`` a fit wrote (see :class:`LatestCheckpoint`).

    Under ``ddp_spawn`` the workers' callbacks never report back to this process; the file is then
    found in the run folder, which this process claimed before the workers started.
    """
    latest = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, LatestCheckpoint)]
    if latest and latest[0].best_model_path:
        return Path(latest[0].best_model_path)
    written = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    if written.is_file():
        return written
    raise RuntimeError("this fit wrote no last.ckpt")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files written whole or not at all: into a temporary file beside the target, then renamed over it.

    Lightning writes a checkpoint in place, so a run killed during the write (or a full disk) leaves
    a truncated ``last.ckpt`` that the next ``--ckpt_path last`` would try to resume from.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            torch.save(checkpoint, f)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint or state dict read with ``weights_only=True``; anything else is a one-line :class:`UsageError`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and unsafe-global errors all mean "not a weights file we accept"
        raise UsageError(
            f"{path} is not a readable checkpoint (expected a Lightning .ckpt or a state dict saved with torch.save; "
            f"{_why_unreadable(path, err)})"
        ) from err
    if not isinstance(obj, dict):
        raise UsageError(f"{path} holds a {type(obj).__name__}, not a checkpoint or state dict")
    return obj


def _why_unreadable(path: Path, err: Exception) -> str:
    """What a failed ``torch.load`` means, in words: a zip archive that ends early was cut short while being written."""
    with path.open("rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        return "this file is not one: it does not start like a torch.save archive"
    if "central directory" in str(err) or "failed finding" in str(err):
        return "it is truncated: the write was cut short"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"


def check_resumable(path: str | Path) -> Path:
    """``path`` if it is a checkpoint a fit can resume from; otherwise one :class:`UsageError` saying which readable
    checkpoints sit beside it (a crash can leave ``last.ckpt`` unusable while ``best-*.ckpt`` is fine)."""
    path = Path(path)
    try:
        checkpoint = read_checkpoint(path)
        missing = [key for key in ("state_dict", "global_step", "loops") if key not in checkpoint]
        if missing:
            raise UsageError(f"{path} is not a training checkpoint (no {', '.join(missing)}): pass it as --model.init_args.weights instead")
    except UsageError as err:
        others = [p for p in sorted(path.parent.glob("*.ckpt")) if p != path and _readable(p)]
        hint = f"; resume from {' or '.join(map(str, others))} instead" if others else ""
        raise UsageError(f"cannot resume: {err}{hint}") from None
    return path


def _readable(path: Path) -> bool:
    try:
        return "state_dict" in read_checkpoint(path)
    except UsageError:
        return False


def net_state_dict(path: str | Path, checkpoint: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """The network's weights from a Lightning checkpoint (``net.*`` keys) or a bare state dict."""
    obj = read_checkpoint(path) if checkpoint is None else checkpoint
    if "state_dict" in obj:
        state = {k.removeprefix("net."): v for k, v in obj["state_dict"].items() if k.startswith("net.")}
        if not state:
            raise UsageError(f"checkpoint {path} has no 'net.' weights; was it written by an unlearning task?")
        return state
    return obj


def load_net_weights(net: nn.Module, path: str | Path, checkpoint: dict[str, Any] | None = None) -> None:
    """Copy weights from ``path`` into ``net``, failing with the exact keys and shapes that do not match."""
    state = net_state_dict(path, checkpoint)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs net {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if unexpected:
            problems.append(f"unexpected {unexpected}")
        if wrong_shape:
            problems.append(f"shape mismatch {wrong_shape}")
        raise UsageError(f"weights in {path} do not fit {type(net).__name__}: " + "; ".join(problems))
    net.load_state_dict(state)


def import_class(class_path: str) -> type:
    """The class a config's ``class_path`` names."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def task_hparams(path: str | Path, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """The hyperparameters LightningCLI stored in a task checkpoint (classes, head mode, the net's config)."""
    obj = read_checkpoint(path) if checkpoint is None else checkpoint
    hparams = obj.get("hyper_parameters")
    if not isinstance(hparams, dict) or not isinstance(hparams.get("net"), dict):
        raise UsageError(f"{path} is not a task checkpoint written by the unlearning CLI (no net config in its hyperparameters)")
    return hparams


def build_net(path: str | Path, checkpoint: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild the network a task checkpoint describes and load its weights, in eval mode."""
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    config = task_hparams(path, checkpoint)["net"]
    net = import_class(config["class_path"])(**config.get("init_args", {}))
    load_net_weights(net, path, checkpoint)
    return net.eval()


def held_out_classes(path: str | Path) -> tuple[str, set[int]] | None:
    """``(run, classes)`` for a pretrain or oracle checkpoint: which run it is, for messages
    ("a pretrain run", "an oracle run"), and the classes that run never trained on.

    A pretrain run holds out its ``new_classes``; an oracle trains on retain ∪ new and so holds out
    its ``forget_classes``. A bare state dict or a later stage's checkpoint records no such thing: ``None``.
    """
    try:
        hparams = task_hparams(path)
    except UsageError:
        return None
    stage = hparams.get("stage")
    if stage == "pretrain":
        return "a pretrain run", set(hparams.get("new_classes") or [])
    if stage == "oracle":
        return "an oracle run", set(hparams.get("forget_classes") or [])
    return None
