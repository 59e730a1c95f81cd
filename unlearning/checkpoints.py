"""Writing ``last.ckpt`` and reading network weights from user files safely.

A checkpoint is data: reading one never runs code it chooses. The file is read with ``weights_only=True``
(no pickled objects), and the class paths it records (``hyper_parameters.net.class_path`` and friends) are
checked against an allow-list *before* anything is imported (:func:`allowed_class`): the project's own
networks and tasks, torch's optimizers, and modules the user names (``--allow-module``).

Reading is the ``net`` contract's only door: a Lightning checkpoint of any task here (its state
dict keys start with ``net.``) or a bare ``state_dict`` of the network. The readers take the file's
path, and optionally its contents already read by :func:`read_checkpoint`, so that a caller who
needs several things from one file reads it once (the path then only names it in errors).
"""

from __future__ import annotations

import importlib
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

import unlearning.nvml  # noqa: F401 - before Lightning's first use: see the module
from unlearning.data.splits import recorded_split_seed, split_seed_of
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
    if path.is_dir():
        raise UsageError(f"checkpoint {path} is a folder, not a file (a run's checkpoints are in <run folder>/checkpoints/*.ckpt)")
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    _check_crcs(path)
    try:
        with warnings.catch_warnings():  # torch's notice about a raw pickle's protocol, for a file refused below anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise UsageError(f"checkpoint {path} is not readable by this user (permission denied)") from None
    except Exception as err:  # pickle, zip and unsafe-global errors all mean "not a weights file we accept"
        if (refused := _pickled_code(err)) is not None:
            raise UsageError(
                f"{path} was refused: it holds a pickled Python object ({refused}) and loading it could run code; only tensors and "
                f"plain data are read. If you made this file and trust it, re-save just its weights (its state_dict) with torch.save"
            ) from None
        raise UsageError(
            f"{path} is not a readable checkpoint (expected a Lightning .ckpt or a state dict saved with torch.save; "
            f"{_why_unreadable(path, err)})"
        ) from err
    if not isinstance(obj, dict):
        raise UsageError(f"{path} holds a {type(obj).__name__}, not a checkpoint or state dict")
    return obj


def _check_crcs(path: Path) -> None:
    """Refuse a ``torch.save`` archive whose bytes changed after it was written: ``torch.load`` does not check the zip's
    CRCs, so a flipped bit inside a tensor would load as a silently different model."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return  # not a zip archive, one cut short, or unreadable (permission denied): read_checkpoint's own error says which
    if damaged is not None:
        raise UsageError(f"{path} is damaged: its entry {damaged} fails its checksum (the file changed after it was written)")


def _pickled_code(err: Exception) -> str | None:
    """The global a ``weights_only`` load refused (``posix.system``), or ``None`` when the file failed for another reason."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err)) if "Weights only load failed" in str(err) else None
    return found.group(1) if found else None


def _why_unreadable(path: Path, err: Exception) -> str:
    """What a failed ``torch.load`` means, in words: a zip archive that ends early was cut short while being written."""
    with path.open("rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        return "this file is not one: it does not start like a torch.save archive"
    if "central directory" in str(err) or "failed finding" in str(err):
        return "it is truncated: the write was cut short"
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"


def check_resumable(path: str | Path) -> dict[str, Any]:
    """The contents of ``path`` if it is a checkpoint a fit can resume from; otherwise one :class:`UsageError` saying which
    readable checkpoints sit beside it (a crash can leave ``last.ckpt`` unusable while ``best-*.ckpt`` is fine)."""
    path = Path(path)
    try:
        checkpoint = read_checkpoint(path)
        missing = [key for key in ("state_dict", "global_step", "loops") if key not in checkpoint]
        if missing:
            raise UsageError(f"{path} is not a training checkpoint (no {', '.join(missing)}): pass it as --model.init_args.weights instead")
    except UsageError as err:
        siblings = sorted(path.parent.glob("*.ckpt")) if path.parent.name == "checkpoints" else []  # a run's own, not strangers'
        others = [p for p in siblings if p != path and _readable(p)]
        hint = f"; resume from {' or '.join(map(str, others))} instead" if others else ""
        raise UsageError(f"cannot resume: {err}{hint}") from None
    return checkpoint


#: what a task checkpoint records of the run that wrote it, compared with a command's model config before a resume or test
RECORDED = ("stage", "net", "forget_classes", "new_classes", "forget_fraction")


def recorded_differences(checkpoint: dict[str, Any], config: dict[str, Any], with_seed: bool = False) -> list[str]:
    """How the run a checkpoint records differs from a command's (dumped) config: its task class, the :data:`RECORDED`
    settings and, ``with_seed``, the run's seed and the split's. A checkpoint that records no configuration has nothing to compare."""
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict):
        return []
    model = config.get("model") or {}
    stated = {**((config.get("data") or {}).get("init_args") or {}), **(model.get("init_args") or {})}  # the classes are the data's
    pairs = [("task", hparams.get("_class_path"), model.get("class_path"))]
    pairs += [(key, hparams[key], stated.get(key)) for key in RECORDED if key in hparams]
    if with_seed:
        recorded, seed = checkpoint.get("datamodule_hyper_parameters") or {}, config.get("seed_everything")
        pairs.append(("seed", recorded.get("seed"), seed))
        pairs.append(("split seed", recorded_split_seed(recorded), split_seed_of(seed, stated.get("split_seed"))))
    return [
        f"{name} {theirs!r} (the checkpoint's) vs {ours!r} (this command's)"
        for name, theirs, ours in pairs
        if theirs is not None and without_none(theirs) != without_none(ours)
    ]


