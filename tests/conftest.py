"""Shared fixtures: real checkpoints made through the real CLI, small enough to train in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from unlearning.checkpoints import last_checkpoint
from unlearning.cli import main
from unlearning.evaluation.data import load_eval_data

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = ROOT / "tests" / "conf" / "tiny.yaml"
#: 16-mixed with a GradScaler on the CPU (Lightning itself maps 16-mixed to bf16-mixed there): a GPU's AMP path, simulated
FP16_SCALER = ["--trainer.plugins=lightning.pytorch.plugins.precision.MixedPrecision", "--trainer.plugins.init_args.precision=16-mixed",
               "--trainer.plugins.init_args.device=cpu"]  # fmt: skip


@pytest.fixture(autouse=True)
def _run_from_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs name the bundled data as ``data``, relative to the project root, as a user runs them."""
    monkeypatch.chdir(ROOT)


def fit(config: str | Path, root: Path, *overrides: str):
    """``unlearning fit -c config -c tests/conf/tiny.yaml overrides...`` with logs under ``root``; returns the CLI."""
    return main(["fit", "-c", str(config), "-c", str(TINY), f"--trainer.default_root_dir={root}", *overrides])


def train_checkpoint(tmp_path_factory: pytest.TempPathFactory, name: str, *overrides: str, batches: str = "50") -> Path:
    """``last.ckpt`` of the pretrain recipe on ``batches`` training batches per epoch (tiny.yaml: one epoch)."""
    cli = fit(
        CONFIGS / "pretrain.yaml",
        tmp_path_factory.mktemp(name),
        f"--trainer.limit_train_batches={batches}",
        "--model.init_args.log_figures=false",
        *overrides,
    )
    return last_checkpoint(cli.trainer)


class StreamRecorder(Callback):
    """What the task is fed: per training stream, the labels seen and the batch sizes."""

    def __init__(self):
        self.labels: dict[str, set[int]] = {}
        self.sizes: dict[str, set[int]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # the batch the step consumed
        for stream, (_, y) in batch.items():
            self.labels.setdefault(stream, set()).update(y.tolist())
            self.sizes.setdefault(stream, set()).add(len(y))


def fit_recording(cli) -> StreamRecorder:
    """Fit a CLI built with ``run=False`` and return what each stream carried."""
    recorder = StreamRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return recorder


def changed(before: dict, after: dict) -> set[str]:
    """Names of the state-dict entries that differ."""
    return {name for name, value in after.items() if not torch.equal(value, before[name])}


@pytest.fixture(scope="session")
def pretrained_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SeedMLP pretrained on all digits for 50 steps (forget class 9)."""
    return train_checkpoint(tmp_path_factory, "pretrained")


@pytest.fixture(scope="session")
def oracle_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SeedMLP trained for 50 steps without digit 9."""
    return train_checkpoint(tmp_path_factory, "oracle", "--model.init_args.stage=oracle")


# -- checkpoints for the evidence suite -----------------------------------------------------------
@pytest.fixture(scope="session")
def evaluation_pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full epoch: shorter runs leave features that barely know any digit, so nothing could be hidden."""
    return train_checkpoint(tmp_path_factory, "evaluation_pretrained", batches="1.0")


@pytest.fixture(scope="session")
def evaluation_oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_checkpoint(tmp_path_factory, "evaluation_oracle", "--model.init_args.stage=oracle", batches="1.0")


def edited(source: Path, target: Path, bias_9: float | None = None, **hparams) -> Path:
    """A copy of a checkpoint with the class-9 head bias and some hyperparameters replaced."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    if bias_9 is not None:
        checkpoint["state_dict"]["net.head.bias"][9] = bias_9
    checkpoint["hyper_parameters"].update(hparams)
    torch.save(checkpoint, target)
    return target


@pytest.fixture(scope="session")
def evaluation_head_mask(evaluation_pretrained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The notebook's hiding trick: the pretrained net with digit 9's logit pushed to -1e4 through the head's bias."""
    return edited(evaluation_pretrained, tmp_path_factory.mktemp("head_mask") / "head_mask.ckpt", bias_9=-1e4, stage="head_mask")


@pytest.fixture(scope="session")
def mnist():
    """MNIST split for forget class 9, seed 0, as the evaluation suite sees it."""
    return load_eval_data("data", [9], [], None, 5000, 0)
