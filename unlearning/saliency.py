"""Which weights may move: gradient saliency of the forget data, top-k ranking, and an exact freeze of the rest.

Pure torch. The ranking is deterministic (stable sort, ties to the lower index), so every
rank of a DDP job that scores the same data with the same weights selects the same mask.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from unlearning.errors import UsageError
from unlearning.models import capturing, evaluating, hidden_layers, hidden_outputs

Score = Literal["abs_grad", "fisher"]
Scope = Literal["global", "layer"]
LossFn = Callable[[Tensor, Tensor], Tensor]


def batch_gradients(
    net: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], loss_fn: LossFn | None = None, names: Collection[str] | None = None
) -> Iterator[dict[str, Tensor]]:
    """The gradient of ``loss_fn`` (default: summed cross-entropy) on each batch, per trainable parameter (of ``names``
    alone where given), ``net`` in eval mode (:func:`evaluating`).

    Autograd runs only the backward that reaches the parameters asked for: the gradients of the later layers alone
    skip the first layer's weight gradient, which in an MLP on images is most of a backward pass.
    """
    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))
    params = {name: p for name, p in net.named_parameters() if p.requires_grad and (names is None or name in names)}
    with evaluating(net):
        for x, y in batches:
            grads = torch.autograd.grad(loss_fn(net(x), y), list(params.values()), allow_unused=True)
            yield {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(params.items(), grads)}


def saliency_scores(
    net: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    score: Score = "abs_grad",
    loss_fn: LossFn | None = None,
    names: Collection[str] | None = None,
) -> dict[str, Tensor]:
    """Per-weight saliency of ``loss_fn`` over *all* ``batches``, with ``net`` in eval mode, of the parameters ``names``
    (every trainable one where that is ``None``).

    ``abs_grad`` is SalUn's ``|sum_b grad_b|``, the gradient of the loss summed over every sample, so
    it does not depend on how the samples are batched. ``fisher`` is the diagonal empirical Fisher
    ``sum_b grad_b**2``: it counts a weight that many batches pull in opposite directions, which
    ``abs_grad`` cancels out; the batches set its granularity (batches of one give the per-sample Fisher).
    """
    if score not in ("abs_grad", "fisher"):
        raise ValueError(f"score must be 'abs_grad' or 'fisher', got {score!r}")
    totals: dict[str, Tensor] = {}
    for grads in batch_gradients(net, batches, loss_fn, names):
        for name, grad in grads.items():
            term = grad if score == "abs_grad" else grad.pow(2)
            totals[name] = totals[name] + term if name in totals else term
    if not totals:
        raise ValueError("no batches to measure saliency on")
    return {name: total.abs() for name, total in totals.items()}


def per_class_share(fraction: float, classes: int) -> float:
    """The share ``1 - (1 - fraction) ** classes`` of a network that ``classes`` forget classes reset.

    Each class claims ``fraction`` of what the classes before it left: one class resets exactly
    ``fraction``, two classes (which share more of the network than one) ``fraction`` plus that of
    the rest, and the share never reaches the whole network.
    """
    if classes < 1:
        raise ValueError(f"at least one class, got {classes}")
    return 1.0 - (1.0 - fraction) ** classes


def top_fraction_mask(scores: dict[str, Tensor], fraction: float, scope: Scope = "global") -> dict[str, Tensor]:
    """Boolean masks keeping the ``round(fraction * n)`` highest scores (at least one).

    ``global`` ranks all weights together, so layers with larger gradients get more of the budget;
    ``layer`` keeps the same fraction of every parameter tensor.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the kept fraction must lie in (0, 1], got {fraction}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if scope == "layer":
        return {name: _top(s.flatten(), fraction).view_as(s) for name, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = _top(flat, fraction)
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return masks


def _top(values: Tensor, fraction: float) -> Tensor:
    k = max(1, round(fraction * values.numel()))
    order = torch.argsort(values, descending=True, stable=True)
    keep = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    keep[order[:k]] = True
    return keep


def saliency_mask(
    net: nn.Module,
    forget_batches: Iterable[tuple[Tensor, Tensor]],
    fraction: float = 0.5,
    scope: Scope = "global",
    score: Score = "abs_grad",
    loss_fn: LossFn | None = None,
) -> dict[str, Tensor]:
    """The weights most involved in the forget data: ``top_fraction_mask(saliency_scores(...))``."""
    return top_fraction_mask(saliency_scores(net, forget_batches, score, loss_fn), fraction, scope)


def diagonal_fisher(net: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], names: Collection[str] | None = None) -> dict[str, Tensor]:
    """SSD's importance of every weight (of the parameters ``names`` where given): the squared gradient of each batch's
    *mean* cross-entropy, averaged over batches.

    Means, not sums, so the importance on a small forget set and on the whole training set are on
    one scale and can be compared weight by weight.
    """
    batches = list(batches)
    scores = saliency_scores(net, batches, "fisher", lambda logits, y: F.cross_entropy(logits, y), names)
    return {name: s / len(batches) for name, s in scores.items()}


