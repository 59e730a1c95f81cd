"""Class forgetting: ``UnlearnTask`` holds the shared machinery, each method is a short subclass.

A method says two things: its loss (``losses``) and, where it restricts them, which weights may
move (``weight_mask``); a method that changes the network once before training (a reset, a probe)
says so in ``prepare_net``. Everything else (pretrained weights, forget and retain batches, the exact
freeze, checkpointing the mask, the frozen teacher, metrics) is here once.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_deprecation, rank_zero_info
from torch import Tensor

from unlearning.checkpoints import LatestCheckpoint, held_out_classes
from unlearning.data.splits import retain_classes
from unlearning.errors import UsageError
from unlearning.figures import mask_images
from unlearning.losses import ForgetObjective, distillation, focal_cross_entropy, forget_loss
from unlearning.saliency import (
    ExactFreeze,
    Scope,
    Score,
    class_selectivity,
    diagonal_fisher,
    frozen_share,
    last_layers_mask,
    mask_summary,
    parameter_owners,
    per_class_share,
    recording_units,
    reinitialize,
    saliency_mask,
    saliency_scores,
    specificity,
    ssd_dampening,
    top_fraction_mask,
    union,
    unit_activations,
    units_keeping_frozen,
    weight_unit_scores,
)
from unlearning.tasks.base import BaseTask, Batch

ResetScore = Literal["specificity", "abs_grad"]
UnitScore = Literal["weights", "selectivity"]
#: the first layers' activations on the forget samples and on the retain samples, each a list of ``(N, units)``
Activations = tuple[list[Tensor], list[Tensor]]
#: samples per backward pass where batching does not change a saliency (``abs_grad``): few passes, bounded memory
SALIENCY_CHUNK = 2048


class UnlearnTask(BaseTask):
    """Unlearning from pretrained ``weights`` on forget and retain batches.

    Args:
        forget_objective: what to do with forget samples: ``random_label`` (relabel among the
            remaining classes), ``bounded_ascent`` (raise their loss up to ``ascent_bound``) or
            ``uniform_kl`` (pull their prediction to uniform over the remaining classes).
        retain_weight: λ in ``forget loss + λ · cross-entropy on retain``; 0 ignores retain data.
        ascent_bound: the cross-entropy at which bounded ascent stops pushing a sample.
        focal_gamma: the focal exponent of the cross-entropy on retain (and a replacement's new) samples
            (:func:`~unlearning.losses.focal_cross_entropy`): each weighs (1 - p_true)^focal_gamma, so the samples the
            model gets wrong (what a reset took away, and what the pretrained model never learned as well as a fresh
            run) weigh more; 0 is plain cross-entropy.
        label_smoothing: the share of each of those targets spread evenly over the units the run trains (the forgotten
            class's left out, so smoothing never holds its unit up); 0 is none.
        **kwargs: see :class:`BaseTask` (``weights`` is where the pretrained model comes from; it
            must have been trained on the forget classes, see :func:`check_trained_on`).
    """

    monitor = None  # an unlearning run's result is its last state; the budget is set by max_steps
    stage_name = "unlearn"
    starts_from_weights = True

    @property
    def train_streams(self) -> Mapping[str, Sequence[str]]:  # type: ignore[override]
        """Forget batches, and retain batches where the loss uses them (``retain_weight``)."""
        return {"forget": ("forget",), **({"retain": ("retain",)} if self.retain_weight else {})}

    def __init__(
        self,
        *args: Any,
        forget_objective: ForgetObjective = "random_label",
        retain_weight: float = 1.0,
        ascent_bound: float = 5.0,
        focal_gamma: float = 0.0,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ):
        if not 0 <= focal_gamma < math.inf:
            raise UsageError(f"focal_gamma must be a number >= 0 (0: plain cross-entropy), got {focal_gamma}")
        if not 0 <= label_smoothing < 1:
            raise UsageError(f"label_smoothing must be in [0, 1) (0: none), got {label_smoothing}")
        self.forget_objective, self.retain_weight, self.ascent_bound = forget_objective, retain_weight, ascent_bound
        self.focal_gamma, self.label_smoothing = focal_gamma, label_smoothing
        super().__init__(*args, **kwargs)
        if kwargs.get("weights") is not None:
            check_trained_on(kwargs["weights"], self.forget_classes)
        self.constant("remaining_classes", torch.tensor(retain_classes(self.forget_classes, self.new_classes)))
        self.constant("trained_units", torch.tensor(retain_classes(self.forget_classes, ())))  # the new classes too
        self.weight_masks: dict[str, Tensor] | None = None
        self.reset_masks: dict[str, Tensor] | None = None  # what prepare_net reset, if anything (kept in the checkpoint)
        self.before: dict[str, float] | None = None  # the pretrained weights' validation metrics (kept in the checkpoint)
        self.freeze: ExactFreeze | None = None
        object.__setattr__(self, "_teacher", None)  # see keep_teacher

    def configure_losses(self) -> None:
        """``criterion``, the cross-entropy on the samples the model is to classify (retain, and a replacement's new
        class): focal where ``focal_gamma`` is set, its targets smoothed over ``trained_units`` by ``label_smoothing``."""
        self.criterion = self.classification_loss

    def classification_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return focal_cross_entropy(logits, y, self.focal_gamma, self.label_smoothing, self.trained_units)

    # -- what a method defines ----------------------------------------------------------------
    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """Named loss terms for one batch; their sum is minimised. Default: forget objective + λ·retain CE."""
        logits = self.stream_logits(batch)
        terms = {"forget_loss": self.forget_term(logits["forget"], batch["forget"][1])}
        if self.retain_weight:
            terms["retain_loss"] = self.retain_weight * self.criterion(logits["retain"], batch["retain"][1])
        return terms

    def weight_mask(self) -> dict[str, Tensor] | None:
        """Which entries of ``net``'s parameters may change (``None``: all of them). Called once, at fit start."""
        return None

    def prepare_net(self) -> None:
        """Change ``net`` once before the first step (reset weights, fit a probe). Not called when a run resumes:
        its checkpoint holds the prepared network already."""

    # -- shared pieces ------------------------------------------------------------------------
    def keep_teacher(self) -> None:
        """Keep a frozen copy of the pretrained ``net`` as ``teacher`` for distillation.

        Set past ``nn.Module`` so it is no submodule: never trained, never in the state dict or the
        checkpoint, and never broadcast by DDP (every rank loaded the same weights).
        """
        object.__setattr__(self, "_teacher", copy.deepcopy(self.net).requires_grad_(False).eval())

    @property
    def teacher(self) -> torch.nn.Module | None:
        return self._teacher

    def distill(self, logits: Tensor, x: Tensor, temperature: float = 1.0, remaining_only: bool = False) -> Tensor:
        """KL(teacher ‖ net) on inputs ``x``, over every logit or (``remaining_only``) the remaining classes' alone.

        Leaving the forget (and new) classes' logits out means the teacher's knowledge of them is not
        distilled back, and the net's forget unit is left to the cross-entropy, which pushes it down
        on every retain sample exactly as it does in the oracle's training.
        """
        assert self._teacher is not None, "keep_teacher() first"
        with torch.no_grad():
            target = self._teacher(x)
        if remaining_only:
            logits, target = logits.index_select(1, self.remaining_classes), target.index_select(1, self.remaining_classes)
        return distillation(logits, target, temperature)

    def stream_logits(self, batch: Batch) -> dict[str, Tensor]:
        """``net``'s logits for every stream of the batch, from one forward pass over the streams stacked.

        A small network's step is mostly per-call overhead, so one pass over all streams costs about
        what one over a single stream does. (Per-sample layers only: a batch-norm layer would mix the streams.)
        """
        if len(batch) == 1:
            ((stream, (x, _)),) = batch.items()
            return {stream: self.net(x)}
        logits = self.net(torch.cat([x for x, _ in batch.values()]))
        return dict(zip(batch, logits.split([len(y) for _, y in batch.values()])))

    def forget_term(self, logits: Tensor, y: Tensor) -> Tensor:
        """The forget objective on forget samples' logits: they may only go to the remaining classes."""
        return forget_loss(self.forget_objective, logits, y, self.remaining_classes, self.ascent_bound)

    def training_loss(self, batch: Batch) -> Tensor:
        terms = self.losses(batch)
        size = len(next(iter(batch.values()))[1])
        for name, value in terms.items():
            self.log_loss(name, value, size)
        loss = torch.stack(list(terms.values())).sum()
        self.log_loss("loss", loss, size)
        return loss

    def checkpoint_callbacks(self) -> list[Callback]:
        """``last.ckpt`` only: with no monitored metric there is no best to keep beside it."""
        return [LatestCheckpoint()]

    def on_fit_start(self) -> None:
        if self.weights is None and self.trainer.ckpt_path is None:
            raise UsageError(missing_weights(type(self).__name__))
        super().on_fit_start()
        if self.weight_masks is None:  # a resumed run restored its mask in on_load_checkpoint
            masks = self.weight_mask()
            # rank 0's mask is the mask: identical on every rank even if GPU reductions differ in the last bit
            self.weight_masks = self.broadcast_from_rank_zero(masks) if masks is not None else None
        if self.weight_masks is not None:
            self.weight_masks = {k: v.to(self.device) for k, v in self.weight_masks.items()}
            self.freeze = ExactFreeze(self.net, self.weight_masks)
            self.freeze.attach(self.trainer.optimizers[0])
            self._log_mask()
        if self._teacher is not None:  # the net was moved and, under a *-true precision, cast: the teacher follows
            self._teacher.to(device=self.device, dtype=next(self.net.parameters()).dtype)

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path is None:  # a resumed run restored both from its checkpoint
            self.before = self.validate_in_place()  # step 0: the pretrained model itself, before anything changes it
            self.prepare_net()
        super().on_train_start()

    def on_fit_end(self) -> None:
        if self.freeze is not None:
            self.freeze.detach()
        super().on_fit_end()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for key in ("weight_masks", "reset_masks"):
            if (masks := getattr(self, key)) is not None:
                checkpoint[key] = {k: v.cpu() for k, v in masks.items()}
        if self.before is not None:
            checkpoint["before"] = self.before

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.weight_masks, self.reset_masks = checkpoint.get("weight_masks"), checkpoint.get("reset_masks")
        self.before = checkpoint.get("before")

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

    def saliency_batches(self, split: str = "forget") -> list[tuple[Tensor, Tensor]]:
        """The data the saliency is measured on: the whole split, unsharded, so every rank sees the same.

        ``abs_grad`` sums the gradient over every sample, which does not depend on the batching, so it
        is taken in chunks of :data:`SALIENCY_CHUNK` (a tenth of the backward passes of training-size
        batches); ``fisher`` squares each batch's gradient, so its batches are the training batches.
        """
        datamodule = self.trainer.datamodule
        return split_batches(datamodule, split, size=datamodule.batch_size if self.mask_score == "fisher" else SALIENCY_CHUNK)

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


class SpecificReset:
    """What the tasks that reset the weights serving the forget classes share (:class:`ResetRetrain`,
    :class:`~unlearning.tasks.replace.ReplaceTask`): the ranking, the reset, and with ``train_only_reset`` the mask of
    what may move. A mix-in for an :class:`UnlearnTask`; :meth:`set_reset` takes and checks the settings.
    """

    reset_fraction: float | None
    reset_unit_fraction: float
    reset_score: ResetScore
    unit_score: UnitScore
    unit_layers: int
    train_only_reset: bool
    mask_layers: int | None
    rank_retain_samples: int
    rank_forget_samples: int | None
    fisher_batch_size: int
    min_frozen: float | None

    def set_reset(
        self,
        reset_fraction: float | None,
        reset_unit_fraction: float,
        reset_score: ResetScore,
        unit_score: UnitScore,
        unit_layers: int,
        train_only_reset: bool,
        mask_layers: int | None,
        rank_retain_samples: int,
        rank_forget_samples: int | None,
        fisher_batch_size: int,
        min_frozen: float | None = None,
    ) -> None:
        check_reset(
            reset_fraction, reset_unit_fraction, reset_score, unit_score, rank_retain_samples, rank_forget_samples, fisher_batch_size
        )
        if min_frozen is not None and not (train_only_reset and 0.0 < min_frozen < 1.0):
            raise UsageError(
                f"min_frozen must lie in (0, 1), got {min_frozen}" if train_only_reset
                else "min_frozen keeps weights bit-identical, which only train_only_reset does: set it too, or min_frozen null"
            )  # fmt: skip
        self.reset_fraction, self.reset_unit_fraction, self.reset_score = reset_fraction, reset_unit_fraction, reset_score
        self.unit_score, self.unit_layers = unit_score, unit_layers
        self.train_only_reset, self.mask_layers = train_only_reset, mask_layers
        self.rank_retain_samples, self.rank_forget_samples = rank_retain_samples, rank_forget_samples
        self.fisher_batch_size, self.min_frozen = fisher_batch_size, min_frozen
        self.pending_reset: dict[str, Tensor] | None = None

    @property
    def resets(self) -> bool:
        """Whether anything is reset: scattered weights (``reset_fraction``), whole units (``reset_unit_fraction``) or both."""
        return self.reset_fraction is not None or self.reset_unit_fraction > 0

    def check_reset_net(self) -> None:
        """Refuse, when the network is built rather than at fit start, a ``unit_layers`` or ``mask_layers`` it does not
        have, and a ``min_frozen`` that the last ``mask_layers`` layers, which train whole, leave no room for."""
        layers = max(1, len(parameter_owners(self.net)) - 1)  # the head's units are the classes: never reset as units
        if not 1 <= self.unit_layers <= layers:
            raise UsageError(f"unit_layers must lie in [1, {layers}] for {type(self.net).__name__}, got {self.unit_layers}")
        if self.mask_layers is not None:
            left = frozen_share(last_layers_mask(self.net, self.mask_layers, "mask_layers"))  # which refuses a bad count
            if self.min_frozen is not None and left < self.min_frozen:
                raise UsageError(
                    f"min_frozen {self.min_frozen} cannot hold: the last {self.mask_layers} layers, which train whole, leave {left:.1%} frozen"
                )

    def reset_scores(
        self, forget: tuple[Tensor, Tensor], retain: tuple[Tensor, Tensor], ranked: list[str] | None = None
    ) -> tuple[dict[str, Tensor], Activations | None]:
        """Per weight, how much it serves the ``forget`` samples: ``specificity`` ranks by their diagonal Fisher over the
        ``retain`` samples', both in batches of ``fisher_batch_size``; ``abs_grad`` by the forget loss's saliency alone.
        Of the ``ranked`` parameters alone (every one where ``None``), unless the units are ranked by their weights'
        scores: a weight that is never ranked costs no gradient (in SeedMLP the first layer's weight gradient is most of
        each backward pass).

        Where the units are ranked by ``selectivity`` and the Fisher passes both sets through the network anyway, also
        the activations :meth:`unit_scores` reads, recorded on those passes (``None`` otherwise).
        """
        by_weights = self.unit_score == "weights" and self.reset_unit_fraction  # such units need the first layer's scores
        names = None if by_weights else ranked
        if self.reset_score != "specificity":
            return saliency_scores(self.net, batches(*forget, SALIENCY_CHUNK), "abs_grad", names=names), None
        layers = self.unit_layers if self.unit_score == "selectivity" and self.reset_unit_fraction else 0
        fishers, activations = [], []
        for xy in (forget, retain):
            with recording_units(self.net, layers) as recorded:
                fishers.append(diagonal_fisher(self.net, batches(*xy, self.fisher_batch_size), names))
            activations.append(recorded)
        return specificity(*fishers), (activations[0], activations[1]) if layers else None

    def unit_scores(
        self,
        scores: dict[str, Tensor],
        forget: tuple[Tensor, Tensor],
        retain: tuple[Tensor, Tensor],
        activations: Activations | None = None,
    ) -> list[Tensor]:
        """Per unit of each of the first ``unit_layers`` layers, how much it serves the forget classes: ``weights`` sums
        :meth:`reset_scores` over its row; ``selectivity`` takes its activation's
        :func:`~unlearning.saliency.class_selectivity` on the ``forget`` samples against the ``retain`` ones (the
        ``activations`` of both where given, else passed through the network here)."""
        if self.unit_score == "weights":
            return [weight_unit_scores(self.net, scores, layer) for layer in range(self.unit_layers)]
        (x, y), (retain_x, _) = forget, retain
        forget_units, retain_units = activations or (
            unit_activations(self.net, x, self.unit_layers),
            unit_activations(self.net, retain_x, self.unit_layers),
        )
        return [class_selectivity(f, y, r, self.forget_classes) for f, r in zip(forget_units, retain_units)]

    def ranked_weights(self) -> list[str] | None:
        """The parameters among which ``reset_fraction`` is ranked: the last ``mask_layers`` layers' (those that train;
        the others are never reset), or every one (``None``) where that is not set."""
        if self.mask_layers is None:
            return None
        return [k for k, m in last_layers_mask(self.net, self.mask_layers).items() if m.all()]

    def specific_weights(self) -> dict[str, Tensor]:
        """The weights that serve the forget classes most: the top ``reset_fraction`` by :meth:`reset_scores` (of the last
        ``mask_layers`` layers' weights where that is set, of all weights otherwise) and the top ``reset_unit_fraction`` of
        the units (whole rows, by :meth:`unit_scores`) of each of the first ``unit_layers`` layers, each per forget class
        (:func:`~unlearning.saliency.per_class_share`: with two classes, 1 - (1 - fraction)²). Both rankings read a
        seeded subset of the forget split (``rank_forget_samples`` per forget class; all of it where that is ``None``)
        and one of ``rank_retain_samples`` retain samples, gathered once. Rank 0's mask, on every rank."""
        datamodule = self.trainer.datamodule
        classes = max(1, len(self.forget_classes))
        forget_samples = None if self.rank_forget_samples is None else self.rank_forget_samples * classes
        forget = datamodule.split_tensors("forget", samples=forget_samples)
        retain = datamodule.split_tensors("retain", samples=self.rank_retain_samples)
        ranked = self.ranked_weights()
        scores: dict[str, Tensor] = {}
        activations = None
        if self.reset_fraction is not None or self.unit_score == "weights":  # units ranked by activation need no Fisher
            scores, activations = self.reset_scores(forget, retain, ranked)
        top = {}
        if self.reset_fraction is not None:
            share = per_class_share(self.reset_fraction, classes)
            top = top_fraction_mask(scores if ranked is None else {k: scores[k] for k in ranked}, share)
        scattered = {k: top[k] if k in top else torch.zeros_like(p, dtype=torch.bool) for k, p in self.net.named_parameters()}
        unit_share = per_class_share(self.reset_unit_fraction, classes) if self.reset_unit_fraction else 0.0
        unit_scores = self.unit_scores(scores, forget, retain, activations) if unit_share else []
        try:
            units, share = units_keeping_frozen(
                self.net, unit_scores, unit_share, union(scattered, self.trained_beside_reset()), self.min_frozen
            )
        except ValueError as err:
            raise UsageError(f"{type(self).__name__}: {err}") from err
        if share < unit_share:
            rank_zero_info(
                f"min_frozen {self.min_frozen}: the layers with frozen weights reset {share:.0%} of their units, not {unit_share:.0%}"
            )
        return self.broadcast_from_rank_zero(union(scattered, *units))

    def trained_beside_reset(self) -> dict[str, Tensor]:
        """What ``train_only_reset`` trains besides the reset: the last ``mask_layers`` layers, where set."""
        if self.mask_layers is None:
            return {k: torch.zeros_like(p, dtype=torch.bool) for k, p in self.net.named_parameters()}
        return last_layers_mask(self.net, self.mask_layers)

    def reset_training_mask(self) -> dict[str, Tensor] | None:
        """With ``train_only_reset``: what may move, the weights :meth:`specific_weights` picks (reset by :meth:`apply_reset`)
        and what trains beside it (:meth:`trained_beside_reset`); ``None`` (everything) without it."""
        if not self.train_only_reset:
            return None
        self.pending_reset = self.specific_weights()
        return union(self.pending_reset, self.trained_beside_reset())

    def apply_reset(self) -> None:
        """Reset the specific weights (those :meth:`reset_training_mask` picked, if it ran) to a fresh initialisation drawn
        from the split's seed, so every rank draws the same numbers; keep the mask in the checkpoint (``reset_masks``) and
        log its size and first-layer picture."""
        reset = self.pending_reset if self.pending_reset is not None else self.specific_weights()
        reinitialize(self.net, reset, seed=self.trainer.datamodule.seed)
        self.reset_masks = reset
        if self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics({f"reset/{k}": v for k, v in mask_summary(reset).items()}, step=0)
        if self.log_figures:
            self.log_image("reset/first_layer", mask_images(next(iter(reset.values()))))


class ResetRetrain(SpecificReset, UnlearnTask):
    """Reset what serves the forget class, then retrain on retain data: every weight, or (``train_only_reset``) the reset
    ones and the last ``mask_layers`` layers, every other weight bit-identical.

    The weights most specific to the forget class (the top ``reset_fraction`` by ``reset_score``) and the
    first layer's most specific units (the top ``reset_unit_fraction``, whole rows: in an MLP that layer
    holds most of the weights, and its detectors of the class survive a scattered reset) go back to a
    fresh initialisation (:meth:`SpecificReset.specific_weights`). Then the network trains on retain batches with
    cross-entropy, plus ``distill_weight`` · KL(pretrained ‖ net) over the remaining classes' logits
    (:meth:`UnlearnTask.distill`) where that is set.

    With ``train_only_reset`` the rest stays bit-identical to the pretrained model, with the exact freeze of
    :class:`SelectiveGradient` (configs/unlearn/masked_reset.yaml): selective-gradient unlearning whose selected
    weights start afresh instead of from what they had learned of the class. Without it no weight is
    guaranteed unchanged. What both offer is the evidence suite's: outputs, probes of every hidden
    layer, relearning and reachability like the oracle's.

    Args:
        reset_fraction: fraction of the ranked weights reset per forget class, in (0, 1] (two classes reset
            1 - (1 - reset_fraction)²: they share more of the network than one does); ``None``: whole units alone.
        reset_unit_fraction: fraction of each of the first ``unit_layers`` layers' units reset per forget class, in [0, 1].
        reset_score: ``specificity`` (forget Fisher over retain Fisher, :func:`~unlearning.saliency.specificity`) or
            ``abs_grad`` (the forget loss's saliency alone, which also resets what the retain classes share).
        unit_score: how units are ranked: ``weights``, their weights' ``reset_score`` summed over the row;
            ``selectivity``, how far their activation on the class lies from that on retain samples
            (:meth:`SpecificReset.unit_scores`).
        unit_layers: how many layers, from the input, reset their top ``reset_unit_fraction`` units.
        train_only_reset: train the reset weights (and the last ``mask_layers`` layers) alone; freeze the rest exactly.
        mask_layers: the last layers that train whole beside the reset, and among which ``reset_fraction`` is ranked;
            ``None``: no layer whole, the ranking over every weight.
        rank_retain_samples: retain samples (seeded) whose Fisher the specificity divides by, and whose activations the
            units' selectivity compares against.
        rank_forget_samples: forget samples (seeded) per forget class that both rankings read; ``None``: the whole forget
            split. 2000 choose `unit_reset`'s reset as well as the whole split does, at half the ranking's compute; the
            masked reset, whose frozen weights cannot make up for a unit the ranking misses, needs the whole split
            (docs/methods.md).
        fisher_batch_size: samples per squared gradient in both Fishers.
        min_frozen: with ``train_only_reset``, the least share of all weights kept bit-identical: where the reset's units
            would move more (two forget classes reset 1 - (1 - reset_unit_fraction)² of a layer), the layers holding frozen
            weights reset fewer, their least selective units left out (:func:`~unlearning.saliency.units_keeping_frozen`);
            ``None``: no floor.
        distill_weight, distill_temperature: the distillation's weight (0: none, no teacher is kept) and softening.
    """

    train_streams: Mapping[str, Sequence[str]] = {"retain": ("retain",)}

    def __init__(
        self,
        *args: Any,
        reset_fraction: float | None = 0.15,
        reset_unit_fraction: float = 0.5,
        reset_score: ResetScore = "specificity",
        unit_score: UnitScore = "weights",
        unit_layers: int = 1,
        train_only_reset: bool = False,
        mask_layers: int | None = None,
        rank_retain_samples: int = 5000,
        rank_forget_samples: int | None = None,
        fisher_batch_size: int = 1000,
        min_frozen: float | None = None,
        distill_weight: float = 0.0,
        distill_temperature: float = 1.0,
        **kwargs: Any,
    ):
        self.set_reset(
            reset_fraction=reset_fraction, reset_unit_fraction=reset_unit_fraction, reset_score=reset_score, unit_score=unit_score,
            unit_layers=unit_layers, train_only_reset=train_only_reset, mask_layers=mask_layers,
            rank_retain_samples=rank_retain_samples, rank_forget_samples=rank_forget_samples, fisher_batch_size=fisher_batch_size,
            min_frozen=min_frozen,
        )  # fmt: skip
        if not self.resets:
            raise UsageError(f"{type(self).__name__} resets nothing with reset_fraction null and reset_unit_fraction 0: set either")
        if distill_weight < 0 or distill_temperature <= 0:
            raise UsageError(f"distill_weight must be >= 0 and distill_temperature > 0, got {distill_weight} and {distill_temperature}")
        self.distill_weight, self.distill_temperature = distill_weight, distill_temperature
        super().__init__(*args, **kwargs)
        if not self.forget_classes:
            raise UsageError(f"{type(self).__name__} resets what serves whole classes; set forget_classes")
        self.check_reset_net()
        if distill_weight:
            self.keep_teacher()

    def weight_mask(self) -> dict[str, Tensor] | None:
        return self.reset_training_mask()

    def prepare_net(self) -> None:
        self.apply_reset()

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        x, y = batch["retain"]
        logits = self.net(x)
        terms = {"retain_loss": self.criterion(logits, y)}
        if self.distill_weight:
            terms["distill_loss"] = self.distill_weight * self.distill(logits, x, self.distill_temperature, remaining_only=True)
        return terms


class ReinitDistill(ResetRetrain):
    """The name :class:`ResetRetrain` shipped under, kept for one release (its recipe has not distilled since
    ``distill_weight: 0`` became its setting); the default ``distill_weight`` stays what it was, 1."""

    def __init__(self, *args: Any, distill_weight: float = 1.0, **kwargs: Any):
        rank_zero_deprecation(
            "unlearning.tasks.forget.ReinitDistill is now ResetRetrain (it resets and retrains); the old name goes in the next release"
        )
        super().__init__(*args, distill_weight=distill_weight, **kwargs)


class Undo(UnlearnTask):
    """UNDO (Lee et al., 2025, "Distillation Robustifies Unlearning"): noise an unlearned model, then distil it back.

    ``weights`` is an *unlearned* checkpoint (e.g. selective gradient's), which is also the teacher.
    Before training, every weight moves ``noise`` of the way to a fresh initialisation (shrink and
    perturb: ``(1 - noise) · θ + noise · θ_fresh``), which damages whatever the unlearning left hidden;
    then the noised network learns the teacher's outputs on all training data (retain ∪ forget) by
    distillation. The teacher's outputs never say the class, so what the student relearns never holds
    it. Its cost includes the unlearning run it starts from (the bench adds that run's time).

    Args:
        noise: α, how far every weight moves towards a fresh initialisation, in (0, 1].
        distill_temperature: softening of both distributions in the distillation.
    """

    train_streams: Mapping[str, Sequence[str]] = {"train": ("retain", "forget")}

    def __init__(self, *args: Any, noise: float = 0.5, distill_temperature: float = 1.0, **kwargs: Any):
        if not 0.0 < noise <= 1.0 or distill_temperature <= 0:
            raise UsageError(f"noise must lie in (0, 1] and distill_temperature be > 0, got {noise} and {distill_temperature}")
        self.noise, self.distill_temperature = noise, distill_temperature
        super().__init__(*args, **kwargs)
        self.keep_teacher()

    def prepare_net(self) -> None:
        with torch.no_grad():
            start = [p.detach().clone() for p in self.net.parameters()]
            reinitialize(
                self.net,
                {name: torch.ones_like(p, dtype=torch.bool) for name, p in self.net.named_parameters()},
                self.trainer.datamodule.seed,
            )
            for p, before in zip(self.net.parameters(), start):
                p.mul_(self.noise).add_(before, alpha=1 - self.noise)

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        x, _ = batch["train"]
        return {"distill_loss": self.distill(self.net(x), x, self.distill_temperature)}


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
        if self.trainer.precision == "16-mixed":  # its GradScaler refuses an optimizer step that saw no gradients
            raise UsageError(
                f"{type(self).__name__} takes no gradient steps, which 16-mixed's GradScaler cannot step: use bf16-mixed or 32"
            )
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


def split_batches(datamodule: Any, *splits: str, size: int | None = None, samples: int | None = None) -> list[tuple[Tensor, Tensor]]:
    """The named splits in order, in batches of ``size`` (default: the training batch size): identical on every rank.

    ``samples``: only this many of them, a subset fixed by the datamodule's seed (gathered alone, not
    the whole split first).
    """
    return batches(*datamodule.split_tensors(*splits, samples=samples), size or datamodule.batch_size)


def batches(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    """``(x, y)`` in consecutive batches of ``size`` (views, no copy)."""
    return list(zip(x.split(size), y.split(size)))


def missing_weights(task: str) -> str:
    """What to tell a user who starts unlearning without pretrained weights: on random ones every forget metric reads perfect."""
    return (
        f"{task} starts from trained weights: give --model.init_args.weights <checkpoint> "
        "(or --ckpt_path to resume a run); on an untrained network every forget metric would read as perfect forgetting"
    )


def check_reset(
    fraction: float | None,
    unit_fraction: float,
    score: str,
    unit_score: str,
    retain_samples: int,
    forget_samples: int | None,
    batch_size: int,
) -> None:
    """Refuse reset settings that cannot work, before anything runs (``fraction`` ``None``: no scattered weights reset, the rest still checked)."""
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise UsageError(f"reset_fraction must lie in (0, 1], got {fraction}")
    if not 0.0 <= unit_fraction <= 1.0:
        raise UsageError(f"reset_unit_fraction must lie in [0, 1], got {unit_fraction}")
    if score not in ("specificity", "abs_grad"):
        raise UsageError(f"reset_score must be 'specificity' or 'abs_grad', got {score!r}")
    if unit_score not in ("weights", "selectivity"):
        raise UsageError(f"unit_score must be 'weights' or 'selectivity', got {unit_score!r}")
    if min(retain_samples, batch_size, 1 if forget_samples is None else forget_samples) < 1:
        raise UsageError(
            f"rank_retain_samples, rank_forget_samples and fisher_batch_size must be at least 1, got {retain_samples}, {forget_samples} and {batch_size}"
        )


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
