"""Shared fixtures: real checkpoints made through the real CLI, small enough to train in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearning.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = ROOT / "tests" / "conf" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _run_from_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs name the bundled data as ``data``, relative to the project root, as a user runs them."""
    monkeypatch.chdir(ROOT)


def fit(config: str | Path, root: Path, *overrides: str):
    """``unlearning fit -c config -c tests/conf/tiny.yaml overrides...`` with logs under ``root``; returns the CLI."""
    return main(["fit", "-c", str(config), "-c", str(TINY), f"--trainer.default_root_dir={root}", *overrides])


def _train(tmp_path_factory: pytest.TempPathFactory, name: str, *overrides: str) -> Path:
    root = tmp_path_factory.mktemp(name)
    cli = fit(CONFIGS / "pretrain.yaml", root, "--trainer.limit_train_batches=50", "--model.init_args.log_figures=false", *overrides)
    return Path(cli.trainer.checkpoint_callback.last_model_path)


@pytest.fixture(scope="session")
def pretrained_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SeedMLP pretrained on all digits for 50 steps (forget class 9)."""
    return _train(tmp_path_factory, "pretrained")


@pytest.fixture(scope="session")
def oracle_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SeedMLP trained for 50 steps without digit 9."""
    return _train(tmp_path_factory, "oracle", "--model.init_args.stage=oracle")
