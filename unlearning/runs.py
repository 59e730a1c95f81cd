"""Running configs programmatically, the way the benchmarks and tests do: the same CLI a user runs."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.flop_counter import FlopCounterMode

from unlearning.checkpoints import check_resumable, last_checkpoint
from unlearning.errors import UsageError
from unlearning.evaluation.data import Holdout
from unlearning.run_dirs import RunLogger, logger_location, release_runs, run_dir_of
from unlearning.training import lightning_main


@dataclass
class RunResult:
    """What one ``fit`` of a config, and its score on held-out data, produced; ``phases`` splits ``fit_seconds`` (see :class:`PhaseTimer`).

    ``scores`` holds the metrics as logged (``test/acc``, or ``val/acc`` when scored on the validation split). ``flops``:
    the fit's floating-point operations where they were counted (:func:`fit_and_test`'s ``count_flops``), else ``None``.
    """

    checkpoint: Path
    log_dir: Path
    fit_seconds: float
    scores: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    flops: int | None = None


class PhaseTimer(Callback):
    """Where a fit's time goes: the fixed costs a short unlearning run pays beside its steps.

    Phases, in seconds: ``setup`` (logger, data, config file, model setup), ``fit_start`` (the task's
    ``on_fit_start``: a saliency mask), ``train_start`` (its ``on_train_start``: the step-0 validation,
    a reset or probe, the first weight picture), ``steps``, ``validation``, ``checkpoint`` (what the
    checkpoint callbacks write after each validation), ``end`` (from the last step's end to the fit's
    return: the final checkpoint, teardown) and ``loop``, Lightning's own time between all of these.
    Listed first among the callbacks, each of its hooks runs before the task's and the other callbacks'.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def mark(self, event: str) -> None:
        self.events.append((event, time.perf_counter()))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.mark("fit_start")

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.mark("sanity_start")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.mark("train_start")

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.mark("epoch_start")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.mark("step_start")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.mark("step_end")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.mark("validation_start")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.mark("validation_end")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.mark("train_end")

    def phases(self) -> dict[str, float]:
        """Seconds per phase, from ``begin`` (the fit's start) to ``end`` (its return), which :func:`fit_and_test` marks."""
        owner = {
            "begin": "setup", "fit_start": "fit_start", "sanity_start": "validation", "train_start": "train_start",
            "step_start": "steps", "validation_start": "validation", "validation_end": "checkpoint", "train_end": "end",
        }  # an event starts the phase it names here; every other event hands the time to Lightning's loop  # fmt: skip
        phases = dict.fromkeys(["setup", "fit_start", "train_start", "steps", "validation", "checkpoint", "end", "loop"], 0.0)
        for (event, start), (_, stop) in zip(self.events, self.events[1:]):
            phases[owner.get(event, "loop")] += stop - start
        return phases


@contextlib.contextmanager
def quiet_collector() -> Iterator[None]:
    """Keep the garbage collector's full passes out of a timed fit.

    By the time a fit starts the interpreter tracks half a million long-lived objects and more (torch, Lightning,
    jsonargparse). A full collection scans them all, about 0.25 s on 2 cores, and it lands in whichever fit crosses the
    threshold: a third of a short unlearning run, timed as if the method had cost it. So they are collected once before
    the fit, frozen out of the collector's passes during it (the fit's own garbage is still collected), and released
    after.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def fit_and_test(
    config: str | Path,
    *overrides: str,
    root: str | Path,
    seed: int = 0,
    score: Holdout | None = "test",
    ckpt_path: str | Path | None = None,
    count_flops: bool = False,
) -> RunResult:
    """``unlearning fit -c config overrides...`` under ``root``, then score the last weights on ``score``.

    ``score``: ``"test"`` (Lightning's test loop), ``"val"`` (its validation loop, on the run's
    validation split, for tuning) or ``None`` (no scoring: a timing run).

    ``fit_seconds`` times ``Trainer.fit`` alone (not imports, data loading, the test pass or a full garbage collection:
    :func:`quiet_collector`), which is what the cost ratios compare; ``phases`` splits it. ``ckpt_path`` resumes an
    interrupted run, in its own folder.

    ``count_flops``: count the fit's floating-point operations (``torch.utils.flop_counter``: the matrix products and
    convolutions of every forward and backward pass, the saliency rankings and validations included), a cost no machine's
    speed or load moves. The counter intercepts every operation, so such a fit is several times slower and its
    ``fit_seconds`` is no timing (nor is the collector kept out of it); it counts this process's operations alone, so a
    fit on several processes is refused.
    """
    args = [
        "-c",
        str(config),
        f"--seed_everything={seed}",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
        *overrides,
    ]
    if ckpt_path is not None:
        check_resumable(ckpt_path)
        run_dir = run_dir_of(ckpt_path)
        if run_dir is not None:
            save_dir, name = logger_location(run_dir)
            args += [
                f"--trainer.logger.init_args.{k}={v}"
                for k, v in (("save_dir", save_dir), ("name", name), ("version", run_dir.name.removeprefix("version_")))
            ]
    cli = lightning_main(args, run=False)
    if count_flops and cli.trainer.world_size > 1:
        if isinstance(cli.trainer.logger, RunLogger):
            cli.trainer.logger.remove_if_empty_handed()  # the run folder the CLI claimed: the run never starts
        release_runs()
        raise UsageError(f"FLOPs are counted in this process alone: a fit on {cli.trainer.world_size} processes would count one rank's")
    cli.datamodule.setup("fit")  # reading MNIST into memory is data loading, not fitting
    timer = PhaseTimer()
    cli.trainer.callbacks.insert(0, timer)
    counter = FlopCounterMode(display=False) if count_flops else None
    with counter if counter is not None else quiet_collector():  # a counted fit is no timing: no full collection for it
        timer.mark("begin")
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
        timer.mark("return")
    fit_seconds = timer.events[-1][1] - timer.events[0][1]
    checkpoint = last_checkpoint(cli.trainer)
    scores: dict[str, float] = {}
    if score is not None:
        loop = cli.trainer.test if score == "test" else cli.trainer.validate
        (results,) = loop(cli.model, datamodule=cli.datamodule, verbose=False)[:1]
        scores = {k: float(v) for k, v in results.items()}
    flops = counter.get_total_flops() if counter is not None else None
    return RunResult(checkpoint, Path(cli.trainer.log_dir), fit_seconds, scores, timer.phases(), flops)