def without_none(value: Any) -> Any:
    """``value`` with every ``None`` entry of its mappings left out: a config dumped with or without them compares alike."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


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
    """The class a config's ``class_path`` names: for the user's own command and config only, never a path read from a file
    (see :func:`allowed_class`)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


#: modules whose classes a file may name without the user's say-so: the project's networks and tasks, torch's optimizers
FILE_CLASS_MODULES = ("unlearning.models", "unlearning.tasks", "torch.optim")
#: the only instantiator a checkpoint may name (LightningCLI's; Lightning's own loader checks this too)
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def allowed_class(class_path: Any, where: str, base: type, allow_modules: Sequence[str] = ()) -> type:
    """The class a file names at ``where``, if its module is in the allow-list; the module is checked before it is imported.

    Importing a module runs its code, and calling a class runs its ``__init__``: a class path read from a
    checkpoint, a results file or a run folder's ``config.yaml`` is a choice of code. Only the modules in
    :data:`FILE_CLASS_MODULES` and ``allow_modules`` (``--allow-module mypkg.nets``) may be named, and the
    class must be a ``base`` (``nn.Module`` for a network), so a function such as ``subprocess.run`` is refused.
    """
    allowed_module(class_path, where, allow_modules)
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UsageError(f"{where} names {class_path}, which is not a {base.__name__} class; refused")
    return cls


def class_paths(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every ``(key path, class path)`` a nested config names: ``class_path`` and ``_class_path`` keys, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("class_path", "_class_path"):
                yield f"{where}.{key}", item
            else:
                yield from class_paths(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from class_paths(item, f"{where}[{i}]")


def check_recorded_classes(path: str | Path, checkpoint: dict[str, Any], allow_modules: Sequence[str] = ()) -> None:
    """Refuse, before anything is imported, a checkpoint whose hyperparameters name code outside the allow-list.

    For loaders that instantiate what the file records (Lightning's ``load_from_checkpoint``): each class
    path must lie in an allowed module, and the instantiator must be LightningCLI's.
    """
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        hparams = checkpoint.get(key)
        if not isinstance(hparams, dict):
            continue
        instantiator = hparams.get("_instantiator")
        if instantiator is not None and instantiator != INSTANTIATOR:
            raise UsageError(
                f"{path}: {key}._instantiator names {instantiator!r}, not LightningCLI's; refused, since loading it could run code"
            )
        for where, class_path in class_paths(hparams, key):
            module = class_path.rpartition(".")[0] if isinstance(class_path, str) else ""
            if key == "datamodule_hyper_parameters" and module == "unlearning.data":
                continue
            allowed_module(class_path, f"{path}: {where}", allow_modules)


def allowed_module(class_path: Any, where: str, allow_modules: Sequence[str] = ()) -> None:
    """:func:`allowed_class`'s first check alone (nothing imported): the module ``class_path`` names is in the allow-list."""
    if not isinstance(class_path, str) or not _CLASS_PATH.fullmatch(class_path):
        raise UsageError(f"{where} is {class_path!r}, not a class path; refused")
    module = class_path.rpartition(".")[0]
    allowed = (*FILE_CLASS_MODULES, *allow_modules)
    if not any(module == m or module.startswith(f"{m}.") for m in allowed):
        raise UsageError(
            f"{where} names {class_path}, outside the modules a file may name ({', '.join(allowed)}); refused without importing it, "
            f"since loading it could run code. If you trust this file, allow the module with --allow-module {module}"
        )


def task_hparams(path: str | Path, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """The hyperparameters LightningCLI stored in a task checkpoint (classes, head mode, the net's config)."""
    obj = read_checkpoint(path) if checkpoint is None else checkpoint
    hparams = obj.get("hyper_parameters")
    if not isinstance(hparams, dict) or not isinstance(hparams.get("net"), dict):
        raise UsageError(f"{path} is not a task checkpoint written by the unlearning CLI (no net config in its hyperparameters)")
    return hparams


def build_net(path: str | Path, checkpoint: dict[str, Any] | None = None, allow_modules: Sequence[str] = ()) -> nn.Module:
    """Rebuild the network a task checkpoint describes and load its weights, in eval mode.

    The network's class must be an allowed one (:func:`allowed_class`) and its ``init_args`` plain values:
    a nested ``class_path`` would be one more choice of code made by the file.
    """
    checkpoint = read_checkpoint(path) if checkpoint is None else checkpoint
    check_recorded_classes(path, checkpoint, allow_modules)
    config = task_hparams(path, checkpoint)["net"]
    net_class = allowed_class(config.get("class_path"), f"{path}: hyper_parameters.net.class_path", nn.Module, allow_modules)
    init_args = config.get("init_args") or {}
    nested = next(class_paths(init_args, "hyper_parameters.net.init_args"), None)
    if not isinstance(init_args, dict) or nested is not None:
        where = nested[0] if nested else "hyper_parameters.net.init_args"
        raise UsageError(f"{path}: {where}: a network's init_args must be plain values, not classes; refused")
    try:
        net = net_class(**init_args)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{path}: hyper_parameters.net.init_args do not fit {net_class.__name__}: {err}") from None
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
