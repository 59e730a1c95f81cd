"""``unlearning fit|validate|test``: LightningCLI with the project's run folders, console and safeguards.

Everything here shapes how a run is set up and reported; what a run computes lives in the tasks and the
datamodule. :func:`lightning_main` is what :mod:`unlearning.cli` dispatches to.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import math
import re
import sys
import time
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError, ArgumentParser, Namespace, lazy_instance
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins import CheckpointIO
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities import rank_zero_deprecation, rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from unlearning.checkpoints import (
    AtomicCheckpointIO,
    check_recorded_classes,
    check_resumable,
    class_paths,
    import_class,
    read_checkpoint,
    recorded_differences,
)
from unlearning.data.mnist import MNISTDataModule
from unlearning.data.splits import check_classes
from unlearning.errors import UsageError
from unlearning.run_dirs import (
    RunLogger,
    config_differences,
    lock_run,
    logger_location,
    newest_resumable,
    release_runs,
    run_dir_of,
    run_name,
)
from unlearning.tasks.base import BaseTask
from unlearning.tasks.forget import missing_weights


# -- notices checked to be harmless here, each silenced at its source -----------------------------------
def silence_checked_notices() -> None:
    """Filter Lightning's notices that do not apply to this project, each for the reason beside it; every other warning shows.

    Called on import and again by :func:`lightning_main`, since a test runner resets the warning filters per test.
    """
    # Tasks take ``training_step(dataloader_iter)`` on purpose (see BaseTask.automatic_optimization) and fetch one
    # batch per step, which is all the two "experimental" notices warn about.
    warnings.filterwarnings("ignore", message="Found `dataloader_iter` argument in the `training_step`", module="lightning")
    warnings.filterwarnings("ignore", message="You are using the `dataloader_iter` step flavor", module="lightning")
    # Lightning's own call into torch's pytree module; nothing this project can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", module="lightning")
    # Lightning 2.6's LightningCLI still uses jsonargparse's older API; it works until jsonargparse 5, which pyproject.toml excludes.
    warnings.filterwarnings("ignore", message=r"(?s).*(was deprecated in v4|only one JsonargparseDeprecationWarning)", module="lightning")
    # Run folders are claimed fresh (RunLogger), so the only checkpoint folder that already holds files is a resumed run's own.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty", module="lightning")
    # The bench, the speed comparison and the tests pass each run's arguments explicitly while their own sit in sys.argv.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python", module="lightning")
    # Where SLURM is installed, Lightning suggests `srun` for every run started without it: a one-process run (a fit on one
    # device, a bench cell, which submitit starts inside its own SLURM task) needs none; several processes use the strategy.
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used", module="lightning")
    # Per-class accuracies are torchmetrics states summed across ranks in ``compute()`` before they are logged; a second
    # reduction by ``self.log(..., sync_dist=True)`` would average identical numbers.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)", module="lightning")
    # A fit that stops (max_steps) before its first validation has no val/acc for the best checkpoint to rank: RunEnd says
    # so, and how to score the run, in words; a monitor of the user's own that is never logged still warns.
    warnings.filterwarnings(
        "ignore", message=r"`ModelCheckpoint\(monitor='val/acc'\)` could not find the monitored key", module="lightning"
    )


class _NoBoilerplate(logging.Filter):
    """Lightning's lines that say nothing about this run: its cloud tips (``💡 Tip: ...``), ``Seed set to 0`` (the seed is in the
    run's config.yaml), the accelerators it did not use (``GPU available: False, used: False``, ``TPU available: ...``) and
    that a limit of 1.0 means all batches. A GPU left unused still gets Lightning's warning."""

    PREFIXES = ("💡 Tip", "Seed set to", "GPU available:", "TPU available:", "HPU available:")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not message.startswith(self.PREFIXES) and "was configured so 100% of the batches will be used" not in message


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.fabric.utilities.seed"):
    logging.getLogger(_name).addFilter(_NoBoilerplate())
