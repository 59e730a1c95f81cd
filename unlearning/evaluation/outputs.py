"""What a network says about inputs, in labels: a replacement checkpoint's units may stand for other labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unlearning.models import hidden_layers, hidden_outputs


@torch.no_grad()
def net_logits(net: nn.Module, x: Tensor, batch_size: int = 4096) -> Tensor:
    """``net``'s logits for ``x`` in batches, without gradients."""
    return torch.cat([net(chunk) for chunk in x.split(batch_size)])


#: a convolutional map is average-pooled to this many cells per channel before probing, so a linear
#: probe on it stays a few hundred inputs (LeNet's first map would otherwise be 12 544)
POOLED_CELLS = (4, 4)


def layer_features(net: nn.Module, x: Tensor, batch_size: int = 4096) -> dict[str, Tensor]:
    """Every hidden layer's output for ``x``, flattened to ``(N, D)`` (conv maps pooled to :data:`POOLED_CELLS` first)."""

    def flatten(output: Tensor) -> Tensor:
        return (nn.functional.adaptive_avg_pool2d(output, POOLED_CELLS) if output.dim() == 4 else output).flatten(1)

    return hidden_outputs(net, x, hidden_layers(net), flatten, batch_size)


def predicted_labels(logits: Tensor, unit_labels: Tensor) -> Tensor:
    """The label of the winning unit, as the training tasks predict."""
    return unit_labels[logits.argmax(1)]


def label_log_probabilities(logits: Tensor, unit_labels: Tensor) -> Tensor:
    """Log-softmax over units, log-sum-exp'd into the labels they stand for (``-inf`` for a label no unit stands for).

    Computed in log space so that a unit pushed to a huge negative logit still has a gradient.
    """
    log_probs = logits.log_softmax(1)
    columns = [log_probs[:, unit_labels == label].logsumexp(1) for label in range(logits.shape[1])]
    return torch.stack(columns, 1)


def units_for(labels: Sequence[int], unit_labels: Tensor) -> list[int]:
    """The output units that stand for any of ``labels``; empty when no unit does (e.g. a reused old class)."""
    wanted = torch.as_tensor(list(labels), device=unit_labels.device)
    return torch.isin(unit_labels, wanted).nonzero().flatten().tolist()
