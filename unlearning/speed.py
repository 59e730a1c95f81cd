"""Lightning ``fit`` against a plain torch loop doing the same work, interleaved in one process.

Both train SeedMLP with Adam 1e-3 on the same normalised tensors (retain ∪ forget, batch 200,
5 epochs), validate on the same held-out split after every epoch and save the weights each epoch.
The Lightning run is the project's own ``configs/pretrain.yaml`` through the CLI, progress bar on,
with its per-class metrics, confusion-matrix figures and TensorBoard logging. Prints both wall
times and their ratio (target: ≤ 1.3 on a 2-core CPU). ``unlearning bench`` runs it too.

Interleaved, not back to back: this VM's speed swings by up to 2x within a second (the same 50
steps take 2 ms or 5 ms a step), so two runs timed one after the other compare two different
machines and their ratio wandered between 1.1 and 2.0. Here the plain loop runs in chunks of
``chunk`` steps between the Lightning fit's own steps (driven by a callback), so both sides see the
same machine; Lightning's time is the fit's wall time minus the plain chunks. The driving callback's
own per-step hook calls are charged to Lightning.

Lightning's floor: each repeat also times a bare fit of the same training steps, Lightning's
``barebones`` settings (no logger, checkpoints, progress bar, summary or validation) with a module
that does nothing but step, against the plain loop's steps alone. The gap between the two ratios is
what this project's fit adds; the floor is what Lightning's own loop costs before any feature.

    python -m unlearning.speed [--epochs 5] [--repeats 3] [--chunk 25] [--threads 1] [-- FIT_ARGS ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from unlearning.data.mnist import MNISTDataModule
from unlearning.errors import UsageError
from unlearning.models import SeedMLP
from unlearning.runs import quiet_collector
from unlearning.training import NoProfiler, lightning_main

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SpeedResult:
    """Wall seconds of each interleaved run: the Lightning fit's own and the plain loop's summed chunks,
    and the same for the bare fit (Lightning's floor) against the plain loop's steps alone."""

    plain_seconds: list[float]
    lightning_seconds: list[float]
    bare_plain_seconds: list[float]
    bare_seconds: list[float]
    device: str = "cpu"  #: where both sides ran

    @property
    def run_ratios(self) -> list[float]:
        return _ratios(self.lightning_seconds, self.plain_seconds)

    @property
    def ratio(self) -> float:
        return statistics.median(self.run_ratios)

    @property
    def floor_ratios(self) -> list[float]:
        return _ratios(self.bare_seconds, self.bare_plain_seconds)

    @property
    def floor(self) -> float:
        return statistics.median(self.floor_ratios)

    def report(self) -> str:
        def runs(values: list[float]) -> str:
            return ", ".join(f"{v:.2f}" for v in values)

        return (
            f"device           : {self.device} (both sides)\n"
            f"plain torch loop : {runs(self.plain_seconds)} s\n"
            f"lightning fit    : {runs(self.lightning_seconds)} s\n"
            f"ratio per run    : {runs(self.run_ratios)}\n"
            f"ratio            : {self.ratio:6.2f}  median of the interleaved runs (target ≤ 1.30)\n"
            f"floor per run    : {runs(self.floor_ratios)}  (bare fit {runs(self.bare_seconds)} s, plain steps {runs(self.bare_plain_seconds)} s)\n"
            f"lightning floor  : {self.floor:6.2f}  median: Lightning's loop with no logger, checkpoint, bar, summary or validation"
        )


def _ratios(lightning: list[float], plain: list[float]) -> list[float]:
    return [a / b for a, b in zip(lightning, plain)]


class PlainLoop:
    """The same training as configs/pretrain.yaml, hand-written: the floor Lightning is measured against.

    It advances in chunks (:meth:`steps`, :meth:`end_epoch`) so it can be interleaved with a fit;
    ``seconds`` counts the time spent inside them only. With ``evaluate=False`` an epoch's end only
    reshuffles (the bare fit's counterpart: steps alone).
    """

    def __init__(self, dm: MNISTDataModule, out: Path, evaluate: bool = True):
        self.x, self.y = dm.split_tensors("retain", "forget")  # on the fit's device: both sides train where the other does
        self.val_x, self.val_y = dm.split_tensors("val")
        self.batch_size, self.eval_batch_size, self.out, self.evaluate = dm.batch_size, dm.eval_batch_size, out, evaluate
        torch.manual_seed(0)
        self.net = SeedMLP().to(self.x.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.epoch, self.steps_done, self.total_steps, self.seconds = 0, 0, 0, 0.0
        self.order = self._epoch_order()

    def _epoch_order(self) -> Tensor:
        """This epoch's shuffle, seeded by the epoch."""
        return torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.epoch)).to(self.y.device)

    def steps(self, n: int) -> None:
        """``n`` optimizer steps, continuing this epoch's shuffled order."""
        start = time.perf_counter()
        net, optimizer, x, y, size = self.net, self.optimizer, self.x, self.y, self.batch_size  # locals, as a hand-written loop has
        net.train()
        for step in range(self.steps_done, self.steps_done + n):
            idx = self.order[step * size : (step + 1) * size]
            loss = F.cross_entropy(net(x.index_select(0, idx)), y.index_select(0, idx))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.steps_done += n
        self.total_steps += n
        self.seconds += time.perf_counter() - start

    def end_epoch(self) -> None:
        """Per-class validation accuracy and a checkpoint (if ``evaluate``), then the next epoch's order."""
        start = time.perf_counter()
        if self.evaluate:
            self.net.eval()
            with torch.no_grad():
                batches = range(0, len(self.val_y), self.eval_batch_size)
                preds = torch.cat([self.net(self.val_x[i : i + self.eval_batch_size]).argmax(1) for i in batches])
                per_class = torch.stack([(preds[self.val_y == c] == c).float().mean() for c in range(10)])
            state = {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(), "per_class": per_class}
            torch.save(state, self.out / "plain.pt")
        self.epoch, self.steps_done = self.epoch + 1, 0
        self.order = self._epoch_order()
        self.seconds += time.perf_counter() - start


