"""Pictures for TensorBoard: confusion matrices, per-class bars and first-layer weights as images."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torchvision.utils import make_grid


def confusion_figure(confmat: Tensor, title: str = "") -> Figure:
    """Row-normalised confusion matrix with the counts written in, so where a forgotten class now goes is visible."""
    counts = confmat.detach().cpu().long()
    rates = counts.float() / counts.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    n = counts.shape[0]
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=6, color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


# 3x5 bitmaps of the digits 0-9, for drawing numbers into images without a text renderer
_GLYPHS = torch.tensor(
    [
        [0b111, 0b101, 0b101, 0b101, 0b111], [0b010, 0b110, 0b010, 0b010, 0b111], [0b111, 0b001, 0b111, 0b100, 0b111],
        [0b111, 0b001, 0b111, 0b001, 0b111], [0b101, 0b101, 0b111, 0b001, 0b001], [0b111, 0b100, 0b111, 0b001, 0b111],
        [0b111, 0b100, 0b111, 0b101, 0b111], [0b111, 0b001, 0b001, 0b001, 0b001], [0b111, 0b101, 0b111, 0b101, 0b111],
        [0b111, 0b101, 0b111, 0b001, 0b111],
    ]
)  # fmt: skip
_GLYPH_PIXELS = ((_GLYPHS.unsqueeze(-1) >> torch.tensor([2, 1, 0])) & 1).bool()  # (10 digits, 5 rows, 3 columns)


def _draw_number(image: Tensor, value: int, top: int, left: int, colour: Tensor, scale: int = 2) -> None:
    for k, digit in enumerate(str(value)):
        glyph = _GLYPH_PIXELS[int(digit)].repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        x0 = left + k * 4 * scale
        region = image[:, top : top + 5 * scale, x0 : x0 + 3 * scale]
        region[:, glyph] = colour.unsqueeze(1)


def confusion_image(confmat: Tensor, cell: tuple[int, int] = (22, 40)) -> Tensor:
    """The confusion matrix as a ``(3, H, W)`` image with the counts drawn in: row-normalised blue, class indices on the edges.

    Drawn directly into a tensor because a matplotlib figure costs ~0.25 s, which at every
    validation end would be a large share of a small model's training time.
    """
    counts = confmat.detach().cpu().long()
    rates = counts.float() / counts.sum(1, keepdim=True).clamp(min=1)
    n, (h, w) = counts.shape[0], cell
    image = torch.ones(3, (n + 1) * h, (n + 1) * w)
    white, black = torch.ones(3), torch.zeros(3)
    for i in range(n):
        _draw_number(image, i, (i + 1) * h + 6, 14, black)  # true label down the left
        _draw_number(image, i, 6, (i + 1) * w + 14, black)  # predicted label along the top
        for j in range(n):
            rate = float(rates[i, j])
            top, left = (i + 1) * h, (j + 1) * w
            image[:, top : top + h - 1, left : left + w - 1] = torch.tensor([1 - 0.9 * rate, 1 - 0.6 * rate, 1.0]).view(3, 1, 1)
            if counts[i, j]:
                _draw_number(image, int(counts[i, j]), top + 6, left + 3, white if rate > 0.5 else black)
    return image


def first_layer_weights(net: nn.Module) -> Tensor | None:
    """The first layer's weights as one image grid: a 28x28 picture per unit of a Linear(784, k), a kernel per conv filter."""
    layer = next((m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if layer is None:
        return None
    weight = layer.weight.detach().float().cpu()
    if isinstance(layer, nn.Linear):
        if layer.in_features != 28 * 28:
            return None
        weight = weight.view(-1, 1, 28, 28)
    else:
        weight = weight[:, :1]
    return tile(weight)


def tile(images: Tensor) -> Tensor:
    """``(N, 1, H, W)`` images, each scaled to [0, 1] on its own, as one grid image."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    images = (images - low) / (high - low).clamp(min=1e-12)
    return make_grid(images, nrow=math.ceil(math.sqrt(len(images))), padding=1, pad_value=1.0)


def mask_images(mask: Tensor) -> Tensor | None:
    """A saliency mask of a Linear(784, k) weight as a grid of 28x28 pictures: white where a weight may move."""
    if mask.dim() != 2 or mask.shape[1] != 28 * 28:
        return None
    return make_grid(mask.float().cpu().view(-1, 1, 28, 28), nrow=math.ceil(math.sqrt(len(mask))), padding=1, pad_value=0.5)


def class_bars(values: dict[str, Tensor | float], title: str = "") -> Figure:
    """Per-class accuracy bars, one colour per series (e.g. before and after)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.8 / max(len(values), 1)
    for k, (name, accs) in enumerate(values.items()):
        accs = torch.as_tensor(accs).float().cpu()
        ax.bar(torch.arange(len(accs)) + k * width, accs * 100, width=width, label=name)
    ax.set(xticks=range(10), xlabel="class", ylabel="accuracy (%)", ylim=(0, 100), title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
