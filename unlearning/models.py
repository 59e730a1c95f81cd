"""The networks. Each maps a normalised ``(N, 1, 28, 28)`` batch to ``(N, 10)`` logits.

Every network is ``head(features(x))`` with ``head`` its last ``nn.Linear``: the evaluation
suite probes ``features`` and the head-masking baseline edits ``head``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn


class Classifier(nn.Module):
    """``features`` (everything up to the penultimate activations) followed by a linear ``head``."""

    features: nn.Module
    head: nn.Linear

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        if i > 0 and dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class SeedMLP(Classifier):
    """The original notebook's MLP: 784-50-40-30-20-10 with ReLU."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = _mlp([784, 50, 40, 30, 20])
        self.head = nn.Linear(20, num_classes)


class RetrainMLP(Classifier):
    """The retrain notebook's MLP: 784-256-128-64-10 with ReLU and dropout 0.3 after the first two layers."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.features = _mlp([784, 256, 128, 64], dropout)
        self.head = nn.Linear(64, num_classes)


class LeNet(Classifier):
    """A small LeNet-style CNN: two 5x5 conv blocks and a 128-unit layer (about 99% in a few epochs)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 5 * 5, 128), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(128, num_classes)


class LogisticRegression(Classifier):
    """Multinomial logistic regression 784 -> 10, the original notebook's first experiment; its features are the pixels."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Flatten()
        self.head = nn.Linear(784, num_classes)


#: modules whose outputs are a network's hidden layers: the activation after each layer
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid)


def hidden_layers(net: nn.Module) -> list[str]:
    """Names of the modules whose outputs are ``net``'s hidden layers, input to output.

    Every activation inside ``net.features``; a network with none (logistic regression, whose
    features are the pixels) has one "layer", ``features`` itself.
    """
    names = [f"features.{name}" for name, module in net.features.named_modules() if isinstance(module, ACTIVATIONS)]
    return names or ["features"]


@contextlib.contextmanager
def evaluating(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode while open, then back in the mode it was in.

    A ranking or a measurement describes the model itself, not a dropout-thinned copy of it (and would otherwise
    depend on the dropout draws).
    """
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


@contextlib.contextmanager
def capturing(net: nn.Module, names: list[str], reduce: Callable[[Tensor], Tensor]) -> Iterator[dict[str, list[Tensor]]]:
    """While open, every forward pass of ``net`` appends the named hidden layers' outputs (:func:`hidden_layers`),
    passed through ``reduce`` to ``(N, D)`` and detached, to the lists it yields, one per name."""
    modules = dict(net.named_modules())
    captured: dict[str, list[Tensor]] = {name: [] for name in names}

    def keep(name: str) -> Callable[..., None]:
        return lambda _module, _inputs, output: captured[name].append(reduce(output.detach()))

    handles = [modules[name].register_forward_hook(keep(name)) for name in names]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def hidden_outputs(
    net: nn.Module, x: Tensor, names: list[str], reduce: Callable[[Tensor], Tensor], batch_size: int = 4096
) -> dict[str, Tensor]:
    """The outputs of the named hidden layers (:func:`hidden_layers`) for ``x``, each batch's passed through ``reduce``
    to ``(N, D)``; ``x`` goes through ``net.features`` alone, in batches of ``batch_size``."""
    with capturing(net, names, reduce) as captured:
        for chunk in x.split(batch_size):
            net.features(chunk)
    return {name: torch.cat(parts) for name, parts in captured.items()}
