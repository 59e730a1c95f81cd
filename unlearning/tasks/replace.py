"""Class replacement: forget a learned (old) class and learn a new one in its place.

The original notebook's assignment (replace the 6 with a 3): rank the weights involved, freeze the
rest bit-identically, and train with a loss that favours the new class and penalises the old one.
It is :class:`~unlearning.tasks.forget.SelectiveGradient` with a third data stream (the new class),
a choice of where the saliency comes from, distillation from the pretrained model, a linear probe
of the new output units before fine-tuning, and a choice of output unit for the new class. With
``reset_fraction`` it resets what serves the old class first, as
:class:`~unlearning.tasks.forget.ResetRetrain` does when forgetting, and with ``train_only_reset`` trains those weights
alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from unlearning.checkpoints import held_out_classes
from unlearning.data.splits import NUM_CLASSES
from unlearning.errors import UsageError
from unlearning.metrics import unit_to_label
from unlearning.models import evaluating
from unlearning.saliency import last_layers_mask, saliency_scores, top_fraction_mask
from unlearning.tasks.base import Batch
from unlearning.tasks.forget import ResetScore, SelectiveGradient, SpecificReset, UnitScore

HeadMode = Literal["own", "reuse"]
SaliencyFrom = Literal["old", "new", "both"]
DistillUnits = Literal["all", "retain"]
ProbeNorm = Literal["free", "aligned", "capped"]


class ReplaceTask(SpecificReset, SelectiveGradient):
    """Replaces the ``forget_classes`` (old) by the ``new_classes``, starting from pretrained ``weights``.

    One step sees a batch of each stream, ``forget`` (old class), ``new`` and ``retain``, and minimises
    ``new_weight · CE(new) + forget_weight · forget objective(old) + retain_weight · CE(retain)
    + distill_weight · KL(pretrained ‖ net) on retain``. The forget objective sends old-class images
    to the retain classes only (never to the old or the new class).

    Which weights move is decided once, at fit start: the top ``mask_fraction`` by saliency
    (``saliency_from``), or the last ``mask_layers`` layers, or all of them (``mask_fraction=1``).
    The others stay bit-identical. The baselines are configurations of this class.

    Args:
        head_mode: ``own``: the new class is learned on its own output unit and the old unit goes
            silent. ``reuse``: the old class's unit now means the new class (a network whose head
            cannot grow); training targets, predictions and every metric apply that mapping.
        saliency_from: the loss whose gradient ranks the weights: ``old`` (cross-entropy of the old
            class: the weights that recognise it), ``new`` (cross-entropy of the new class on its
            target unit: the weights that must change to learn it) or ``both`` (the two scores, each
            normalised to sum 1, added).
        mask_layers: train exactly the last ``mask_layers`` layers instead of a saliency mask (LayerFreeze).
        new_weight: weight of the new class's cross-entropy.
        forget_weight: weight of the forget objective; 0 drops the old-class stream (plain fine-tuning).
        distill_weight: weight of the distillation of the pretrained model's logits on retain images,
            which holds the retain classes in place while the new class moves in; 0 skips the teacher.
        distill_temperature: softening of both distributions in the distillation.
        distill_units: ``all`` distils every logit; ``retain`` only the retain classes' (the old and new
            units are left to their own losses, so the teacher's knowledge of the old class is not distilled back).
        reset_fraction, reset_unit_fraction, reset_score, unit_score, unit_layers, rank_retain_samples, rank_forget_samples,
        fisher_batch_size, min_frozen:
            reset what serves the old class to a fresh initialisation before anything else (the reset of
            :class:`~unlearning.tasks.forget.ResetRetrain`); ``reset_fraction`` ``None`` resets whole units alone, and
            with ``reset_unit_fraction`` 0 nothing. ``min_frozen`` (with ``train_only_reset``) is the least share of all
            weights kept bit-identical, the new classes' head rows counted among what moves.
        train_only_reset: train only the reset weights, the last ``mask_layers`` layers where set, and the new classes'
            head rows (the probe writes them); every other weight stays bit-identical. Needs a reset; replaces the
            saliency mask, and ``reset_fraction`` is then ranked among the last ``mask_layers`` layers.
        probe_iterations: L-BFGS iterations of a linear probe that fits the new classes' output units
            on the pretrained features before anything else moves (LP-FT); 0 skips it. See :meth:`probe`.
        probe_samples: shuffled samples of retain ∪ new the probe fits on: plenty for a few linear
            units (10 000 did no better on the validation split), and a small share of the budget.
        probe_norm: ``aligned`` scales each probed row (weight and bias) down to the mean norm of the head's other
            rows where it is longer (weight aligning), ``capped`` to the longest other row's; ``free`` keeps the logistic
            regression's own. See :meth:`probe`.
        stream_batch_sizes: samples per step of the named streams (``forget``, ``new``, ``retain``),
            which the datamodule serves; the others get its ``batch_size``. A retain batch larger
            than the new one balances what the shared features are tuned for.
        **kwargs: see :class:`~unlearning.tasks.forget.SelectiveGradient`.
    """

    stage_name = "replace"

    def __init__(
        self,
        *args: Any,
        head_mode: HeadMode = "own",
        saliency_from: SaliencyFrom = "old",
        mask_layers: int | None = None,
        new_weight: float = 1.0,
        forget_weight: float = 1.0,
        distill_weight: float = 0.0,
        distill_temperature: float = 1.0,
        distill_units: DistillUnits = "all",
        reset_fraction: float | None = None,
        reset_unit_fraction: float = 0.0,
        reset_score: ResetScore = "specificity",
        unit_score: UnitScore = "weights",
        unit_layers: int = 1,
        train_only_reset: bool = False,
        rank_retain_samples: int = 5000,
        rank_forget_samples: int | None = None,
        fisher_batch_size: int = 1000,
        min_frozen: float | None = None,
        probe_iterations: int = 0,
        probe_samples: int = 3000,
        probe_norm: ProbeNorm = "free",
        stream_batch_sizes: dict[str, int] | None = None,
        **kwargs: Any,
    ):
        if head_mode not in ("own", "reuse"):
            raise UsageError(f"head_mode must be 'own' or 'reuse', got {head_mode!r}")
        if saliency_from not in ("old", "new", "both"):
            raise UsageError(f"saliency_from must be 'old', 'new' or 'both', got {saliency_from!r}")
        if min(new_weight, forget_weight, distill_weight, probe_iterations) < 0 or distill_temperature <= 0 or probe_samples < 1:
            raise UsageError(
                "new_weight, forget_weight, distill_weight and probe_iterations must be >= 0, distill_temperature > 0, probe_samples >= 1"
            )
        if probe_norm not in ("free", "aligned", "capped"):
            raise UsageError(f"probe_norm must be 'free', 'aligned' or 'capped', got {probe_norm!r}")
        if distill_units not in ("all", "retain"):
            raise UsageError(f"distill_units must be 'all' or 'retain', got {distill_units!r}")
        self.set_reset(
            reset_fraction=reset_fraction, reset_unit_fraction=reset_unit_fraction, reset_score=reset_score, unit_score=unit_score,
            unit_layers=unit_layers, train_only_reset=train_only_reset, mask_layers=mask_layers,
            rank_retain_samples=rank_retain_samples, rank_forget_samples=rank_forget_samples, fisher_batch_size=fisher_batch_size,
            min_frozen=min_frozen,
        )  # fmt: skip
        if train_only_reset and not self.resets:
            raise UsageError("train_only_reset trains the reset weights alone: set reset_fraction or reset_unit_fraction too")
        self.distill_units = distill_units
        self.head_mode, self.saliency_from, self.mask_layers = head_mode, saliency_from, mask_layers
        self.new_weight, self.forget_weight = new_weight, forget_weight
        self.distill_weight, self.distill_temperature = distill_weight, distill_temperature
        self.probe_iterations, self.probe_samples, self.probe_norm = probe_iterations, probe_samples, probe_norm
        self.stream_batch_sizes = dict(stream_batch_sizes or {})
        super().__init__(*args, **kwargs)
        if self.forget_fraction is not None or not self.forget_classes or not self.new_classes:
            raise UsageError("class replacement needs forget_classes (the old classes) and new_classes, and no forget_fraction")
        if head_mode == "reuse" and len(self.forget_classes) != len(self.new_classes):
            raise UsageError(f"head_mode 'reuse' pairs old and new classes one to one; got {self.forget_classes} and {self.new_classes}")
        self.check_reset_net()
        if probe_iterations and not isinstance(getattr(self.net, "head", None), nn.Linear):
            raise UsageError(
                f"probe_iterations needs a network whose last layer `head` is an nn.Linear; {type(self.net).__name__} has none"
            )
        unknown = sorted(set(self.stream_batch_sizes) - set(self.train_streams))
        if unknown or any(n < 1 for n in self.stream_batch_sizes.values()):
            raise UsageError(
                f"stream_batch_sizes takes sizes >= 1 for the streams {sorted(self.train_streams)}; got {self.stream_batch_sizes}"
            )
        if kwargs.get("weights") is not None:
            warn_if_already_known(kwargs["weights"], self.new_classes)
        # label -> the unit trained to stand for it, and unit -> the label it predicts
        target_unit = torch.arange(NUM_CLASSES)
        if head_mode == "reuse":
            target_unit[self.new_classes] = torch.tensor(self.forget_classes)
        self.constant("target_unit", target_unit)
        self.constant("trained_units", torch.cat([self.remaining_classes, target_unit[self.new_classes]]).unique())
        old, new = (self.forget_classes, self.new_classes) if head_mode == "reuse" else ((), ())
        self.constant("unit_label", unit_to_label(NUM_CLASSES, old, new))
        if distill_weight:
            self.keep_teacher()

    @property
    def train_streams(self) -> Mapping[str, Sequence[str]]:  # type: ignore[override]
        streams = {"forget": ("forget",)} if self.forget_weight else {}
        return {**streams, "new": ("new",), "retain": ("retain",)}

    def predict_labels(self, logits: Tensor) -> Tensor:
        return self.unit_label[logits.argmax(dim=1)]

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        logits = self.stream_logits(batch)
        terms = {"new_loss": self.new_weight * self.criterion(logits["new"], self.target_unit[batch["new"][1]])}
        if self.forget_weight:
            terms["forget_loss"] = self.forget_weight * self.forget_term(logits["forget"], batch["forget"][1])
        if self.retain_weight:
            terms["retain_loss"] = self.retain_weight * self.criterion(logits["retain"], batch["retain"][1])
        if self.teacher is not None:
            distill = self.distill(logits["retain"], batch["retain"][0], self.distill_temperature, self.distill_units == "retain")
            terms["distill_loss"] = self.distill_weight * distill
        return terms

    def weight_mask(self) -> dict[str, Tensor] | None:
        if self.train_only_reset:
            return self.reset_training_mask()
        if self.mask_layers is not None:
            return last_layers_mask(self.net, self.mask_layers)
        if self.mask_fraction == 1.0:
            return None
        scores: list[dict[str, Tensor]] = []
        if self.saliency_from in ("old", "both"):
            scores.append(saliency_scores(self.net, self.saliency_batches(), self.mask_score))
        if self.saliency_from in ("new", "both"):
            new = [(x, self.target_unit[y]) for x, y in self.saliency_batches("new")]
            scores.append(saliency_scores(self.net, new, self.mask_score))
        if len(scores) == 2:
            scores = [{k: s / sum(v.sum() for v in score.values()) for k, s in score.items()} for score in scores]
        return self.with_new_rows(
            top_fraction_mask({k: sum(score[k] for score in scores) for k in scores[0]}, self.mask_fraction, self.mask_scope)
        )

    def trained_beside_reset(self) -> dict[str, Tensor]:
        return self.with_new_rows(super().trained_beside_reset())

    def with_new_rows(self, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """``masks`` with the new classes' head rows free to move where the probe writes them."""
        if self.probe_iterations:
            for name in ("head.weight", "head.bias"):
                masks[name][self.target_unit[self.new_classes]] = True
        return masks

    def prepare_net(self) -> None:
        """Reset what serves the old class (if asked), then probe the new units on the features that are left."""
        if self.resets:
            self.apply_reset()
        if self.probe_iterations:
            self.probe()

    @torch.no_grad()
    def probe(self) -> None:
        """Fit the new classes' rows of ``head`` by cross-entropy on the frozen features of retain ∪ new (LP-FT).

        The pretrained head knows nothing of the new class, so its first cross-entropy gradients are
        large and flow into every layer, distorting the features the retain classes rely on (Kumar
        et al., 2022, "Fine-tuning can distort pretrained features"): retain accuracy drops within
        the first steps and recovers slowly. The probe, a logistic regression of the new units
        against the fixed other units (convex; L-BFGS on ``probe_samples`` shuffled samples in their
        natural proportions), starts fine-tuning where those gradients are small. Rank 0's result is
        broadcast, like the mask.

        A new class the features already set apart is separable, and an unregularised logistic regression then grows
        its row without bound: 20 iterations left 2 -> 9's at ten times the other rows' norm, and fine-tuning never
        shrank it (an over-confident unit that rounding to 4 bits turns into the only one left). ``probe_norm:
        aligned`` scales such a row, and its bias, down to the other rows' mean norm (weight aligning, Zhao et al.,
        2020, "Maintaining Discrimination and Fairness in Class Incremental Learning"): the same decision direction,
        the other classes' confidence; ``capped``, to the longest other row's. TensorBoard gets the largest new row's
        norm as fitted and as kept (``probe/fitted_row_norm``, ``probe/row_norm``) beside the other rows' mean, at step 0.
        """
        units = self.target_unit[self.new_classes]
        head, datamodule = self.net.head, self.trainer.datamodule
        x, y = next(iter(datamodule.loader("retain", "new", train=True, shard=False, batch_size=self.probe_samples)))
        with evaluating(self.net):
            features = self.net.features(x)
        logits, targets = head(features), self.target_unit[y]
        weight, bias = head.weight[units].clone().requires_grad_(True), head.bias[units].clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=self.probe_iterations, line_search_fn="strong_wolfe")

        @torch.enable_grad()
        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits.index_copy(1, units, features @ weight.T + bias), targets)
            loss.backward()
            return loss

        optimizer.step(closure)
        others = torch.ones(len(head.weight), dtype=torch.bool, device=head.weight.device)
        others[units] = False
        weight, bias = weight.detach(), bias.detach()
        other_norms, fitted_norms = head.weight[others].norm(dim=1), weight.norm(dim=1)
        if self.probe_norm != "free":
            target = other_norms.mean() if self.probe_norm == "aligned" else other_norms.max()
            scale = (target / fitted_norms.clamp_min(1e-12)).clamp(max=1.0)
            weight, bias = weight * scale[:, None], bias * scale
        weight, bias = self.broadcast_from_rank_zero((weight, bias))
        head.weight[units], head.bias[units] = weight, bias
        if self.logger is not None and self.trainer.is_global_zero:  # the largest new row, as fitted and as kept
            norms = {"fitted_row_norm": fitted_norms.max(), "row_norm": weight.norm(dim=1).max(), "other_rows_norm": other_norms.mean()}
            self.logger.log_metrics({f"probe/{k}": float(v) for k, v in norms.items()}, step=0)

    def eval_summaries(self, confmat: Tensor, stage: str) -> dict[str, Tensor]:
        """Adds ``old_acc`` (the old classes' accuracy, lower is better) and ``old_as_new``: the share of
        old-class images now predicted as a new class (in ``reuse`` mode, those the old unit still claims)."""
        summary = super().eval_summaries(confmat, stage)
        summary["old_acc"] = summary["forget_acc"]
        old = confmat[self.forget_classes]
        summary["old_as_new"] = old[:, self.new_classes].sum().float() / old.sum().clamp(min=1)
        return summary


def warn_if_already_known(weights: str, new_classes: Sequence[int]) -> None:
    """Warn when the pretrained checkpoint was trained on a class this run learns as new.

    Learning it again is not replacement, and the new-class accuracy is high from step 0. What a
    run held out is :func:`~unlearning.checkpoints.held_out_classes`; bare state dicts and later
    stages record nothing and are trusted.
    """
    held_out = held_out_classes(weights)
    if held_out is None:
        return
    run, unseen = held_out
    known = sorted(set(new_classes) - unseen)
    if known:
        rank_zero_warn(
            f"the weights in {weights} come from {run} that trained on class {known}, which this run learns as new; "
            f"pretrain with --data.init_args.new_classes={list(new_classes)} (configs/replace/pretrain.yaml) so it is unseen"
        )