class Interleave(Callback):
    """Runs ``plain`` up to the fit's step count every ``chunk`` steps and at each epoch's end."""

    def __init__(self, plain: PlainLoop, chunk: int):
        self.plain, self.chunk, self.fit_steps = plain, chunk, 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.fit_steps = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        self.fit_steps += 1
        if self.fit_steps % self.chunk == 0:
            self.plain.steps(self.fit_steps - self.plain.steps_done)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.plain.steps(self.fit_steps - self.plain.steps_done)
        self.plain.end_epoch()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.plain.total_steps != trainer.global_step:
            raise RuntimeError(f"the plain loop took {self.plain.total_steps} steps, the fit {trainer.global_step}: not the same work")


class BareTask(LightningModule):
    """The plain loop's step in Lightning and nothing else: the floor any Lightning fit of this loop pays.

    It steps as :class:`~unlearning.tasks.base.BaseTask` does (its own optimizer, the batch fetched
    from ``dataloader_iter``), the cheapest way through Lightning's loop.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = SeedMLP()
        self.automatic_optimization = False

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=1e-3)

    def training_step(self, dataloader_iter: Iterator[tuple[tuple[Tensor, Tensor], int, int]]) -> Tensor:
        (x, y), _, _ = next(dataloader_iter)
        loss = F.cross_entropy(self.net(x), y)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


def interleaved_fit(epochs: int, out: Path, chunk: int, bare: bool = False, fit_args: Sequence[str] = ()) -> tuple[float, PlainLoop]:
    """One fit of configs/pretrain.yaml with the plain loop interleaved: Lightning's seconds, and the plain loop.

    ``bare``: the same steps through :class:`BareTask` on Lightning's ``barebones`` settings (with the
    project's null profiler, which ``barebones=True`` would refuse), against the plain loop's steps alone.
    ``fit_args``: more command-line arguments for the project's fit (``--trainer.logger=false``), to
    measure what a feature costs; the plain loop does not change.
    """
    unused_logger = ["--trainer.logger=false"] if bare else []  # the bare fit builds its own trainer; this one only holds the datamodule
    cli = lightning_main(
        [
            "-c",
            str(ROOT / "configs" / "pretrain.yaml"),
            f"--trainer.max_epochs={epochs}",
            f"--trainer.default_root_dir={out}",
            *unused_logger,
            *fit_args,
        ],
        run=False,
    )
    cli.datamodule.trainer = cli.trainer  # so the data lives on the device the fit will run on, from the start
    cli.datamodule.setup()
    plain = PlainLoop(cli.datamodule, out, evaluate=not bare)
    if bare:
        trainer = Trainer(
            max_epochs=epochs,
            accelerator=cli.trainer.accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=0,
            profiler=NoProfiler(),
            callbacks=[Interleave(plain, chunk)],
            default_root_dir=out,
        )
        model, data = BareTask(), {"train_dataloaders": cli.datamodule.loader("retain", "forget", train=True)}
    else:
        trainer, model, data = cli.trainer, cli.model, {"datamodule": cli.datamodule}
        trainer.callbacks.append(Interleave(plain, chunk))
    with quiet_collector():  # a full collection would land on one side of the comparison
        start = time.perf_counter()
        trainer.fit(model, **data)
        seconds = time.perf_counter() - start
    return seconds - plain.seconds, plain


def compare(epochs: int = 5, repeats: int = 3, chunk: int = 25, fit_args: Sequence[str] = ()) -> SpeedResult:
    """``repeats`` rounds of an interleaved fit and a bare one, after a one-epoch warm-up of each
    (first-call costs belong to neither side)."""
    if min(epochs, repeats, chunk) < 1:
        raise UsageError(f"epochs, repeats and chunk must be at least 1, got {epochs}, {repeats} and {chunk}")
    seconds: dict[bool, tuple[list[float], list[float]]] = {False: ([], []), True: ([], [])}
    with tempfile.TemporaryDirectory() as tmp:
        for bare in (False, True):
            interleaved_fit(1, Path(tmp), chunk, bare, fit_args)
        for _ in range(repeats):
            for bare, (plain, lightning) in seconds.items():
                fit_seconds, loop = interleaved_fit(epochs, Path(tmp), chunk, bare, fit_args)
                lightning.append(fit_seconds)
                plain.append(loop.seconds)
    return SpeedResult(*seconds[False], *seconds[True], device=str(loop.x.device))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved fits; the median of their ratios is reported")
    parser.add_argument("--chunk", type=int, default=25, help="plain-loop steps per interleaved chunk")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both; 1 keeps timings stable on a shared CPU")
    parser.add_argument("fit_args", nargs="*", help="after --: more arguments for the project's fit, e.g. -- --trainer.logger=false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        print(compare(args.epochs, args.repeats, args.chunk, args.fit_args).report())
    except UsageError as err:
        parser.error(str(err))
