"""The composition root: ``unlearning fit|validate|test|predict -c config.yaml`` (LightningCLI),
``unlearning evaluate`` (the evidence suite) and ``unlearning bench`` (the whole grid)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.profilers import PassThroughProfiler

from unlearning.checkpoints import newest_last_checkpoint
from unlearning.data.mnist import MNISTDataModule
from unlearning.errors import UsageError
from unlearning.tasks.base import BaseTask


class UnlearningCLI(LightningCLI):
    """LightningCLI whose task reads the classes from the datamodule, so a user states them once."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("forget_classes", "new_classes", "forget_fraction"):
            parser.link_arguments(f"data.init_args.{key}", f"model.init_args.{key}")
        parser.link_arguments("seed_everything", "data.init_args.seed")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's trainer, with a lighter profiler and progress bar where the config names none.

        Both are per-step costs that a small model feels (``python -m unlearning.speed``); a config or
        command line that sets ``trainer.profiler`` or a progress bar callback gets exactly that.
        """
        config = (self.config_init[self.subcommand] if self.subcommand else self.config_init).get("trainer", {})
        if config.get("profiler") is None:
            kwargs.setdefault("profiler", NoProfiler())
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs.setdefault("callbacks", [*callbacks, ThrottledProgressBar()])
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """Reject trainer options a task that steps its own optimizer cannot honour, and resolve ``--ckpt_path last``.

        ``last`` resumes the newest run under the root folder and keeps logging into its folder.
        Lightning alone looks for ``last.ckpt`` in the new run's own, empty, version folder and then
        starts from scratch with a warning.
        """
        if self.trainer.gradient_clip_val:
            raise UsageError(
                "tasks step their optimizer themselves: use --model.init_args.gradient_clip_val, not --trainer.gradient_clip_val"
            )
        if self.trainer.accumulate_grad_batches != 1:
            raise UsageError("tasks step their optimizer every batch: raise --data.init_args.batch_size instead of accumulating gradients")
        if self.config_init["fit"].get("ckpt_path") != "last":
            return
        logger = self.trainer.logger
        root = Path(logger.root_dir if logger is not None else Path(self.trainer.default_root_dir) / "lightning_logs")
        last = newest_last_checkpoint(root)
        if last is None:
            raise UsageError(f"--ckpt_path last: no run under {root} has a checkpoints/last.ckpt to resume")
        self.config_init["fit"]["ckpt_path"] = str(last)
        if isinstance(logger, TensorBoardLogger) and logger._experiment is None:
            logger._version = int(last.parents[1].name.removeprefix("version_"))


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


class SaveParsedConfig(SaveConfigCallback):
    """Writes ``config.yaml`` without validating the config a second time.

    It was validated when it was parsed; jsonargparse's check on save costs about 0.1 s per run,
    a tenth of a short unlearning run's time.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.parser.save = partial(type(self.parser).save, self.parser, skip_validation=True)  # type: ignore[method-assign]
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            del self.parser.save


def main(args: list[str] | None = None, run: bool = True) -> Any:
    """Run one command. Tests call ``main([...])``; it returns the CLI object (trainer, model, datamodule)."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["evaluate"]:
        from unlearning.evaluation.cli import evaluate_main

        return evaluate_main(argv[1:])
    if argv[:1] == ["bench"]:
        from unlearning.bench import bench

        return bench(argv[1:])
    try:
        return UnlearningCLI(
            BaseTask,
            MNISTDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_callback=SaveParsedConfig,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except Exception as err:
        usage = _usage_error(err)
        if usage is None:
            raise
        raise usage from None


def _usage_error(err: BaseException | None) -> UsageError | None:
    """The user's mistake behind an error, if any: jsonargparse wraps errors raised while instantiating classes."""
    while err is not None:
        if isinstance(err, UsageError):
            return err
        err = err.__cause__ or err.__context__
    return None


def entry() -> None:
    """Console entry: user errors become one line on stderr and exit status 2, not a traceback."""
    try:
        main()
    except UsageError as err:
        print(f"unlearning: error: {err}", file=sys.stderr)
        sys.exit(2)