def ssd_dampening(forget: dict[str, Tensor], full: dict[str, Tensor], alpha: float, lam: float) -> dict[str, Tensor]:
    """SSD's factor for every weight: ``min(lam * I_D / I_f, 1)`` where ``I_f > alpha * I_D``, else 1.

    A weight far more important to the forget data (``I_f``) than to all training data (``I_D``) is
    shrunk in proportion; every other weight is left exactly as it is.
    """
    return {
        name: torch.where(i_f > alpha * full[name], (lam * full[name] / i_f).clamp(max=1.0), torch.ones_like(i_f))
        for name, i_f in forget.items()
    }


def specificity(forget: dict[str, Tensor], retain: dict[str, Tensor]) -> dict[str, Tensor]:
    """How much more a weight matters to the forget data than to the retain data: ``I_f / I_r`` per weight.

    ``forget`` and ``retain`` are importances on one scale (:func:`diagonal_fisher` of each). Raw
    forget saliency also ranks weights every class relies on (a stroke detector shared by 4, 7 and 9);
    resetting those damages the retain classes for nothing. A weight no retain sample uses is
    maximally specific: its ratio is taken against the smallest positive retain importance among the weights given.
    """
    floor = min((v[v > 0].min() for v in retain.values() if (v > 0).any()), default=torch.tensor(1e-30))
    return {name: f / retain[name].clamp_min(floor) for name, f in forget.items()}


