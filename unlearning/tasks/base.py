"""``BaseTask``: what every stage shares (network, optimizer, per-class metrics, figures, safe weight loading).

Subclasses declare the data they train on (``train_streams``) and their loss (``training_loss``);
they never touch the optimizer, metric or logging plumbing. The hooks follow torchgeo's trainers:
``configure_models``, ``configure_losses`` and ``configure_metrics`` run from ``__init__``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.wrappers import ClasswiseWrapper

from unlearning.checkpoints import LatestCheckpoint, check_recorded_classes, load_net_weights, read_checkpoint
from unlearning.data.loader import StepBudgetStreams
from unlearning.data.mnist import serves_step_budget
from unlearning.data.splits import NUM_CLASSES, check_classes
from unlearning.errors import UsageError
from unlearning.figures import confusion_image, first_layer_weights, png_summary
from unlearning.metrics import accuracy_summaries
from unlearning.models import evaluating
from unlearning.run_dirs import classes_label

Batch = Mapping[str, tuple[Tensor, Tensor]]
#: the final validation metrics the HParams tab shows beside each run's settings
HPARAM_METRICS = ("val/acc", "val/forget_acc", "val/retain_acc", "val/new_acc", "val/old_acc")


class BaseTask(LightningModule):
    """A classifier ``net`` trained on named data streams and evaluated per class on val and test.

    Args:
        net: the network; any ``nn.Module`` mapping ``(N, 1, 28, 28)`` to ``(N, 10)`` logits.
        optimizer: optimizer factory, e.g. ``torch.optim.Adam`` with its ``init_args`` in YAML.
        lr_scheduler: optional scheduler factory; ``ReduceLROnPlateau`` monitors ``monitor``.
        forget_classes, new_classes, forget_fraction: linked from the datamodule by the CLI, so
            they are stated once and stored in the checkpoint for the evaluation suite.
        weights: a checkpoint or state dict to start ``net`` from (read with ``weights_only=True``).
            It is not a hyperparameter; use the trainer's ``ckpt_path`` to resume a run instead.
        log_figures: log confusion matrices and weight images to TensorBoard.
        gradient_clip_val: clip the gradients' global norm to this before each step (the task steps
            its optimizer itself, so this takes the place of the trainer's ``gradient_clip_val``).
        scheduler_interval: when ``lr_scheduler`` steps: after each ``epoch`` (``ReduceLROnPlateau``: after
            each validation) or after each optimizer ``step`` (a schedule over a run shorter than an epoch).
    """

    #: metric that picks the best checkpoint, and whether higher is better
    monitor = "val/acc"
    mode = "max"
    #: the first level of a run's folder, ``lightning_logs/<stage>/<method>`` (see :meth:`run_stage`)
    stage_name = "train"
    #: whether a fit must start from trained ``weights`` (or resume a run): unlearning and replacement do
    starts_from_weights = False
    #: stream name -> splits concatenated into it; set per task (see ``MNISTDataModule``)
    train_streams: Mapping[str, Sequence[str]] = {}
    #: The task runs its own optimizer step (``training_step``). Lightning's automatic optimisation
    #: wraps every step in closures and a dozen hook calls and walks each batch through its
    #: device-transfer hooks, which for a small network cost a tenth of the step (``unlearning.speed``).
    automatic_optimization = False

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        forget_classes: list[int] = [9],  # noqa: B006 - jsonargparse needs the literal default
        new_classes: list[int] = [],  # noqa: B006
        forget_fraction: float | None = None,
        weights: str | None = None,
        log_figures: bool = True,
        gradient_clip_val: float | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
    ):
        super().__init__()
        check_classes(forget_classes, new_classes)
        if scheduler_interval not in ("epoch", "step"):
            raise UsageError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.save_hyperparameters(ignore=["weights", "net", "optimizer", "lr_scheduler"] if not _from_cli(self) else ["weights"])
        self.net = net
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.forget_classes, self.new_classes = list(forget_classes), list(new_classes)
        self.forget_fraction, self.log_figures, self.gradient_clip_val = forget_fraction, log_figures, gradient_clip_val
        self.scheduler_interval = scheduler_interval
        self.configure_models()
        self.weights = weights
        if weights is not None:
            checkpoint = read_checkpoint(weights)
            check_recorded_classes(weights, checkpoint, sorted({type(self).__module__, type(self.net).__module__}))
            load_net_weights(self.net, weights, checkpoint)
        self.configure_losses()
        self.configure_metrics()

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, allow_modules: Sequence[str] = (), **kwargs: Any) -> Any:
        """Lightning's loader, once the file is checked: it builds the network and optimizer classes the checkpoint names,
        so each must lie in the project's modules or ``allow_modules`` (checked before anything is imported)."""
        check_recorded_classes(checkpoint_path, read_checkpoint(checkpoint_path), allow_modules)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def constant(self, name: str, value: Tensor) -> None:
        """A tensor the task reads every step (class indices, a label map), kept on the module's device.

        Not a buffer: DDP broadcasts every buffer from rank 0 before each forward pass (``broadcast_buffers``),
        a collective per step for numbers that never change.
        """
        self._constants = getattr(self, "_constants", set()) | {name}
        object.__setattr__(self, name, value)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``.to(device)``, ``.cuda()`` and friends move the :meth:`constant` tensors with the parameters."""
        super()._apply(fn, *args, **kwargs)
        for name in getattr(self, "_constants", ()):
            object.__setattr__(self, name, fn(getattr(self, name)))
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets ``_current_fx_name`` around every hook, ~45 times per step; nn.Module's
        # type checks on each made that a tenth of a small model's training time.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # -- hooks for subclasses -------------------------------------------------------------
    def configure_models(self) -> None:
        """Build or wrap networks beyond ``net`` (e.g. a frozen teacher). Runs before weights are loaded."""

    def configure_losses(self) -> None:
        self.criterion = nn.CrossEntropyLoss()

    def configure_metrics(self) -> None:
        """Per-class accuracy and a confusion matrix for val and test; summaries derive from the matrix."""
        labels = [str(c) for c in range(NUM_CLASSES)]
        self.eval_metrics = nn.ModuleDict(
            {
                stage: MetricCollection(
                    {
                        "class_acc": ClasswiseWrapper(MulticlassAccuracy(NUM_CLASSES, average=None), labels, prefix=f"{stage}_class_acc/"),
                        "confmat": MulticlassConfusionMatrix(NUM_CLASSES),
                    },
                    compute_groups=False,
                )
                for stage in ("val", "test")
            }
        )
        # random-sample forgetting: the forget metric is the accuracy on the forget samples themselves
        self.forget_set_acc = nn.ModuleDict({stage: MulticlassAccuracy(NUM_CLASSES, average="micro") for stage in ("val", "test")})

    def training_loss(self, batch: Batch) -> Tensor:
        """The loss to minimise on one batch, a dict ``{stream: (x, y)}``."""
        raise NotImplementedError(f"{type(self).__name__} does not define training_loss")

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimizer sees; methods that train only part of ``net`` narrow this."""
        return self.net.parameters()

    def predict_labels(self, logits: Tensor) -> Tensor:
        """Class labels from logits (a task whose units were remapped overrides this)."""
        return logits.argmax(dim=1)

    # -- Lightning ------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> Any:
        try:  # torch's optimizers and schedulers check their own arguments (a negative lr, betas outside [0, 1))
            optimizer = self.optimizer(self.trainable_parameters())
            scheduler = None if self.lr_scheduler is None else self.lr_scheduler(optimizer)
        except ValueError as err:
            raise UsageError(f"model.init_args.optimizer or lr_scheduler: {err}") from err
        if scheduler is None:
            return optimizer
        if isinstance(scheduler, CosineAnnealingLR) and scheduler.T_max < 1:  # torch divides by it at the first step
            raise UsageError(f"CosineAnnealingLR's T_max must be at least 1 (it is normally max_steps), got {scheduler.T_max}")
        if isinstance(scheduler, ReduceLROnPlateau) and (self.monitor is None or self.scheduler_interval == "step"):
            raise UsageError(
                f"ReduceLROnPlateau steps on a validation metric after each validation; {type(self).__name__} "
                + ("monitors none" if self.monitor is None else "was asked for scheduler_interval 'step'")
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}  # stepped by the task: see step_scheduler

    @classmethod
    def run_stage(cls, init_args: Mapping[str, Any]) -> str:
        """The stage a run of this task with these arguments is filed under: ``pretrain``, ``oracle``, ``unlearn``, ``replace``."""
        return cls.stage_name

    def checkpoint_callbacks(self) -> list[Callback]:
        """The best checkpoint by ``monitor``, then ``last.ckpt``: last, so it holds the best one's updated state.

        The CLI gives them to the trainer; a trainer built without them gets them from :meth:`configure_callbacks`.
        """
        return [
            ModelCheckpoint(monitor=self.monitor, mode=self.mode, filename="best-{epoch}-{step}", auto_insert_metric_name=False),
            LatestCheckpoint(),
        ]

    def configure_callbacks(self) -> list[Callback]:
        if any(isinstance(callback, LatestCheckpoint) for callback in self.trainer.callbacks):
            return []  # the trainer has them already: returning them again would replace its own
        return self.checkpoint_callbacks()

    def training_step(self, dataloader_iter: Iterator[tuple[Batch, int, int]]) -> Tensor:
        """One optimizer step on the next batch; the batches are born on the device, so none is moved."""
        batch, _, _ = next(dataloader_iter)
        loss = self.training_loss(batch)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()  # clipping happens in on_before_optimizer_step, once the precision plugin has unscaled the gradients
        if self.scheduler_interval == "step" and self.lr_scheduler is not None:
            self.lr_schedulers().step()
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Clip the gradients' global norm to ``gradient_clip_val``: here, because under ``16-mixed`` the GradScaler has
        unscaled them by now (clipping in the step itself would clip gradients 65 536 times too large)."""
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def step_scheduler(self, on_validation: bool) -> None:
        """Lightning leaves the scheduler to a task that steps its own optimizer: ``ReduceLROnPlateau``
        steps on each validation's ``monitor`` value, any other epoch-interval scheduler at the end of each epoch
        (a step-interval one steps in :meth:`training_step`)."""
        scheduler = self.lr_schedulers()
        if scheduler is None or isinstance(scheduler, ReduceLROnPlateau) != on_validation:
            return
        if on_validation:
            scheduler.step(self.trainer.callback_metrics[self.monitor])
        elif self.scheduler_interval == "epoch":
            scheduler.step()

    def on_train_epoch_end(self) -> None:
        self.step_scheduler(on_validation=False)

    def cross_entropy_step(self, batch: Batch, stream: str) -> Tensor:
        x, y = batch[stream]
        return self.criterion(self.net(x), y)

    def log_loss(self, name: str, value: Tensor, batch_size: int) -> None:
        """Log a training loss on the trainer's logging steps only: ``self.log`` costs as much as a small model's step."""
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=batch_size)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")
        if not self.trainer.sanity_checking:
            self.step_scheduler(on_validation=True)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def setup(self, stage: str) -> None:
        """Give this process metric states of its own.

        Under ``ddp_spawn`` on the CPU each process receives the task pickled by torch.multiprocessing, which puts every
        tensor in memory the processes share. Lightning un-shares parameters and buffers, but torchmetrics' states are
        neither: the ranks added into one confusion matrix, the synced matrix counted every sample twice, and a rank that
        read it while the other still added got wrong accuracies (72.91% read as 73.75% in a CI run). ``reset``
        replaces each state with a fresh copy of its default.
        """
        for module in self.modules():
            if isinstance(module, Metric):
                module.reset()

    def on_fit_start(self) -> None:
        if (board := self._tensorboard()) is not None:
            board.add_custom_scalars(self.chart_layout())

    def on_train_start(self) -> None:
        if self.log_figures:
            self.log_image("weights/first_layer", first_layer_weights(self.net))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A run checkpointed before a step budget was one epoch kept one loader state per training stream, where this
        version serves a budget as one :class:`~unlearning.data.loader.StepBudgetStreams`: fold the states into its one,
        or Lightning refuses to resume (1 stateful loader, 2 states) although the batches are the same."""
        loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        states = loop.get("combined_loader")
        if self._trainer is None or not states or any("streams" in state for state in states):
            return
        if len(states) == len(self.train_streams) and serves_step_budget(self.trainer, self):
            # Lightning's CombinedLoader flattened the streams' dict in its order, the task's train_streams
            loop["combined_loader"] = [StepBudgetStreams.from_stream_states(dict(zip(self.train_streams, states)))]

    def on_fit_end(self) -> None:
        """The HParams tab: this run's key settings beside its final accuracies, so runs compare side by side."""
        if self.logger is not None and self.trainer.is_global_zero:
            final = {f"hparam/{k.removeprefix('val/')}": float(v) for k, v in self.trainer.callback_metrics.items() if k in HPARAM_METRICS}
            if final:
                self.logger.log_hyperparams(self.key_hyperparameters(), final)

    def chart_layout(self) -> dict[str, dict[str, list[Any]]]:
        """TensorBoard's Custom Scalars: per-class accuracy as ten lines in one chart, the summaries in another."""
        summaries = ["acc", "forget_acc", "retain_acc"] + (["new_acc"] if self.new_classes else [])
        return {
            f"accuracy ({stage})": {
                "per class": ["Multiline", [f"{stage}_class_acc/{c}" for c in range(NUM_CLASSES)]],
                "forget, retain, new, all": ["Multiline", [f"{stage}/{name}" for name in summaries]],
            }
            for stage in ("val", "test")
        }

    def key_hyperparameters(self) -> dict[str, Any]:
        """What tells runs apart, for the HParams tab: five capitalised columns first, then the optimiser and rate, the
        budget and the task's own scalar settings (a mask fraction, a reset fraction...).

        TensorBoard lists hyperparameters by name and ticks the first five; capitals sort before lower case, so a
        table of runs opens on ``Classes`` (``forget9``, ``replace6to3``), ``Method`` (the run folder's, e.g.
        ``selective_gradient``), ``Net``, ``Seed`` and ``Stage``: short values that its narrow columns show whole,
        where the run paths it names rows by are cut after a dozen characters.
        """
        hparams = dict(self.hparams)
        optimizer = hparams.get("optimizer") if isinstance(hparams.get("optimizer"), dict) else {}
        datamodule = self.trainer.datamodule
        stage, data = self.run_stage(hparams), getattr(datamodule, "hparams", {})
        new = "_".join(map(str, self.new_classes))
        key = {
            # a pretrain run forgets nothing: it learns every class, or every class but the new ones
            "Classes": (f"without{new}" if new else "all") if stage == "pretrain" else classes_label(data),
            "Method": str(getattr(self.logger, "name", "") or "").rpartition("/")[2] or None,
            "Net": type(self.net).__name__,
            "Seed": getattr(datamodule, "seed", None),
            "Stage": stage,
            "task": type(self).__name__,
            "optimizer": str(optimizer.get("class_path", "")).rpartition(".")[2],
            "lr": (optimizer.get("init_args") or {}).get("lr"),
            "max_steps": self.trainer.max_steps,
            "max_epochs": self.trainer.max_epochs,
            "batch_size": getattr(datamodule, "batch_size", None),
        }
        # LightningCLI's own bookkeeping (``_class_path``, ``_instantiator``) is not a setting
        key |= {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool)) and k not in key and not k.startswith("_")}
        return {k: v for k, v in key.items() if v is not None}

    # -- evaluation plumbing --------------------------------------------------------------
    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str, dataloader_idx: int) -> None:
        x, y = batch
        preds = self.predict_labels(self.net(x))
        if dataloader_idx == 0:
            self.eval_metrics[stage].update(preds, y)
        else:
            self.forget_set_acc[stage].update(preds, y)

    def eval_summaries(self, confmat: Tensor, stage: str) -> dict[str, Tensor]:
        """``acc``, ``forget_acc``, ``retain_acc``, ``new_acc`` from one synced confusion matrix; tasks add their own."""
        summary = accuracy_summaries(confmat, self.forget_classes, self.new_classes)
        if self.forget_fraction is not None:
            summary["forget_acc"] = self.forget_set_acc[stage].compute()
        return summary

    def _collect(self, stage: str) -> tuple[dict[str, Tensor], Tensor]:
        """The stage's metrics (summaries and per-class accuracy) and confusion matrix, synced across ranks; resets the states."""
        results = self.eval_metrics[stage].compute()  # torchmetrics syncs the states across ranks here
        confmat = results.pop("confmat")
        summary = {f"{stage}/{k}": v for k, v in self.eval_summaries(confmat, stage).items()}
        self.eval_metrics[stage].reset()
        self.forget_set_acc[stage].reset()
        return {**summary, **results}, confmat

    def _eval_epoch_end(self, stage: str) -> None:
        values, confmat = self._collect(stage)
        if self.trainer.sanity_checking:
            return  # Lightning drops what a sanity check logs; a run that starts from weights evaluates them itself
        self.log_dict(values, sync_dist=False)  # already reduced across ranks by torchmetrics
        if self.log_figures:
            self.log_image(f"{stage}/confusion_matrix", confusion_image(confmat, f"{stage} confusion matrix"))
            if stage == "val":
                self.log_image("weights/first_layer", first_layer_weights(self.net))

    @torch.no_grad()
    def validate_in_place(self) -> dict[str, float]:
        """The validation metrics of ``net`` as it is now, logged at the current step with its confusion matrix.

        One pass over each rank's validation rows outside Lightning's evaluation loop, with the same
        metrics and summaries: a run that starts from trained weights records them at step 0 this
        way, at a fraction of the cost of a full sanity check through the loop.
        """
        with evaluating(self.net):
            for dataloader_idx, loader in enumerate(self.trainer.datamodule.val_dataloader()):
                for x, y in loader:
                    self._eval_step((x, y), "val", dataloader_idx)
        values, confmat = self._collect("val")
        numbers = {k: float(v) for k, v in values.items()}
        if self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics(numbers, step=self.global_step)
        if self.log_figures:
            self.log_image("val/confusion_matrix", confusion_image(confmat, "val confusion matrix"))
        return numbers

    def broadcast_from_rank_zero(self, tensors: Any) -> Any:
        """Rank 0's tensors (a tensor, or a dict or tuple of them) on every rank, each on its own device.

        Broadcast as CPU copies: a CUDA tensor is unpickled onto the device it was saved from, so
        rank 1 of a node would receive rank 0's ``cuda:0`` tensor and open a context on GPU 0.
        """
        received = self.trainer.strategy.broadcast(apply_to_collection(tensors, Tensor, Tensor.cpu), src=0)
        return apply_to_collection(received, Tensor, Tensor.to, self.device)

    # -- TensorBoard helpers ---------------------------------------------------------------
    def _tensorboard(self) -> Any:
        if not self.trainer.is_global_zero:
            return None
        return next((lg.experiment for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)

    def log_image(self, tag: str, image: Tensor | None) -> None:
        """An image to TensorBoard, from rank 0 only (skipped when there is no TensorBoard logger)."""
        if image is not None and (board := self._tensorboard()) is not None:
            board._get_file_writer().add_summary(png_summary(tag, image), global_step=self.global_step)


def _from_cli(module: LightningModule) -> bool:
    """Whether LightningCLI is instantiating this module, so hparams hold its config rather than live objects."""
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return _given_hyperparameters.get() is not None
