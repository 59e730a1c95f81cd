"""Run folders: ``lightning_logs/<stage>/<method>/version_N``, one per run, claimed atomically, named for what the run is.

Every command that writes a run folder (``fit``, ``validate``, ``test``, the bench) goes through
:class:`RunLogger`, and ``--ckpt_path last`` is resolved here (:func:`newest_resumable`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from unlearning.errors import UsageError

VERSION = re.compile(r"version_(\d+)$")


class RunLogger(TensorBoardLogger):
    """TensorBoard's logger, whose run folder is claimed by an exclusive ``mkdir``, never by listing and then creating.

    Lightning picks ``version_<max + 1>`` and creates it later, so two runs started together in one
    folder could both pick the same number and write into one folder. Here the number is taken by
    creating the folder, which succeeds for exactly one process; a run that loses moves on to the next.
    Only global rank 0 claims a folder; the other ranks never write into it (checkpoint paths are
    broadcast from rank 0). ``claimed`` says whether this process created the folder.
    """

    claimed = False

    def __init__(self, save_dir: str | None = None, name: str | None = None, default_hp_metric: bool = False, **kwargs: Any):
        """``save_dir`` and ``name`` default to ``<default_root_dir>/lightning_logs`` and ``<stage>/<method>``, filled in by the CLI
        from the run's config (so ``config.yaml`` records them); ``default_hp_metric`` is off: the HParams tab gets the run's
        final accuracies instead of a placeholder."""
        super().__init__(
            save_dir if save_dir is not None else "lightning_logs", name=name or "", default_hp_metric=default_hp_metric, **kwargs
        )

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = self._claim_version() if rank_zero_only.rank == 0 else self._get_next_version()
        return self._version

    def _claim_version(self) -> int:
        root = Path(self.root_dir)
        root.mkdir(parents=True, exist_ok=True)
        number = self._get_next_version()
        while True:
            try:
                (root / f"version_{number}").mkdir()
            except FileExistsError:
                number += 1
                continue
            self.claimed = True
            atexit.register(_remove_if_empty, root / f"version_{number}")  # claimed for a run that never started
            return number

    def remove_if_empty_handed(self) -> None:
        """Delete the folder this process claimed if the run wrote no checkpoint: a failed run leaves nothing behind."""
        if self.claimed and self._version is not None:
            run_dir = Path(self.log_dir)
            if not any(run_dir.glob("checkpoints/*.ckpt")):
                self.finalize("failed")  # closes TensorBoard's writer: its thread must not write into a removed folder
                shutil.rmtree(run_dir, ignore_errors=True)
                self.claimed = False


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()  # only succeeds while the folder is empty


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run folder a checkpoint lies in (``.../version_N/checkpoints/x.ckpt``), or ``None``."""
    path = Path(os.path.normpath(checkpoint))
    if path.parent.name == "checkpoints" and len(path.parents) > 2 and VERSION.match(path.parents[1].name):
        return path.parents[1]
    return None


def logger_location(run_dir: Path) -> tuple[str, str]:
    """``(save_dir, name)`` of the logger that wrote ``run_dir``: as its ``config.yaml`` records them, so that every path
    the resumed or tested run derives is the same string as the original's; from the path alone where it records none."""
    try:
        recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["logger"]["init_args"]
        save_dir, name = str(recorded["save_dir"]), str(recorded["name"])
        if (Path(save_dir) / name / run_dir.name).resolve() == run_dir.resolve():
            return save_dir, name
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        pass
    return str(run_dir.parent.parent), run_dir.parent.name


def snake(name: str) -> str:
    """``SeedMLP`` -> ``seed_mlp``, ``LeNet`` -> ``lenet``, ``SelectiveGradient`` -> ``selective_gradient``."""
    words = re.findall(r"[A-Z]+(?=[A-Z][a-z]|\b)|[A-Z]?[a-z]+|[A-Z]+|\d+", name)
    joined = "_".join(w.lower() for w in words)
    return {"le_net": "lenet"}.get(joined, joined)


def classes_label(data: Mapping[str, Any]) -> str:
    """What a run forgets: ``forget9``, ``forget3_5``, ``replace6to3``, ``random0.9``."""
    forget, new, fraction = data.get("forget_classes") or [], data.get("new_classes") or [], data.get("forget_fraction")
    if fraction is not None:
        return f"random{fraction:g}"
    if new:
        return f"replace{'_'.join(map(str, forget))}to{'_'.join(map(str, new))}"
    return f"forget{'_'.join(map(str, forget))}"


def run_name(stage: str, net_class: str, data: Mapping[str, Any], config_file: str | Path | None) -> str:
    """``<stage>/<method>``: what TensorBoard's run filter separates.

    ``pretrain/<net>`` (``_new<classes>`` where classes are held out), ``oracle/<classes>`` (``_<net>`` beyond
    SeedMLP), and for unlearning and replacement the config file's name (``unlearn/selective_gradient``),
    else the task's.
    """
    net = snake(net_class.rpartition(".")[2])
    if stage == "pretrain":
        new = data.get("new_classes") or []
        return f"pretrain/{net}" + (f"_new{'_'.join(map(str, new))}" if new else "")
    if stage == "oracle":
        return f"oracle/{classes_label(data)}" + ("" if net == "seed_mlp" else f"_{net}")
    return f"{stage}/{Path(config_file).stem if config_file else net}"


def comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two fits the same run for ``--ckpt_path last``: the task, the data and the seed, not the trainer's budget."""
    return {key: config.get(key) for key in ("seed_everything", "model", "data")}


def newest_resumable(root: Path, config: Mapping[str, Any]) -> Path:
    """The newest ``last.ckpt`` under ``root`` (a ``<stage>/<method>`` folder) whose run had this configuration.

    Refuses, naming the candidates and why each does not fit, when there is none: resuming another
    configuration's run would train its checkpoint under this run's config and lose its folder.
    """
    candidates = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    wanted = comparable(config)
    reasons = []
    for last in candidates:
        saved = last.parents[1] / "config.yaml"
        try:
            theirs = comparable(yaml.safe_load(saved.read_text()) or {})
        except (OSError, yaml.YAMLError) as err:
            reasons.append(f"{last.parents[1].name} (no readable config.yaml: {type(err).__name__})")
            continue
        if theirs == wanted:
            return last
        differing = [key for key in wanted if theirs.get(key) != wanted[key]]
        reasons.append(f"{last.parents[1].name} (other {', '.join(differing)})")
    if not candidates:
        raise UsageError(f"--ckpt_path last: no run under {root} has a checkpoints/last.ckpt to resume")
    raise UsageError(
        f"--ckpt_path last: no run under {root} has this configuration; candidates: {'; '.join(reasons)}. "
        f"Give --ckpt_path <file> to resume one of them anyway"
    )