def parameter_owners(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module that owns parameters (``Linear``, ``Conv2d``), input to output."""
    return [(name, m) for name, m in net.named_modules() if next(m.parameters(recurse=False), None) is not None]


def weight_unit_scores(net: nn.Module, scores: dict[str, Tensor], layer: int = 0) -> Tensor:
    """A unit's score from its weights' scores: the sum over its row of the ``layer``-th layer (a Linear's output, a conv's
    filter), plus its bias's."""
    name, _ = parameter_owners(net)[layer]
    prefix = f"{name}." if name else ""
    unit_score = scores[f"{prefix}weight"].flatten(1).sum(1)
    if f"{prefix}bias" in scores:
        unit_score = unit_score + scores[f"{prefix}bias"]
    return unit_score


def _per_unit(output: Tensor) -> Tensor:
    """One number per unit: a conv map averaged over its positions, a Linear's output as it is."""
    return output.flatten(2).mean(2) if output.dim() > 2 else output


def unit_activations(net: nn.Module, x: Tensor, layers: int = 1, batch_size: int = 4096) -> list[Tensor]:
    """``(N, units)`` per hidden layer, the first ``layers`` of them: the layer's output (after its activation) for ``x``,
    a conv map averaged over its positions, so there is one number per unit :func:`unit_mask` ranks; ``net`` in eval mode
    (:func:`evaluating`), as the Fisher that :func:`recording_units` records reads it."""
    with evaluating(net):
        return list(hidden_outputs(net, x, hidden_layers(net)[:layers], _per_unit, batch_size).values())


@contextlib.contextmanager
def recording_units(net: nn.Module, layers: int = 1) -> Iterator[list[Tensor]]:
    """What :func:`unit_activations` gives, for the samples of every forward pass ``net`` runs while open, in order.

    The list it yields is filled on exit. A ranking that passes the samples through the network anyway (a Fisher) gets
    their activations for free instead of passing them again: a third of the ranking's compute.
    """
    recorded: list[Tensor] = []
    with capturing(net, hidden_layers(net)[:layers], _per_unit) as captured:
        yield recorded
    recorded.extend(torch.cat(parts) for parts in captured.values())


def unit_selectivity(forget: Tensor, retain: Tensor) -> Tensor:
    """Per unit (columns of ``(N, units)`` activations): how far its activation on the forget samples lies from that on the
    retain samples, ``|mean_f - mean_r| / (std_f + std_r)``.

    A unit that tells the class apart on its own is one of its detectors, whether it fires for the class or falls
    silent for it; a linear read-out of the layer finds either. Weight specificity (Fisher ratios summed over a row)
    ranks units by what their gradients say and can leave such a unit in place when the class is already well fitted.
    """
    spread = forget.std(0) + retain.std(0)
    return (forget.mean(0) - retain.mean(0)).abs() / spread.clamp_min(torch.finfo(spread.dtype).eps)


def class_selectivity(forget: Tensor, labels: Tensor, retain: Tensor, classes: Sequence[int]) -> Tensor:
    """Per unit, the largest :func:`unit_selectivity` between each forget class (rows of ``forget`` whose ``labels`` is
    that class) and the retain samples, and between each forget class and each other one.

    A network that never saw the forget classes cannot tell them apart from each other either: a unit that does is
    what the classes left behind, even where it does not set them apart from the retain classes.
    """
    groups = [forget[labels == c] for c in classes]
    pairs = [(group, retain) for group in groups] + list(itertools.combinations(groups, 2))
    return torch.stack([unit_selectivity(a, b) for a, b in pairs]).amax(0)


def unit_mask(net: nn.Module, unit_score: Tensor, fraction: float, layer: int = 0) -> dict[str, Tensor]:
    """Whole units of the ``layer``-th layer (rows of its weight and their biases: a Linear's outputs, a conv's filters),
    the ``round(fraction * units)`` with the largest ``unit_score``. Every other entry of every parameter is ``False``.

    A unit's incoming weights are what make it a detector: a reset unit detects nothing it learned.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the unit fraction must lie in (0, 1], got {fraction}")
    name, owner = parameter_owners(net)[layer]
    prefix = f"{name}." if name else ""
    if unit_score.shape != owner.weight.shape[:1]:
        raise UsageError(f"{len(unit_score)} unit scores for a layer of {owner.weight.shape[0]} units ({name or 'the network'})")
    units = _top(unit_score, fraction)
    masks = {k: torch.zeros_like(p, dtype=torch.bool) for k, p in net.named_parameters()}
    masks[f"{prefix}weight"][units] = True
    if f"{prefix}bias" in masks:
        masks[f"{prefix}bias"][units] = True
    return masks


def frozen_share(moving: Mapping[str, Tensor]) -> float:
    """The share of all entries that ``moving`` leaves out: what an exact freeze keeps bit-identical."""
    return 1.0 - mask_summary(moving)["all"]


def units_keeping_frozen(
    net: nn.Module, unit_scores: Sequence[Tensor], fraction: float, moving: dict[str, Tensor], min_frozen: float | None
) -> tuple[list[dict[str, Tensor]], float]:
    """Each layer's top ``fraction`` of units (:func:`unit_mask`, layer ``i`` ranked by ``unit_scores[i]``), and the share
    of units taken in the layers that hold frozen weights.

    With ``min_frozen`` set, where those units and the weights already ``moving`` would leave less than ``min_frozen`` of
    all weights out (:func:`frozen_share`), the layers whose reset units would move weights that nothing else moves take
    the largest share (one for all of them) that keeps it, dropping their least-scored units first; layers that move
    whole anyway keep ``fraction``. Why: a frozen majority is what a user audits and ships as a small patch, and the
    per-class share (:func:`per_class_share`) grows with the number of forget classes. ``ValueError`` where even no
    unit there keeps ``min_frozen``.
    """
    masks = [unit_mask(net, score, fraction, layer) for layer, score in enumerate(unit_scores)]
    if min_frozen is None or frozen_share(union(moving, *masks)) >= min_frozen:
        return masks, fraction
    capped = [i for i, m in enumerate(masks) if any(bool((m[k] & ~moving[k]).any()) for k in m)]
    widths = [len(unit_scores[i]) for i in capped]
    for share in sorted({j / width for width in widths for j in range(width) if j / width < fraction}, reverse=True):
        trial = [m for i, m in enumerate(masks) if i not in capped]
        if share > 0:
            trial += [unit_mask(net, unit_scores[i], share, i) for i in capped]
        if frozen_share(union(moving, *trial)) >= min_frozen:
            return trial, share
    raise ValueError(
        f"the weights that move without the units already leave {frozen_share(moving):.1%} frozen, under min_frozen {min_frozen}"
    )


def union(*masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Entry-wise OR of masks over the same parameters."""
    return {name: torch.stack([m[name] for m in masks]).any(0) for name in masks[0]}


#: what a reset adds to the run's seed: the seed itself would redraw the pretrained model's own initial weights (a fit
#: seeded with s builds its net from the generator seeded with s, as ``reinitialize`` would), which are also our
#: oracle's; a reset weight that never moved would then be bit-equal to its "fresh" value. A user's model never
#: shares its initialisation with our oracle, so a reset must not either.
RESET_SEED_OFFSET = 104_729


@torch.no_grad()
def reinitialize(net: nn.Module, masks: dict[str, Tensor], seed: int) -> None:
    """Set the masked entries of ``net``'s parameters to a fresh initialisation, in place; every other entry is untouched.

    The fresh values are what each layer's own ``reset_parameters`` draws under ``seed + RESET_SEED_OFFSET``: the same
    on every rank and every run, of the scale the layer was born with, and not the initialisation the run's seed gave.
    """
    fresh = copy.deepcopy(net).cpu()  # drawn on the CPU: the same numbers whatever device the net is on
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + RESET_SEED_OFFSET)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    own = dict(net.named_parameters())
    for name, value in fresh.named_parameters():
        if name in masks:
            mask = masks[name].to(own[name].device)
            own[name].copy_(torch.where(mask, value.to(own[name].device), own[name]))


