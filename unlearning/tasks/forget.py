"""Class forgetting: ``UnlearnTask`` holds the shared machinery, each method is a short subclass.

A method says two things: its loss (``losses``) and, where it restricts them, which weights may
move (``weight_mask``). Everything else (pretrained weights, forget and retain batches, the exact
freeze, checkpointing the mask, metrics) is here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor

from unlearning.data.splits import NUM_CLASSES
from unlearning.errors import UsageError
from unlearning.figures import mask_images
from unlearning.losses import ForgetObjective, forget_loss
from unlearning.saliency import ExactFreeze, Scope, Score, mask_summary, saliency_mask
from unlearning.tasks.base import BaseTask, Batch


class UnlearnTask(BaseTask):
    """Unlearning from pretrained ``weights`` on forget and retain batches.

    Args:
        forget_objective: what to do with forget samples: ``random_label`` (relabel among the
            remaining classes), ``bounded_ascent`` (raise their loss up to ``ascent_bound``) or
            ``uniform_kl`` (pull their prediction to uniform over the remaining classes).
        retain_weight: λ in ``forget loss + λ · cross-entropy on retain``; 0 ignores retain data.
        ascent_bound: the cross-entropy at which bounded ascent stops pushing a sample.
        **kwargs: see :class:`BaseTask` (``weights`` is where the pretrained model comes from).
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
        remaining = [c for c in range(NUM_CLASSES) if c not in self.forget_classes and c not in self.new_classes]
        self.register_buffer("remaining_classes", torch.tensor(remaining), persistent=False)
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

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        terms = self.losses(batch)
        size = len(next(iter(batch.values()))[1])
        for name, value in terms.items():
            self.log_loss(name, value, size)
        loss = torch.stack(list(terms.values())).sum()
        self.log_loss("loss", loss, size)
        return loss

    def configure_callbacks(self) -> list[Callback]:
        return [ModelCheckpoint(save_last=True, filename="{epoch}-{step}")]

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
        mask_score: ``abs_grad`` (SalUn's |Σ grad|) or ``fisher`` (Σ grad² over batches).
    """

    def __init__(self, *args: Any, mask_fraction: float = 0.5, mask_scope: Scope = "global", mask_score: Score = "abs_grad", **kwargs: Any):
        if not 0.0 < mask_fraction <= 1.0:
            raise UsageError(f"mask_fraction must lie in (0, 1], got {mask_fraction}")
        self.mask_fraction, self.mask_scope, self.mask_score = mask_fraction, mask_scope, mask_score
        super().__init__(*args, **kwargs)

    def saliency_batches(self) -> Any:
        """The data the saliency is measured on: the whole forget split, unsharded, so every rank sees the same."""
        return self.trainer.datamodule.loader("forget", shard=False)

    def weight_mask(self) -> dict[str, Tensor]:
        return saliency_mask(self.net, self.saliency_batches(), self.mask_fraction, self.mask_scope, self.mask_score)