silence_checked_notices()


#: shipped configs renamed, old file name -> new: the old name stays, as a link to the new file, for one release
RENAMED_CONFIGS = {"reinit_distill.yaml": "reset_retrain.yaml"}


def renamed_config(path: str) -> str:
    """``path``, or the file it was renamed to (with a one-line deprecation notice) where it is a shipped config's old name."""
    new = RENAMED_CONFIGS.get(Path(path).name)
    if new is None or not Path(path).is_symlink():
        return path
    renamed = str(Path(path).with_name(new))
    rank_zero_deprecation(f"{path} is now {renamed}; the old name goes in the next release")
    return renamed


#: source -> target: the classes are stated once, in the datamodule, and the seed once, as ``seed_everything``
LINKS = {**{f"data.init_args.{key}": f"model.init_args.{key}" for key in ("forget_classes", "new_classes", "forget_fraction")},
         "seed_everything": "data.init_args.seed"}  # fmt: skip


def linked_target_given(argv: list[str]) -> tuple[str, str, str] | None:
    """``(where, source, target)`` for the first :data:`LINKS` target a command line or one of its config files sets.

    jsonargparse replaces a link's target with its source without a word, so ``model.init_args.forget_classes: [4]``
    in a YAML would forget the datamodule's class 9, and ``--data.init_args.seed 3`` would split with seed 0.
    """
    plain = {target.replace(".init_args", ""): (source, target) for source, target in LINKS.items()}
    for arg in argv:
        if arg.startswith("--") and (hit := plain.get(arg[2:].split("=", 1)[0].replace(".init_args", ""))):
            return "on the command line", *hit
    for name in _config_files(argv):
        try:
            loaded = yaml.safe_load(Path(name).read_text())
        except (OSError, yaml.YAMLError):
            continue  # the parser reports a file it cannot read
        for key in _dotted_keys(loaded):
            if hit := plain.get(key.replace(".init_args", "")):
                return f"in {name}", *hit
    return None