def last_layers_mask(net: nn.Module, layers: int, argument: str = "layers") -> dict[str, Tensor]:
    """A mask of whole tensors that lets only the last ``layers`` parameter-owning layers move (LayerFreeze).

    A layer is a module that owns parameters (``Linear``, ``Conv2d``), counted back from the output.
    ``argument`` names the setting in the error a bad count raises.
    """
    owners = [m for _, m in parameter_owners(net)]
    if not 1 <= layers <= len(owners):
        raise UsageError(f"{argument} must lie in 1..{len(owners)} for {type(net).__name__}, got {layers}")
    moving = {id(p) for layer in owners[-layers:] for p in layer.parameters(recurse=False)}
    return {name: torch.full_like(p, id(p) in moving, dtype=torch.bool) for name, p in net.named_parameters()}


def mask_summary(masks: Mapping[str, Tensor]) -> dict[str, float]:
    """Fraction of weights kept per parameter tensor, and overall under ``"all"``."""
    summary = {name: m.float().mean().item() for name, m in masks.items()}
    summary["all"] = sum(m.sum().item() for m in masks.values()) / max(1, sum(m.numel() for m in masks.values()))
    return summary


def unchanged_share(before: Mapping[str, Tensor], after: Mapping[str, Tensor]) -> float:
    """The share of ``before``'s entries that ``after`` holds bit for bit: what an audit of a patch can skip.

    Compared as raw bits, so a weight that moved away and came back counts as unchanged only if it is the very same
    number (``-0.0`` is not ``0.0``). Both must hold the same tensors.
    """
    if set(before) != set(after):
        raise ValueError(f"the two state dicts hold different tensors: {sorted(set(before) ^ set(after))}")
    same = total = 0
    for name, value in before.items():
        other = after[name]
        if value.shape != other.shape:
            raise ValueError(f"{name}: shape {tuple(value.shape)} against {tuple(other.shape)}")
        same += int((_bits(value) == _bits(other)).sum())
        total += value.numel()
    return same / max(total, 1)


