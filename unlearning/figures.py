"""Pictures for TensorBoard: confusion matrices, per-class bars and first-layer weights as images."""

from __future__ import annotations

import functools
import io
import math

import matplotlib
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor, nn
from torchvision.utils import make_grid

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
_GLYPHS_2X = _GLYPH_PIXELS.repeat_interleave(2, 1).repeat_interleave(2, 2).numpy()  # drawn at twice the size: 10x6 pixels


def _draw_number(image: np.ndarray, value: int, top: int, left: int, colour: int) -> None:
    """Write ``value`` into an ``(H, W, 3)`` uint8 image, its top-left corner at (top, left)."""
    for k, digit in enumerate(str(value)):
        image[top : top + 10, left + 8 * k : left + 8 * k + 6][_GLYPHS_2X[int(digit)]] = colour


@functools.cache
def _frame(height: int, width: int, cell: tuple[int, int], title: str) -> np.ndarray:
    """The words around a confusion grid of this size (title, axis names), drawn once and reused: text costs milliseconds."""
    top, left = 38, 22
    font = PIL.ImageFont.load_default(size=13)
    canvas = PIL.Image.new("RGB", (width + left, height + top), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    draw.text((left + 4, 3), title, fill="black", font=font)
    draw.text((left + cell[1] + 4, top - 16), "predicted class ->", fill=(90, 90, 90), font=font)
    label = PIL.Image.new("RGB", (height - cell[0], left - 4), "white")
    PIL.ImageDraw.Draw(label).text(((height - cell[0]) // 2 - 40, 1), "<- true class", fill=(90, 90, 90), font=font)
    canvas.paste(label.rotate(90, expand=True), (2, top + cell[0]))
    return np.asarray(canvas)


def confusion_image(confmat: Tensor, title: str = "confusion matrix", cell: tuple[int, int] = (22, 40)) -> Tensor:
    """The confusion matrix as a ``(3, H, W)`` uint8 image: a title, the true class down the rows, the predicted class
    along the columns, the counts drawn in, row-normalised blue.

    Drawn directly into an array because a matplotlib figure costs ~0.25 s, which at every validation
    end would be a large share of a small model's training time (this takes about a millisecond).
    """
    grid = _confusion_grid(confmat, cell)
    image = _frame(*grid.shape[:2], cell, title).copy()
    image[image.shape[0] - grid.shape[0] :, image.shape[1] - grid.shape[1] :] = grid
    return torch.from_numpy(image).permute(2, 0, 1)


def _confusion_grid(confmat: Tensor, cell: tuple[int, int]) -> np.ndarray:
    """The matrix itself: ``(H, W, 3)`` uint8 cells with their counts, class indices along the top and down the left."""
    counts = confmat.detach().cpu().long().numpy()
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n, (h, w) = counts.shape[0], cell
    image = np.full(((n + 1) * h, (n + 1) * w, 3), 255, dtype=np.uint8)
    colours = np.stack([1 - 0.9 * rates, 1 - 0.6 * rates, np.ones_like(rates)], axis=-1)
    cells = image[h:, w:]
    cells[:] = np.round(255 * colours).astype(np.uint8).repeat(h, 0).repeat(w, 1)
    cells[h - 1 :: h], cells[:, w - 1 :: w] = 255, 255  # white lines between the cells
    for i in range(n):
        _draw_number(image, i, (i + 1) * h + 6, 14, 0)  # true label down the left
        _draw_number(image, i, 6, (i + 1) * w + 14, 0)  # predicted label along the top
        for j in np.flatnonzero(counts[i]):
            _draw_number(image, int(counts[i, j]), (i + 1) * h + 6, (j + 1) * w + 3, 255 if rates[i, j] > 0.5 else 0)
    return image


def png_summary(tag: str, image: Tensor) -> Summary:
    """A TensorBoard image summary of a ``(C, H, W)`` image (uint8, or float in [0, 1]).

    Encoded here at zlib level 1 rather than by ``SummaryWriter.add_image`` at level 6: weight
    pictures are noise to a compressor, and level 6 spends 4x the time for a file 25% smaller.
    """
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = image.cpu().permute(1, 2, 0).numpy()
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    height, width = image.shape[1:]
    encoded = Summary.Image(height=height, width=width, colorspace=image.shape[0], encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=encoded)])


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
    """``(N, 1, H, W)`` images, each scaled to [0, 1] on its own, as one grey ``(1, H', W')`` grid image."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    images = (images - low) / (high - low).clamp(min=1e-12)
    return _grey_grid(images, pad_value=1.0)


def mask_images(mask: Tensor) -> Tensor | None:
    """A saliency mask of a Linear(784, k) weight as a grid of 28x28 pictures: white where a weight may move."""
    if mask.dim() != 2 or mask.shape[1] != 28 * 28:
        return None
    return _grey_grid(mask.float().cpu().view(-1, 1, 28, 28), pad_value=0.5)


def _grey_grid(images: Tensor, pad_value: float) -> Tensor:
    """A near-square grid of one-channel images, kept one channel (``make_grid`` copies it to three, a 3x larger PNG)."""
    return make_grid(images, nrow=math.ceil(math.sqrt(len(images))), padding=1, pad_value=pad_value)[:1]


def class_bars(values: dict[str, Tensor | float], title: str = "") -> Figure:
    """Per-class accuracy bars, one colour per series (e.g. before and after)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.8 / max(len(values), 1)
    for k, (name, accs) in enumerate(values.items()):
        # numpy, not tensors: matplotlib's unit handling trips over torch's array protocol
        accs = torch.as_tensor(accs).float().cpu().numpy()
        ax.bar(np.arange(len(accs)) + k * width, accs * 100, width=width, label=name)
    ax.set(xticks=range(10), xlabel="class", ylabel="accuracy (%)", ylim=(0, 100), title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
