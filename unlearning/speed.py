"""Lightning ``fit`` against a plain torch loop doing the same work, side by side in one process.

Both train SeedMLP with Adam 1e-3 on the same normalised tensors (retain ∪ forget, batch 200,
5 epochs), validate on the same held-out split after every epoch and save the weights each epoch.
The Lightning run is the project's own ``configs/pretrain.yaml`` through the CLI, progress bar on,
with its per-class metrics, confusion-matrix figures and TensorBoard logging. Prints both wall
times and their ratio (target: ≤ 1.3 on a 2-core CPU). ``unlearning bench`` runs it too.

    python -m unlearning.speed [--epochs 5] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from unlearning.cli import main
from unlearning.data.mnist import MNISTDataModule
from unlearning.models import SeedMLP

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SpeedResult:
    """Wall seconds of each side-by-side pair (a Lightning run and the plain loop, back to back).

    This VM's speed drifts by tens of percent within a minute, so the ratio is taken within each
    pair and the median over pairs is the headline; the ratio of each side's best run is printed
    beside it.
    """

    plain_seconds: list[float]
    lightning_seconds: list[float]

    @property
    def pair_ratios(self) -> list[float]:
        return [lightning / plain for lightning, plain in zip(self.lightning_seconds, self.plain_seconds)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.pair_ratios)

    def report(self) -> str:
        def runs(values: list[float]) -> str:
            return ", ".join(f"{v:.2f}" for v in values)

        best = min(self.lightning_seconds) / min(self.plain_seconds)
        return (
            f"plain torch loop : {min(self.plain_seconds):6.2f} s best  (runs: {runs(self.plain_seconds)})\n"
            f"lightning fit    : {min(self.lightning_seconds):6.2f} s best  (runs: {runs(self.lightning_seconds)})\n"
            f"ratio per pair   : {runs(self.pair_ratios)}  (best against best: {best:.2f})\n"
            f"ratio            : {self.ratio:6.2f}  median of the pairs (target ≤ 1.30)"
        )


def plain_torch(dm: MNISTDataModule, epochs: int, out: Path) -> float:
    """The same training as configs/pretrain.yaml, hand-written: the floor Lightning is measured against."""
    x, y = dm.split_tensors("retain", "forget")
    val_x, val_y = dm.split_tensors("val")
    torch.manual_seed(0)
    net = SeedMLP()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(order), dm.batch_size):
            idx = order[i : i + dm.batch_size]
            loss = F.cross_entropy(net(x.index_select(0, idx)), y.index_select(0, idx))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            preds = torch.cat([net(val_x[i : i + dm.eval_batch_size]).argmax(1) for i in range(0, len(val_y), dm.eval_batch_size)])
            per_class = torch.stack([(preds[val_y == c] == c).float().mean() for c in range(10)])
        torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict(), "per_class": per_class}, out / "plain.pt")
    return time.perf_counter() - start


def lightning_fit(epochs: int, out: Path) -> tuple[float, MNISTDataModule]:
    cli = main(
        ["-c", str(ROOT / "configs" / "pretrain.yaml"), f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={out}"], run=False
    )
    cli.datamodule.setup()
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return time.perf_counter() - start, cli.datamodule


def compare(epochs: int = 5, repeats: int = 5) -> SpeedResult:
    """Run ``repeats`` pairs in this process, each the Lightning run and the plain loop back to back,
    in alternating order so that a drift in the machine's speed favours neither."""
    plain, lightning = [], []
    with tempfile.TemporaryDirectory() as tmp:
        dm = lightning_fit(1, Path(tmp))[1]  # warm-up: first-call costs (imports, allocator) belong to neither side
        for pair in range(repeats):
            if pair % 2:
                plain.append(plain_torch(dm, epochs, Path(tmp)))
            seconds, dm = lightning_fit(epochs, Path(tmp))
            lightning.append(seconds)
            if not pair % 2:
                plain.append(plain_torch(dm, epochs, Path(tmp)))
    return SpeedResult(plain, lightning)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="side-by-side pairs of runs; the median of their ratios is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both; 1 keeps timings stable on a shared CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(compare(args.epochs, args.repeats).report())
