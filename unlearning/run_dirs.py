"""Run folders: ``lightning_logs/<stage>/<method>/version_N``, one per run, claimed atomically, named for what the run is.

Every command that writes a run folder (``fit``, ``validate``, ``test``, the bench) goes through
:class:`RunLogger`, and ``--ckpt_path last`` is resolved here (:func:`newest_resumable`).

A process that writes into a run folder holds its lock (:func:`lock_run`: ``flock`` on ``<run>/.lock``, exclusive for
a fit, shared for ``validate``/``test``), so two resumes of one run cannot both write; the kernel drops the lock
when the process ends, however it ends, so a crash leaves no stale lock. A run claimed fresh carries an
``.incomplete`` mark until its process lets go of it: a folder still marked, with no checkpoint and no lock
holder, is a run killed before its first checkpoint, and the next claim under the same ``<stage>/<method>``
removes it (:func:`sweep_dead_runs`).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from unlearning.checkpoints import without_none
from unlearning.errors import UsageError
from unlearning.files import unwritable_as_usage_error

VERSION = re.compile(r"version_(\d+)$")
LOCK, INCOMPLETE = ".lock", ".incomplete"
#: run folder -> the open lock file this process holds on it, and whether this process marked the run incomplete
_held: dict[Path, tuple[int, bool]] = {}


class RunLogger(TensorBoardLogger):
    """TensorBoard's logger, whose run folder is claimed by an exclusive ``mkdir``, never by listing and then creating.

    Lightning picks ``version_<max + 1>`` and creates it later, so two runs started together in one
    folder could both pick the same number and write into one folder. Here the number is taken by
    creating the folder, which succeeds for exactly one process; a run that loses moves on to the next.
    Only global rank 0 claims a folder; the other ranks never write into it (checkpoint paths are
    broadcast from rank 0). ``claimed`` says whether this process created the folder.
    """

    claimed = False
    _created: list[Path] = []  # noqa: RUF012 - the folders a claim created; set per instance when it claims

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
        self._created = [p for p in (root, *root.parents) if not p.exists()]  # removed again if the run never starts
        with unwritable_as_usage_error(root, "give --trainer.default_root_dir a folder you can write"):
            root.mkdir(parents=True, exist_ok=True)
            sweep_dead_runs(root)
            run_dir = claim_next(root, self._get_next_version())
        number = int(run_dir.name.removeprefix("version_"))
        self.claimed = True
        lock_run(run_dir, mark_incomplete=True)
        atexit.register(_remove_if_empty, run_dir, self._created)  # claimed for a run that never started
        return number

    def remove_if_empty_handed(self) -> None:
        """Delete the folder this process claimed if the run wrote no checkpoint: a failed run leaves nothing behind,
        not even the ``<stage>/<method>`` folders it created."""
        if self.claimed and self._version is not None:
            run_dir = Path(self.log_dir)
            if not any(run_dir.glob("checkpoints/*.ckpt")):
                self.finalize("failed")  # closes TensorBoard's writer: its thread must not write into a removed folder
                shutil.rmtree(run_dir, ignore_errors=True)
                _remove_if_empty(run_dir, self._created)
                self.claimed = False


def claim_next(root: Path, number: int = 0) -> Path:
    """``root/version_N`` for the first N from ``number`` whose folder this process creates: an exclusive ``mkdir`` succeeds
    for one process only, so two runs started together never share a folder."""
    while True:
        try:
            (root / f"version_{number}").mkdir()
            return root / f"version_{number}"
        except FileExistsError:
            number += 1


def lock_run(run_dir: Path, shared: bool = False, mark_incomplete: bool = False) -> None:
    """Hold ``run_dir``'s lock until :func:`release_runs` or the end of this process; refuse in one line if another holds it.

    Only global rank 0 locks (the other ranks of a run never write its folder). ``mark_incomplete`` marks a
    freshly claimed run, as a run not yet safe to keep, until :func:`release_runs`.
    """
    run_dir = Path(run_dir)
    if rank_zero_only.rank != 0 or run_dir in _held:
        return
    with unwritable_as_usage_error(run_dir, "run it as the folder's owner or copy the checkpoint elsewhere"):
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(
            f"run folder {run_dir} is in use by another process (a fit training or resuming it); wait for it to end, or start a new run"
        ) from None
    if mark_incomplete:
        (run_dir / INCOMPLETE).touch()
    _held[run_dir] = (fd, mark_incomplete)


def release_runs() -> None:
    """Let go of every run folder this process holds: unmark the runs it started, then drop their locks."""
    for run_dir, (fd, marked) in list(_held.items()):
        if marked:
            (run_dir / INCOMPLETE).unlink(missing_ok=True)
        os.close(fd)
        del _held[run_dir]


def sweep_dead_runs(root: Path) -> None:
    """Remove the runs under ``root`` killed before their first checkpoint: still marked incomplete, no checkpoint, no lock holder."""
    for run_dir in root.glob("version_*"):
        if not (run_dir / INCOMPLETE).exists() or any(run_dir.glob("checkpoints/*.ckpt")):
            continue
        try:
            fd = os.open(run_dir / LOCK, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(run_dir, ignore_errors=True)
        except BlockingIOError:
            pass  # a live run
        finally:
            os.close(fd)


def _remove_if_empty(run_dir: Path, created: list[Path]) -> None:
    """Remove a claimed run folder holding nothing but its lock and mark, then the parents its claim created while they are empty."""
    with contextlib.suppress(OSError):
        if {p.name for p in run_dir.iterdir()} <= {LOCK, INCOMPLETE}:
            shutil.rmtree(run_dir)
    for folder in created:  # deepest first
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
    """What makes two fits the same run for ``--ckpt_path``: the task, the data and the seed, not the trainer's budget
    (``None`` values left out, so a config dumped with or without them compares alike)."""
    return {key: without_none(config.get(key)) for key in ("seed_everything", "model", "data")}


def config_differences(run_dir: Path, config: Mapping[str, Any]) -> list[str]:
    """The parts of :func:`comparable` in which ``run_dir``'s ``config.yaml`` differs from ``config`` (empty: the same run).

    Raises a :class:`UsageError` when the folder has no readable ``config.yaml``: then nothing tells which run it is.
    """
    try:
        theirs = comparable(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"{run_dir} has no readable config.yaml ({type(err).__name__})") from None
    wanted = comparable(config)
    return [_difference(key, theirs.get(key), wanted[key]) for key in wanted if theirs.get(key) != wanted[key]]


def _difference(key: str, theirs: Any, ours: Any) -> str:
    """The first setting under ``key`` that differs, as ``key.sub: theirs -> ours``."""
    if isinstance(theirs, Mapping) and isinstance(ours, Mapping):
        for sub in dict.fromkeys([*theirs, *ours]):
            if theirs.get(sub) != ours.get(sub):
                return _difference(f"{key}.{sub}", theirs.get(sub), ours.get(sub))
    return f"{key} {theirs!r} (the run's) vs {ours!r} (this command's)"


def newest_resumable(root: Path, config: Mapping[str, Any]) -> Path:
    """The newest ``last.ckpt`` under ``root`` (a ``<stage>/<method>`` folder) whose run had this configuration.

    Refuses, naming the candidates and why each does not fit, when there is none: resuming another
    configuration's run would train its checkpoint under this run's config and lose its folder.
    """
    candidates = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    reasons = []
    for last in candidates:
        try:
            differing = config_differences(last.parents[1], config)
        except UsageError as err:
            reasons.append(f"{last.parents[1].name} ({err})")
            continue
        if not differing:
            return last
        reasons.append(f"{last.parents[1].name} (other {'; '.join(differing)})")
    if not candidates:
        raise UsageError(f"--ckpt_path last: no run under {root} has a checkpoints/last.ckpt to resume")
    raise UsageError(f"--ckpt_path last: no run under {root} has this configuration; candidates: {'; '.join(reasons)}")
