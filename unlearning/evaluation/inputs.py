"""Reading the checkpoints an evaluation is given, and refusing combinations that cannot be compared.

Every mistake here is a :class:`~unlearning.errors.UsageError` raised before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unlearning.checkpoints import build_net, read_checkpoint, task_hparams
from unlearning.data.splits import NUM_CLASSES, check_classes, recorded_split_seed
from unlearning.errors import UsageError
from unlearning.metrics import unit_to_label

#: how the command's flags name the three roles, so an error points at the flag to fix
FLAGS = {"checkpoint": "--ckpt", "oracle": "--oracle", "pretrained": "--pretrained"}
CLASS_KEYS = ("forget_classes", "new_classes", "forget_fraction")


def describe(name: str, path: str | Path) -> str:
    return f"{FLAGS.get(name, name)} {path}"


@dataclass
class Loaded:
    """A checkpoint's network, which label each of its output units stands for, and what the checkpoint records."""

    path: str
    net: nn.Module
    unit_labels: Tensor
    hparams: dict[str, Any]
    datamodule_hparams: dict[str, Any]
    from_weights: bool = False  # an unlearning or replacement run, which starts from trained weights (its checkpoint keeps their "before")

    def classes(self) -> dict[str, Any]:
        """The recorded forget classes, new classes and forget fraction (class lists sorted; absent keys left out)."""
        return {
            k: sorted(self.hparams[k]) if isinstance(self.hparams[k], list) else self.hparams[k] for k in CLASS_KEYS if k in self.hparams
        }


def load(name: str, path: str | Path, allow_modules: Sequence[str] = ()) -> Loaded:
    """Rebuild a network from a task checkpoint; a replacement that reused the old units maps them to the new labels.

    The network's class must come from the project's models or ``allow_modules`` (see :func:`~unlearning.checkpoints.allowed_class`).
    """
    if not Path(path).is_file():
        raise UsageError(f"{describe(name, path)}: no such checkpoint")
    checkpoint = read_checkpoint(path)
    hparams = task_hparams(path, checkpoint)
    net = build_net(path, checkpoint, allow_modules)
    if not isinstance(getattr(net, "head", None), nn.Linear) or not isinstance(getattr(net, "features", None), nn.Module):
        raise UsageError(f"{describe(name, path)}: {type(net).__name__} is not head(features(x)) with a linear head")
    with torch.no_grad():
        shape = tuple(net(torch.zeros(1, 1, 28, 28)).shape)
    if shape != (1, NUM_CLASSES):
        raise UsageError(f"{describe(name, path)}: {type(net).__name__} gives outputs of shape {shape[1:]}, not {NUM_CLASSES} logits")
    if hparams.get("head_mode") == "reuse":
        unit_labels = unit_to_label(NUM_CLASSES, hparams["forget_classes"], hparams["new_classes"])
    else:
        unit_labels = torch.arange(NUM_CLASSES)
    return Loaded(str(path), net, unit_labels, hparams, checkpoint.get("datamodule_hyper_parameters") or {}, "before" in checkpoint)


def check_architectures(loaded: Mapping[str, Loaded], reference: str) -> None:
    """All checkpoints must be one network: the probe and the gaps compare like with like."""

    def architecture(name: str) -> tuple[str, dict[str, tuple[int, ...]]]:
        return loaded[name].hparams["net"]["class_path"], {k: tuple(v.shape) for k, v in loaded[name].net.state_dict().items()}

    expected = architecture(reference)
    for name in loaded:
        found = architecture(name)
        if found != expected:
            detail = " with other layer shapes" if found[0] == expected[0] else ""
            raise UsageError(
                f"{describe(name, loaded[name].path)} is a {found[0]} and {describe(reference, loaded[reference].path)} a {expected[0]}"
                f"{detail}: all checkpoints must have one architecture"
            )