def _bits(value: Tensor) -> Tensor:
    value = value.detach().cpu().contiguous()
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[value.element_size()]
    return value.view(width) if value.is_floating_point() else value


class ExactFreeze:
    """Keeps every unselected weight bit-identical, whatever the optimizer does.

    Masking gradients alone is not enough (SalUn issue #32): weight decay, momentum and Adam's
    running moments still move weights whose gradient is zero. So gradients are masked at
    backward time (clipping and the optimizer see only selected weights), and after every
    optimizer step the unselected entries are copied back from a snapshot. A unit frozen whole
    (a row of a linear layer's weight) costs no weight gradient: while attached, its layer
    computes the gradient of its other rows alone (:func:`row_grad_linear`).
    """

    def __init__(self, net: nn.Module, masks: dict[str, Tensor]):
        params = dict(net.named_parameters())
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise ValueError(f"masks name parameters the network does not have: {unknown}")
        masks = {name: masks[name].to(p.device) if name in masks else torch.zeros_like(p, dtype=torch.bool) for name, p in params.items()}
        # a tensor that moves whole needs no hook and no copy: both would be work on every step for nothing
        self.entries = [(params[name], mask, params[name].detach().clone()) for name, mask in masks.items() if not mask.all()]
        # a linear layer with frozen units (whole rows of its weight) computes no weight gradient for them
        self.row_grads = [
            (module, mask.any(dim=1).nonzero().flatten())
            for prefix, module in net.named_modules()
            if isinstance(module, nn.Linear)
            and module.weight.requires_grad
            and not (mask := masks[f"{prefix}.weight" if prefix else "weight"]).any(dim=1).all()
        ]
        self.handles: list[RemovableHandle] = []

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        for param, mask, _ in self.entries:
            if param.requires_grad:
                self.handles.append(param.register_hook(lambda grad, mask=mask: grad * mask))
        self.handles.append(optimizer.register_step_post_hook(lambda *_: self.restore()))
        for module, rows in self.row_grads:
            module.forward = partial(row_grad_linear, module, rows)

    @torch.no_grad()
    def restore(self) -> None:
        for param, mask, frozen in self.entries:
            param.copy_(torch.where(mask, param, frozen))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for module, _ in self.row_grads:
            module.__dict__.pop("forward", None)


class _RowGradLinear(torch.autograd.Function):
    """``F.linear`` whose weight gradient is computed for ``rows`` alone and is zero elsewhere.

    The same numbers as autograd's for those rows (the same matmul over fewer rows: bit for bit on CPU, as the tests
    check); the frozen rows' share of the weight gradient, the larger part of a masked reset's backward pass, is never
    computed.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, rows: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight, rows)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, rows = ctx.saved_tensors
        grad_x = grad.matmul(weight) if ctx.needs_input_grad[0] else None
        grad_w = grad_b = None
        flat = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(weight).index_copy_(0, rows, flat.index_select(1, rows).t().mm(x.reshape(-1, x.shape[-1])))
        if ctx.needs_input_grad[2]:
            grad_b = flat.sum(0)
        return grad_x, grad_w, grad_b, None


def row_grad_linear(module: nn.Linear, rows: Tensor, x: Tensor) -> Tensor:
    """``module(x)`` with the weight gradient of ``rows`` alone (:class:`_RowGradLinear`).

    Under autocast the cast to the lower precision is made here, where autograd records it, as autocast would make it.
    """
    weight, bias, device = module.weight, module.bias, x.device.type
    if not torch.is_autocast_enabled(device):
        return _RowGradLinear.apply(x, weight, bias, rows)
    dtype = torch.get_autocast_dtype(device)
    with torch.autocast(device, enabled=False):
        return _RowGradLinear.apply(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), rows)