def _dotted_keys(tree: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield f"{prefix}{key}"
            yield from _dotted_keys(value, f"{prefix}{key}.")


class UnlearningCLI(LightningCLI):
    """LightningCLI whose task reads the classes from the datamodule (a user states them once), whose runs get
    named, atomically claimed folders, and whose fit refuses what it cannot honour before anything is written."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's commands less ``predict``: no task here defines prediction data, so it could only fail after loading."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in LINKS.items():
            parser.link_arguments(source, target)
        # the model summary is off unless asked for: fifteen lines a fit, whose FLOPs column is all zeros for these networks
        parser.set_defaults({"trainer.logger": lazy_instance(RunLogger), "trainer.enable_model_summary": False})

    # -- before anything is instantiated -----------------------------------------------------------------
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then name the run folder, check what a run needs, and resolve ``--ckpt_path``; every refusal here writes nothing.

        Done right after parsing because Lightning reads the ``--ckpt_path`` file next (for the task's
        hyperparameters): a missing, truncated or foreign file must be refused in one line first.
        """
        given = linked_target_given(list(sys.argv[1:] if args is None else args))
        if given is not None:
            where, source, target = given
            raise UsageError(f"{target} (given {where}) is taken from {source}, which would silently replace it; set {source} instead")
        super().parse_arguments(parser, args)
        self.subcommand = self.config.get("subcommand")
        self._prepare_run()

    def _prepare_run(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        task = import_class(config.model.class_path)
        logger = config.trainer.logger
        ckpt_path = config.get("ckpt_path")
        data = config.data.get("init_args") if isinstance(config.data, Namespace) else None
        if data is not None:  # the classes first: a user who fixes the weights should not then learn the class was wrong
            check_classes(list(data.get("forget_classes") or []), list(data.get("new_classes") or []))
        seed = config.get("seed_everything")
        if type(seed) is int and not 0 <= seed < 2**32:  # True draws a seed; numpy's bounds, checked before anything is written
            raise UsageError(f"seed_everything must lie in 0..{2**32 - 1}, got {seed}")
        if isinstance(logger, Namespace) and import_class(logger.class_path) is RunLogger:
            args = logger.init_args
            if args.save_dir is None:
                args.save_dir = str(Path(config.trainer.default_root_dir or ".") / "lightning_logs")
            if args.name is None:
                files = [renamed_config(str(f)) for f in config.get("config") or []]
                args.name = run_name(task.run_stage(config.model.init_args), config.model.init_args.net.class_path,
                                     config.data.init_args, files[0] if files else None)  # fmt: skip
            if ckpt_path is not None:
                ckpt_path = self._resolve_checkpoint(config, args)
        weights = config.model.init_args.get("weights")
        if self.subcommand == "fit" and task.starts_from_weights and weights is None and ckpt_path is None:
            raise UsageError(missing_weights(task.__name__))
        if self.subcommand in ("validate", "test") and weights is None and ckpt_path is None:  # it would score a fresh draw
            raise UsageError(
                f"`{self.subcommand}` scores a trained model: give --ckpt_path (a fit's checkpoint, e.g. <run folder>/checkpoints/last.ckpt)"
            )
        if self.subcommand:
            config.ckpt_path = ckpt_path  # the saved config.yaml records the file, never the word "last"

    def _resolve_checkpoint(self, config: Namespace, logger_args: Namespace) -> str:
        """``--ckpt_path``, checked and resolved, and the logger pointed at the run folder it belongs to.

        ``fit`` resumes into the checkpoint's own run folder (``last``: the newest run of the same
        configuration, see :func:`~unlearning.run_dirs.newest_resumable`); ``validate`` and ``test``
        log into it too, or into ``<stage>/<name>`` named for the checkpoint when it lies in none.
        A checkpoint of another configuration is refused, naming what differs (:meth:`_check_same_run`), and
        the run folder is locked for this command's life, so two resumes of one run cannot both write.
        """
        ckpt_path = config.ckpt_path
        dumped = yaml.safe_load(self._parser(self.subcommand).dump(config, skip_validation=True))
        if ckpt_path == "last":
            if self.subcommand != "fit":
                raise UsageError(f"--ckpt_path last resumes a fit; `{self.subcommand}` needs a checkpoint file")
            if (config.trainer.num_nodes or 1) > 1:
                raise UsageError("--ckpt_path last is resolved from this node's files; with several nodes give the checkpoint's path")
            ckpt_path = str(newest_resumable(Path(logger_args.save_dir) / logger_args.name, dumped))
        checkpoint = check_resumable(ckpt_path) if self.subcommand == "fit" else read_checkpoint(ckpt_path)
        own = {cp.rpartition(".")[0] for key in ("model", "data") for _, cp in class_paths(dumped.get(key), key) if isinstance(cp, str)}
        check_recorded_classes(ckpt_path, checkpoint, sorted(own))  # the modules this command's config names are the user's say-so
        run_dir = run_dir_of(ckpt_path)
        self._check_same_run(ckpt_path, checkpoint, run_dir, dumped)
        if logger_args.version is None:
            if run_dir is not None:
                logger_args.save_dir, logger_args.name = logger_location(run_dir)
                logger_args.version = int(run_dir.name.removeprefix("version_"))
                lock_run(run_dir, shared=self.subcommand != "fit")
            elif self.subcommand != "fit":
                logger_args.name = f"{self.subcommand}/{Path(ckpt_path).stem}"
        return str(ckpt_path)

    def _check_same_run(self, ckpt_path: str, checkpoint: dict[str, Any], run_dir: Path | None, dumped: dict[str, Any]) -> None:
        """Refuse a checkpoint this command's configuration did not train, in one line naming what differs.

        The checkpoint's own record (task, network, stage, classes; for ``fit`` the split's seed too) must
        match this command's, since nothing from the file is taken into the config (:meth:`_parse_ckpt_path`).
        A fit resumes into the checkpoint's run folder, so that run's whole ``config.yaml`` (task, data and
        seed) must match as ``--ckpt_path last`` requires.
        """
        differing = recorded_differences(checkpoint, dumped, with_seed=self.subcommand == "fit")
        if self.subcommand == "fit" and run_dir is not None and not differing:
            try:
                differing = config_differences(run_dir, dumped)
            except UsageError as err:
                raise UsageError(f"cannot resume {ckpt_path}: {err}, so it may be another configuration's run") from None
        if differing:
            doing = "resume" if self.subcommand == "fit" else self.subcommand
            raise UsageError(
                f"cannot {doing} {ckpt_path} with this configuration: {'; '.join(differing)}. "
                f"Give the config that trained it (its run folder's config.yaml)"
            )

    def _parse_ckpt_path(self) -> None:
        """Nothing from the checkpoint enters the configuration.

        LightningCLI would parse the checkpoint's hyperparameters into the model's config here, so a file would
        choose the task and network classes to import and build (a checkpoint is data: it must choose no code)
        and a resume could silently train another configuration. The classes come from the user's command and
        config alone; :meth:`_check_same_run` has refused a checkpoint they did not train.
        """

    # -- the trainer ---------------------------------------------------------------------------------------
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's trainer, with the project's checkpoint files, console and (where the config names none) a
        lighter profiler and progress bar.

        The profiler and progress bar are per-step costs a small model feels (``python -m unlearning.speed``); a
        config that sets ``trainer.profiler`` or a progress bar callback gets exactly that. The task's checkpoint
        callbacks are the trainer's own (nothing for ``configure_callbacks`` to override), checkpoints are written
        whole or not at all, and every run ends with a summary on the console.
        """
        config = (self.config_init[self.subcommand] if self.subcommand else self.config_init).get("trainer", {})
        if config.get("profiler") is None:
            kwargs.setdefault("profiler", NoProfiler())
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        callbacks = config.get("callbacks") or []
        callbacks = [*(callbacks if isinstance(callbacks, list) else [callbacks]), *self.model.checkpoint_callbacks(), RunEnd()]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(ThrottledProgressBar() if sys.stdout.isatty() else LogProgress())
        kwargs.setdefault("callbacks", callbacks)
        trainer = super().instantiate_trainer(**kwargs)
        check_trainer(trainer, fitting=self.subcommand in (None, "fit"))
        if self.subcommand in (None, "fit") and isinstance(trainer.logger, RunLogger):
            _ = trainer.logger.version  # claimed now, in the process that parsed the command: a ddp_spawn parent knows its workers' folder
        return trainer

    def before_validate(self) -> None:
        self.config_init["validate"]["verbose"] = False  # RunEnd prints the metrics, in percent

    def before_test(self) -> None:
        self.config_init["test"]["verbose"] = False  # RunEnd prints the metrics, in percent


def check_trainer(trainer: Trainer, fitting: bool) -> None:
    """Reject trainer options a task that steps its own optimizer cannot honour, and a fit of no steps (it would claim a
    run folder and write no checkpoint); an epoch or step budget shorter than the logging interval logs at its end."""
    if trainer.gradient_clip_val:
        raise UsageError("tasks step their optimizer themselves: use --model.init_args.gradient_clip_val, not --trainer.gradient_clip_val")
    if trainer.accumulate_grad_batches != 1:
        raise UsageError("tasks step their optimizer every batch: raise --data.init_args.batch_size instead of accumulating gradients")
    if fitting and (trainer.max_steps == 0 or trainer.max_epochs == 0 or trainer.limit_train_batches == 0):
        raise UsageError("this fit would train nothing (max_steps, max_epochs or limit_train_batches is 0): give it at least one step")
    if trainer.log_every_n_steps < 1:  # Lightning takes the step modulo it
        raise UsageError(f"--trainer.log_every_n_steps must be at least 1, got {trainer.log_every_n_steps}")
    if trainer.val_check_interval is not None and trainer.val_check_interval <= 0:  # Lightning divides by it
        raise UsageError(f"--trainer.val_check_interval must be positive (steps, or a share of an epoch), got {trainer.val_check_interval}")
    limit = trainer.limit_train_batches
    shorter = [n for n in (limit if isinstance(limit, int) else 0, trainer.max_steps) if 0 < n < trainer.log_every_n_steps]
    if shorter:  # an epoch or a step budget shorter than the interval would log nothing (and Lightning would warn)
        trainer.log_every_n_steps = min(shorter)


class NoProfiler(PassThroughProfiler):
    """Lightning's default "no profiler", without its cost: ``PassThroughProfiler.profile`` builds a
    generator context manager for each hook it wraps, about 30 a training step."""

    _nothing = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext:  # type: ignore[override]
        return self._nothing


class ThrottledProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn at most every ``min_interval`` seconds (tqdm's own default).

    Lightning redraws it after every batch, hundreds of times a second for a small model; the last
    batch of each bar is always drawn.
    """

    def __init__(self, min_interval: float = 0.1, **kwargs: Any):
        super().__init__(**kwargs)
        self.min_interval = min_interval
        self._drawn_at = -math.inf

    def _should_update(self, current: int, total: int) -> bool:
        if not super()._should_update(current, total):
            return False
        now = time.monotonic()
        if current != total and now - self._drawn_at < self.min_interval:
            return False
        self._drawn_at = now
        return True


class LogProgress(ProgressBar):
    """Progress as plain lines, for a log file (CI, ``> run.log``, SLURM) where a redrawn bar writes escape codes.

    A line every ``interval`` seconds of training and one after each validation, with the step, the
    epoch and the latest metrics.
    """

    SHOWN = ("val/acc", "val/forget_acc", "val/retain_acc", "val/new_acc")

    def __init__(self, interval: float = 10.0):
        super().__init__()
        self.interval, self._enabled, self._printed_at = interval, True, time.monotonic()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _line(self, trainer: Trainer, what: str) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        budget = trainer.max_steps if trainer.max_steps > 0 else trainer.max_epochs * trainer.num_training_batches
        shown = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/loss") or k in self.SHOWN}
        metrics = "  ".join(f"{k} {float(v):.4f}" for k, v in shown.items())
        print(
            f"[{time.strftime('%H:%M:%S')}] epoch {trainer.current_epoch} step {trainer.global_step}/{budget} {what}  {metrics}".rstrip(),
            flush=True,
        )
        self._printed_at = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if time.monotonic() - self._printed_at >= self.interval:
            self._line(trainer, "training")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":  # `unlearning validate` prints its table instead
            self._line(trainer, "validated")


class RunEnd(Callback):
    """What a user needs when a command returns: the result, and where it is; a failed run leaves no empty folder.

    After ``fit``: the final validation metrics beside the pretrained weights' (for a run that started
    from them), the run folder, and the best and last checkpoints. After ``validate``/``test``: the
    metrics. Accuracies in percent, two decimals.
    """

    ROWS = ("acc", "forget_acc", "retain_acc", "new_acc", "old_acc")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        after = {k: float(v) for k, v in trainer.callback_metrics.items()}
        before = getattr(pl_module, "before", None) or {}
        if any(key.startswith("val/") for key in after):
            lines = _table("val", {"before": before, "after": after} if before else {"final": after})
        else:
            lines = ["no validation ran: the fit stopped before its first (raise max_steps, or lower val_check_interval); "
                     + "`unlearning validate --ckpt_path <last>` scores it"]  # fmt: skip
        lines.append(f"run folder   {trainer.log_dir}")
        for callback in trainer.checkpoint_callbacks:
            if callback.best_model_path:
                lines.append(f"{'last' if callback.monitor is None else 'best':12s} {callback.best_model_path}")
        _print(trainer, lines)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate":
            _print(trainer, _table("val", {"": {k: float(v) for k, v in trainer.callback_metrics.items()}}))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _print(trainer, _table("test", {"": {k: float(v) for k, v in trainer.callback_metrics.items()}}, per_class=True))

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(trainer.logger, RunLogger):
            trainer.logger.remove_if_empty_handed()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Close the process group while the interpreter is whole (the last thing a command does; the next one opens it again).

        A ``ddp_spawn`` worker exits right after this; one that reaches interpreter shutdown with Gloo's worker
        threads still holding tensors aborts (pytorch/pytorch#179291), which failed a 2-process test now and then.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        release_runs()  # the run folder's lock and mark: for a CLI built with run=False, whose caller ran the fit


def _table(stage: str, columns: dict[str, dict[str, float]], per_class: bool = False) -> list[str]:
    """Accuracies in percent, one row per metric present (the summaries, then per class if asked), one column per dict."""
    keys = [f"{stage}/{name}" for name in RunEnd.ROWS] + ([f"{stage}_class_acc/{c}" for c in range(10)] if per_class else [])
    keys = [key for key in keys if any(key in values for values in columns.values())]
    width = max(map(len, keys), default=0) + 2
    lines = [" " * width + "".join(f"{c:>10s}" for c in columns)] if any(columns) else []
    for key in keys:
        lines.append(key.ljust(width) + "".join(f"{100 * v[key]:9.2f}%" if key in v else f"{'–':>10s}" for v in columns.values()))
    return lines


class _ToStdout(logging.Handler):
    """Writes to whatever ``sys.stdout`` is at the time (a test's capture, a redirected log)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout, flush=True)


#: what a command prints when it ends; ``unlearning bench`` turns it down while its own progress bar runs
summary_log = logging.getLogger("unlearning.summary")
if not summary_log.handlers:
    summary_log.addHandler(_ToStdout())
    summary_log.setLevel(logging.INFO)
    summary_log.propagate = False


@rank_zero_only
def _print(trainer: Trainer, lines: list[str]) -> None:
    summary_log.info("\n".join(lines))


class SaveParsedConfig(SaveConfigCallback):
    """Writes the run's configuration into its folder: ``config.yaml`` for a fit, ``<stage>_config.yaml`` otherwise
    (a ``test`` that logs into a fit's folder must not replace the config that reproduces the fit).

    Saved without validating the config a second time: it was validated when it was parsed, and
    jsonargparse's check on save costs about 0.1 s per run, a tenth of a short unlearning run's time.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        if stage != "fit":
            self.config_filename = f"{stage}_config.yaml"
        self.parser.save = partial(type(self.parser).save, self.parser, skip_validation=True)  # type: ignore[method-assign]
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            del self.parser.save


def lightning_main(args: list[str] | None = None, run: bool = True) -> UnlearningCLI:
    """The Lightning subcommands (``fit``, ``validate``, ``test``); ``run=False`` parses one config and builds
    the trainer, task and datamodule without running anything (the bench and the tests drive them).

    A mistake in the arguments or the config is one :class:`UsageError` line, whichever way it surfaces:
    jsonargparse's report, Lightning's ``MisconfigurationException``, or a ``UsageError`` that
    jsonargparse wrapped while instantiating a class.
    """
    silence_checked_notices()
    ran = run
    try:
        cli = UnlearningCLI(
            BaseTask,
            MNISTDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_callback=SaveParsedConfig,
            save_config_kwargs={"overwrite": True},  # a resumed fit rewrites its own folder's config; folders are never shared
            parser_kwargs={
                "prog": "unlearning",
                "exit_on_error": False,
                "allow_abbrev": False,
            },  # --trainer.max_epoch is a typo, not max_epochs
            args=args,
            run=run,
        )
    except (ArgumentError, MisconfigurationException) as err:  # the latter: Lightning's word for a trainer setting it cannot take
        ran = True
        argv = list(sys.argv[1:] if args is None else args)
        command = (argv[0] if argv else None) if run else "fit"
        if isinstance(err, ArgumentError):
            raise UsageError(parse_error(str(err), command, argv)) from None
        raise UsageError(f"{str(err).strip().splitlines()[0]} (run 'unlearning {command} --help' for the options)") from None
    except BaseException as err:
        ran = True
        usage_error = _usage_error(err) if isinstance(err, Exception) else None
        if usage_error is None:
            raise
        raise usage_error from None
    finally:
        if ran:
            release_runs()  # a command that ran, or failed, holds no run folder any more; run=False leaves it to the fit's teardown
    return cli


def parse_error(message: str, command: str | None, argv: list[str] | None = None, parser: ArgumentParser | None = None) -> str:
    """jsonargparse's error report, as one line: what was wrong, the nearest known option for a misspelled one, and where help is.

    jsonargparse explains an error in a nested report (the union of types tried, each one's problem);
    the line that matters is the innermost. A misspelled key reads "unrecognized arguments: --x",
    "does not accept option 'x'" (from a YAML file) or "Option 'x' is not accepted" (an argument of the
    task, datamodule or optimizer class). ``parser``: the command's own, whose options are the nearest to a misspelled
    top-level one (for a Lightning command, the trainer's and the classes' are searched instead).
    """
    hint = f"run 'unlearning {command} --help' for the options" if command else "run 'unlearning --help'"
    if message.startswith("Problems parsing config") and (broken := _yaml_error(argv or [])) is not None:
        return f"{broken} ({hint})"
    keys = re.findall(r'Parser key "([\w.\-]+)"', message)
    missing_class = re.search(
        r"Problem with given class_path '([\w.]+)':\s*\n\s*((?:module '[\w.]+' has no attribute|No module named) .+)", message
    )
    if missing_class is not None:
        class_path, why = missing_class.groups()
        nearest = _nearest_class(class_path)
        where = ".".join(keys) + ".class_path" if keys else "class_path"
        return f"{where}: no class {class_path} ({why.strip()})" + (f"; did you mean {nearest}?" if nearest else "") + f" ({hint})"
    classes = re.findall(r"""class_path[=\s]'?\s*(?:given class_path )?'([\w.]+)'""", message)
    owner = classes[-1] if classes else None
    unknown = re.search(
        r"unrecognized arguments: --?([\w.\-]+)|does not accept option '([\w.\-]+)'|Option '([\w\-]+)' is not accepted",
        message,
        re.IGNORECASE,
    )
    if unknown is not None:
        key = next(group for group in unknown.groups() if group)
        if "." not in key:  # an argument of a class: find its full key on the command line, else build it from the report
            given = [a.lstrip("-").split("=", 1)[0] for a in argv or [] if re.match(rf"--[\w.]*\.{re.escape(key)}(=|$)", a)]
            key = given[0] if given else ".init_args.".join([*keys, key])
        nearest = _nearest_option(key, owner, parser)
        return f"unknown option or config key '{key}'" + (f"; did you mean --{nearest}?" if nearest else "") + f" ({hint})"
    innermost = _innermost(message)
    expected = re.findall(r"Expected an? (.+?)(?:\. Got value: .*)?$", innermost, re.MULTILINE)
    got = re.search(r"(?:Given|Got) value: (.+)$", innermost, re.MULTILINE) or re.search(
        r"(?:Given|Got) value: (.+)$", message, re.MULTILINE
    )
    # jsonargparse also tries a number as a file path and as a tensor's import path: neither is what a user meant
    expected = [e for e in expected if not e.startswith(("path but", "dot import path"))]
    if keys and expected:
        types = [re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", e).replace("typing.", "") for e in expected]
        value = re.sub(r"\. Got value: .*$", "", got.group(1)) if got else "?"
        name = ".init_args.".join(keys)
        source = {target: source for source, target in LINKS.items()}.get(name)  # the key a user typed, not the one it fills
        name = f"{source} (linked to {name})" if source else name
        return f"{name}: expected {' or '.join(dict.fromkeys(types))}, got {value} ({hint})"
    lines = [line.strip(" -") for line in message.strip().splitlines() if line.strip()]
    return f"{lines[-1] if lines and keys else lines[0] if lines else message} ({hint})"


def _yaml_error(argv: list[str]) -> str | None:
    """The first config file on the command line that is not valid YAML, with its line and column and what is wrong."""
    for name in _config_files(argv):
        try:
            yaml.safe_load(Path(name).read_text())
        except yaml.MarkedYAMLError as err:
            mark, context = err.problem_mark or err.context_mark, err.context_mark
            where = f"{name}, line {mark.line + 1}, column {mark.column + 1}" if mark else name
            opened = f" ({err.context} opened on line {context.line + 1})" if err.context and context and context is not mark else ""
            return f"{where}: not valid YAML: {err.problem or err.context}{opened}"
        except (OSError, yaml.YAMLError):
            continue
    return None


def _config_files(argv: list[str]) -> list[str]:
    """The config files a command line names (``-c``, ``--config``)."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-c", "--config")] + [
        a.split("=", 1)[1] for a in argv if a.startswith("--config=")
    ]


def _nearest_class(class_path: str) -> str | None:
    """The class in the named module (of the user's own config) whose name is nearest a misspelled one."""
    module, _, name = class_path.rpartition(".")
    try:
        names = [n for n, v in vars(importlib.import_module(module)).items() if isinstance(v, type) and not n.startswith("_")]
    except Exception:  # noqa: BLE001 - no such module, or one that fails to import: no suggestion
        return None
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.7)
    return f"{module}.{close[0]}" if close else None


def _innermost(message: str) -> str:
    """The part of a nested report under its last ``Parser key`` line, up to where the indentation falls back."""
    lines = message.splitlines()
    starts = [i for i, line in enumerate(lines) if 'Parser key "' in line]
    if not starts:
        return message
    depth = len(lines[starts[-1]]) - len(lines[starts[-1]].lstrip())
    block = [lines[starts[-1]]]
    for line in lines[starts[-1] + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= depth:
            break
        block.append(line)
    return "\n".join(block)


def _nearest_option(key: str, owner: str | None, parser: ArgumentParser | None = None) -> str | None:
    """The known key nearest a misspelled one: among the trainer's arguments for ``trainer.*``, else among the arguments
    of the class the report names (the task, the datamodule, an optimizer), found as jsonargparse finds them, else
    among ``parser``'s own options."""
    prefix, _, name = key.rpartition(".")
    if prefix == "trainer" and parser is None:
        owner = "lightning.pytorch.Trainer"
    if owner is not None:
        searched, prefix_of = ArgumentParser(exit_on_error=False), "--x."
        try:
            searched.add_class_arguments(import_class(owner), "x")
        except Exception:  # noqa: BLE001 - a class jsonargparse cannot describe, or none by that name: no suggestion
            return None
    elif parser is not None and not prefix:
        searched, prefix_of = parser, "--"
    else:
        return None
    known = [
        option.removeprefix(prefix_of) for action in searched._actions for option in action.option_strings if option.startswith(prefix_of)
    ]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    return f"{prefix}.{close[0]}" if close and prefix else close[0] if close else None


def _usage_error(err: BaseException | None) -> UsageError | None:
    """The user's mistake behind an error, if any: jsonargparse wraps errors raised while instantiating classes."""
    while err is not None:
        if isinstance(err, UsageError):
            return err
        err = err.__cause__ or err.__context__
    return None
