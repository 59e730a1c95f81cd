"""Class forgetting: ``UnlearnTask`` holds the shared machinery, each method is a short subclass.

A method says two things: its loss (``losses``) and, where it restricts them, which weights may
move (``weight_mask``). Everything else (pretrained weights, forget and retain batches, the exact
freeze, checkpointing the mask, metrics) is here once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from unlearning.checkpoints import LatestCheckpoint, held_out_classes
from unlearning.data.splits import retain_classes
from unlearning.errors import UsageError
from unlearning.figures import mask_images
from unlearning.losses import ForgetObjective, forget_loss
from unlearning.saliency import ExactFreeze, Scope, Score, diagonal_fisher, last_layers_mask, mask_summary, saliency_mask, ssd_dampening
from unlearning.tasks.base import BaseTask, Batch


class UnlearnTask(BaseTask):
    """Unlearning from pretrained ``weights`` on forget and retain batches.

    Args:
        forget_objective: what to do with forget samples: ``random_label`` (relabel among the
            remaining classes), ``bounded_ascent`` (raise their loss up to ``ascent_bound``) or
            ``uniform_kl`` (pull their prediction to uniform over the remaining classes).
        retain_weight: λ in ``forget loss + λ · cross-entropy on retain``; 0 ignores retain data.
        ascent_bound: the cross-entropy at which bounded ascent stops pushing a sample.
        **kwargs: see :class:`BaseTask` (``weights`` is where the pretrained model comes from; it
            must have been trained on the forget classes, see :func:`check_trained_on`).
    """

    monitor = None  # an unlearning run's result is its last state; the budget is set by max_steps
    train_streams: Mapping[str, Sequence[str]] = {"forget": ("forget",), "retain": ("retain",)}

    def __init__(
        self,
        *args: Any,
        forget_objective: ForgetObjective = "random_label",
        retain_weight: float = 1.0,
        ascent_bound: float = 5.0,
        **kwargs: Any,
    ):
        self.forget_objective, self.retain_weight, self.ascent_bound = forget_objective, retain_weight, ascent_bound
        super().__init__(*args, **kwargs)
        if kwargs.get("weights") is not None:
            check_trained_on(kwargs["weights"], self.forget_classes)
        self.register_buffer("remaining_classes", torch.tensor(retain_classes(self.forget_classes, self.new_classes)), persistent=False)
        self.weight_masks: dict[str, Tensor] | None = None
        self.freeze: ExactFreeze | None = None

    # -- what a method defines ----------------------------------------------------------------
    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """Named loss terms for one batch; their sum is minimised. Default: forget objective + λ·retain CE."""
        terms = {"forget_loss": self.forget_term(batch)}
        if self.retain_weight:
            terms["retain_loss"] = self.retain_weight * self.cross_entropy_step(batch, "retain")
        return terms

    def weight_mask(self) -> dict[str, Tensor] | None:
        """Which entries of ``net``'s parameters may change (``None``: all of them). Called once, at fit start."""
        return None

    # -- shared pieces ------------------------------------------------------------------------
    def forget_term(self, batch: Batch, stream: str = "forget") -> Tensor:
        x, y = batch[stream]
        return forget_loss(self.forget_objective, self.net(x), y, self.remaining_classes, self.ascent_bound)

    def training_loss(self, batch: Batch) -> Tensor:
        terms = self.losses(batch)
        size = len(next(iter(batch.values()))[1])
        for name, value in terms.items():
            self.log_loss(name, value, size)
        loss = torch.stack(list(terms.values())).sum()
        self.log_loss("loss", loss, size)
        return loss

    def configure_callbacks(self) -> list[Callback]:
        """``last.ckpt`` only: with no monitored metric there is no best to keep beside it."""
        return [LatestCheckpoint()]

    def on_fit_start(self) -> None:
        if self.weight_masks is None:  # a resumed run restored its mask in on_load_checkpoint
            masks = self.weight_mask()
            # rank 0's mask is the mask: identical on every rank even if GPU reductions differ in the last bit
            self.weight_masks = self.trainer.strategy.broadcast(masks, src=0) if masks is not None else None
        if self.weight_masks is not None:
            self.weight_masks = {k: v.to(self.device) for k, v in self.weight_masks.items()}
            self.freeze = ExactFreeze(self.net, self.weight_masks)
            self.freeze.attach(self.trainer.optimizers[0])
            self._log_mask()

    def on_fit_end(self) -> None:
        if self.freeze is not None:
            self.freeze.detach()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.weight_masks is not None:
            checkpoint["weight_masks"] = {k: v.cpu() for k, v in self.weight_masks.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.weight_masks = checkpoint.get("weight_masks")

    def _log_mask(self) -> None:
        assert self.weight_masks is not None
        kept = mask_summary(self.weight_masks)
        if self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics({f"mask_kept/{k}": v for k, v in kept.items()}, step=0)
        if self.log_figures:
            first = next(iter(self.weight_masks.values()))
            self.log_image("mask/first_layer", mask_images(first))


class SelectiveGradient(UnlearnTask):
    """Selective-gradient unlearning: only the weights most salient for the forget class move.

    Saliency is the gradient of the forget loss over the *whole* forget set, taken once from the
    pretrained model in eval mode; the top ``mask_fraction`` of weights (globally or per layer)
    are trained with the forget objective plus λ·retain cross-entropy, and all others stay
    bit-identical (:class:`~unlearning.saliency.ExactFreeze`).

    Args:
        mask_fraction: fraction of weights that may move, in (0, 1].
        mask_scope: ``global`` ranks all weights together, ``layer`` ranks within each tensor.
        mask_score: ``abs_grad`` (SalUn's |Σ grad|) or ``fisher`` (Σ grad² over the forget set's training-size batches).
    """

    def __init__(self, *args: Any, mask_fraction: float = 0.5, mask_scope: Scope = "global", mask_score: Score = "abs_grad", **kwargs: Any):
        if not 0.0 < mask_fraction <= 1.0:
            raise UsageError(f"mask_fraction must lie in (0, 1], got {mask_fraction}")
        self.mask_fraction, self.mask_scope, self.mask_score = mask_fraction, mask_scope, mask_score
        super().__init__(*args, **kwargs)

    def saliency_batches(self) -> Any:
        """The data the saliency is measured on: the whole forget split, unsharded, so every rank sees the same."""
        return split_batches(self.trainer.datamodule, "forget")

    def weight_mask(self) -> dict[str, Tensor]:
        return saliency_mask(self.net, self.saliency_batches(), self.mask_fraction, self.mask_scope, self.mask_score)


class LayerFreeze(UnlearnTask):
    """The original notebook's recipe: random labels on the forget class, training only the last ``layers`` layers.

    A layer is a module that owns parameters (``Linear``, ``Conv2d``), counted back from the output;
    the freeze is a mask of whole tensors, so frozen layers stay bit-identical like any masked weight.
    The notebook used no retain data (``retain_weight=0``); a positive weight adds retain cross-entropy.

    Args:
        layers: how many layers, from the output, may move.
    """

    def __init__(self, *args: Any, layers: int = 1, retain_weight: float = 0.0, **kwargs: Any):
        self.layers = layers
        super().__init__(*args, retain_weight=retain_weight, **kwargs)
        last_layers_mask(self.net, layers)  # refuse a bad count now, not at fit start

    def weight_mask(self) -> dict[str, Tensor]:
        return last_layers_mask(self.net, self.layers)


class FineTune(UnlearnTask):
    """Fine-tuning on retain data only: whatever is forgotten is forgotten by interference, never by a forget signal."""

    train_streams: Mapping[str, Sequence[str]] = {"retain": ("retain",)}

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        return {"retain_loss": self.cross_entropy_step(batch, "retain")}


class GradientAscent(UnlearnTask):
    """Gradient ascent on the forget samples' cross-entropy, whole network.

    The ascent is bounded (``ascent_bound``): plain ascent has no minimum and drags every class
    along once it starts to diverge. No retain data unless ``retain_weight`` is set (that is NegGrad+).
    """

    def __init__(self, *args: Any, retain_weight: float = 0.0, **kwargs: Any):
        super().__init__(*args, forget_objective="bounded_ascent", retain_weight=retain_weight, **kwargs)


class NegGradPlus(GradientAscent):
    """NegGrad+ (Kurmanji et al., 2023): ascent on forget batches plus λ·descent on retain batches."""

    def __init__(self, *args: Any, retain_weight: float = 1.0, **kwargs: Any):
        super().__init__(*args, retain_weight=retain_weight, **kwargs)


class RandomLabel(UnlearnTask):
    """SalUn's RL baseline: forget samples relabelled at random among the remaining classes, plus λ·retain CE, whole network."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, forget_objective="random_label", **kwargs)


class OneShotEdit(UnlearnTask):
    """A method that edits the weights once instead of descending a loss.

    The edit runs as the only training step, whose optimizer step has no gradients and so moves
    nothing (it only counts the step), and then stops the fit; the fit still validates, logs and
    writes its checkpoint like any other. A one-off edit gains nothing from more devices, so these
    methods run on one device.
    """

    train_streams: Mapping[str, Sequence[str]] = {"forget": ("forget",)}

    def edit(self) -> None:
        """Change ``net`` in place."""
        raise NotImplementedError

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            raise UsageError(f"{type(self).__name__} edits the weights once without gradient steps; run it on one device")
        super().on_fit_start()

    def training_step(self, dataloader_iter: Iterator[tuple[Batch, int, int]]) -> None:
        next(dataloader_iter)
        self.edit()
        optimizer = self.optimizers()
        optimizer.zero_grad()  # whatever gradients the edit computed must not move a weight
        optimizer.step()
        self.trainer.should_stop = True


class SSD(OneShotEdit):
    """Selective synaptic dampening (Foster et al., 2024), no gradient steps.

    Importance is the diagonal Fisher on the forget set (``I_f``) and on all training data,
    retain ∪ forget (``I_D``); every weight with ``I_f > α·I_D`` is multiplied by
    ``min(λ·I_D/I_f, 1)``, all others are untouched (:func:`~unlearning.saliency.ssd_dampening`).

    Args:
        selection_weighting: α, how much more a weight must matter to the forget set to be dampened.
            The forget set is part of all training data, so ``I_f/I_D`` is at most about
            ``1 / (its share of the data)``: α must stay below that (10 for one MNIST class) to select anything.
        dampening_constant: λ, how hard a selected weight is dampened.
        fisher_batch_size: samples per squared gradient; smaller batches approach the per-sample Fisher.
    """

    def __init__(
        self, *args: Any, selection_weighting: float = 10.0, dampening_constant: float = 1.0, fisher_batch_size: int = 32, **kwargs: Any
    ):
        if fisher_batch_size < 1:
            raise UsageError(f"fisher_batch_size must be at least 1, got {fisher_batch_size}")
        self.selection_weighting, self.dampening_constant = selection_weighting, dampening_constant
        self.fisher_batch_size = fisher_batch_size
        super().__init__(*args, **kwargs)

    def edit(self) -> None:
        datamodule = self.trainer.datamodule
        forget = diagonal_fisher(self.net, split_batches(datamodule, "forget", size=self.fisher_batch_size))
        full = diagonal_fisher(self.net, split_batches(datamodule, "retain", "forget", size=self.fisher_batch_size))
        factors = ssd_dampening(forget, full, self.selection_weighting, self.dampening_constant)
        with torch.no_grad():
            for name, p in self.net.named_parameters():
                if name in factors:
                    p.mul_(factors[name])
        if self.logger is not None:
            self.logger.log_metrics({"ssd/dampened_fraction": mask_summary({k: f < 1 for k, f in factors.items()})["all"]}, step=0)


class HeadMask(OneShotEdit):
    """The original notebook's "hide the output" trick: the forget classes' logits are pushed to ``suppression``.

    Only the head's bias moves, so accuracy looks like the oracle's while every feature and every
    weight that recognises the class is intact: a baseline that hides a class rather than forgetting
    it, for the evaluation suite to catch.
    """

    suppression = -1e4

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        head = getattr(self.net, "head", None)
        if not isinstance(head, torch.nn.Linear) or head.bias is None:
            raise UsageError(f"HeadMask needs a last layer `head` that is an nn.Linear with a bias; {type(self.net).__name__} has none")
        if not self.forget_classes:
            raise UsageError("HeadMask hides whole classes; set forget_classes")

    def edit(self) -> None:
        with torch.no_grad():
            self.net.head.bias[self.forget_classes] = self.suppression


def split_batches(datamodule: Any, *splits: str, size: int | None = None) -> list[tuple[Tensor, Tensor]]:
    """The named splits, whole and in order, in batches of ``size`` (default: the training batch size): identical on every rank."""
    x, y = datamodule.split_tensors(*splits)
    size = size or datamodule.batch_size
    return list(zip(x.split(size), y.split(size)))


def check_trained_on(weights: str, forget_classes: Sequence[int]) -> None:
    """Refuse pretrained weights that never learned a class they are asked to forget: an error, not a warning.

    Unlearning such a class is a no-op that every forget metric scores as a perfect result, so a
    mistyped path (the oracle's checkpoint instead of the pretrained one) would pass unnoticed.
    The checkpoint's hyperparameters tell (:func:`~unlearning.checkpoints.held_out_classes`); a bare
    state dict, or the checkpoint of a later stage, records no such thing and is trusted.
    """
    held_out = held_out_classes(weights)
    if held_out is None:
        return
    run, unseen = held_out
    never = sorted(unseen & set(forget_classes))
    if never:
        raise UsageError(f"the weights in {weights} come from {run} that never trained on class {never}: nothing to forget")