def resolve_setting(flag: str, given: Any, recorded: Any, default: Any) -> Any:
    """The recorded value of a setting, or ``default`` when nothing is recorded; a given value must agree with a recorded one."""
    if given is not None and recorded is not None and given != recorded:
        raise UsageError(f"{flag} {given} does not match the checkpoint's {flag.lstrip('-').replace('-', '_')} {recorded}")
    for value in (given, recorded):
        if value is not None:
            return value
    return default


def resolve_classes(subject: Loaded, name: str, forget_classes: Sequence[int] | None, new_classes: Sequence[int] | None) -> dict[str, Any]:
    """Forget classes, new classes and forget fraction: what ``subject`` records, checked against the given ones."""
    check_classes(list(forget_classes or []), list(new_classes or []))
    recorded = subject.classes()
    forget = resolve_setting("--forget-classes", _sorted(forget_classes), recorded.get("forget_classes"), None)
    new = resolve_setting("--new-classes", _sorted(new_classes), recorded.get("new_classes"), [])
    fraction = recorded.get("forget_fraction")
    if forget is None:
        raise UsageError(f"{describe(name, subject.path)} does not record its forget classes; pass --forget-classes")
    check_classes(forget, new)
    if not forget and fraction is None:
        raise UsageError(f"{describe(name, subject.path)} has no forget classes and no forget fraction: nothing was forgotten")
    return {"forget_classes": forget, "new_classes": new, "forget_fraction": fraction}


def _sorted(classes: Sequence[int] | None) -> list[int] | None:
    return None if classes is None else sorted(classes)


def check_references(loaded: Mapping[str, Loaded], oracle: str, pretrained: str, classes: dict[str, Any]) -> None:
    """Every checkpoint but the pretrained one was made for exactly these classes; the oracle was retrained
    without their data (and, for random samples, split them the same way: a run that started from trained weights is no
    oracle, whatever it records); the pretrained model learned them."""
    for name, item in loaded.items():
        stage = item.hparams.get("stage")
        if name == oracle and stage not in (None, "oracle"):
            raise UsageError(f"{describe(name, item.path)} is a checkpoint of stage {stage!r}, not an oracle (stage: oracle)")
        if name == oracle and item.from_weights:
            raise UsageError(
                f"{describe(name, item.path)} started from trained weights (an unlearning or replacement run), not an oracle "
                "retrained without the class (configs/oracle.yaml)"
            )
        if name == pretrained:
            if stage not in (None, "pretrain"):
                raise UsageError(f"{describe(name, item.path)} is a checkpoint of stage {stage!r}, not a pretrained one (stage: pretrain)")
            continue
        for key, recorded in item.classes().items():
            if recorded != classes[key]:
                raise UsageError(f"{describe(name, item.path)} was made with {key}={recorded}, but the evaluation has {key}={classes[key]}")
    if classes["forget_fraction"] is not None:
        for name, item in loaded.items():
            if name == pretrained:
                continue
            for key, read in (("split seed", recorded_split_seed), ("val_size", lambda hparams: hparams.get("val_size"))):
                ours, theirs = read(loaded[oracle].datamodule_hparams), read(item.datamodule_hparams)
                if ours is not None and theirs is not None and ours != theirs:
                    raise UsageError(
                        f"{describe(name, item.path)} split its data with {key}={theirs}, the oracle with {key}={ours}: their forget samples differ"
                    )
    never = sorted(set(classes["forget_classes"]) & set(loaded[pretrained].hparams.get("new_classes") or []))
    if never:
        raise UsageError(
            f"{describe(pretrained, loaded[pretrained].path)} never learned class {never} (held out as new): nothing to forget"
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU; anything else must be usable here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise UsageError(f"--device {name} is not usable here: {err}") from err
    return device


def check_threads(n: int) -> None:
    """Refuse a thread count torch cannot run with; the bench calls it before anything is written."""
    if n < 1:
        raise UsageError(f"--threads must be at least 1, got {n}")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads, restoring the previous number afterwards."""
    check_threads(n)
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
