"""Running configs programmatically, the way the benchmarks and tests do: the same CLI a user runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from unlearning.checkpoints import last_checkpoint
from unlearning.cli import main


@dataclass
class RunResult:
    """What one ``fit`` + ``test`` of a config produced."""

    checkpoint: Path
    log_dir: Path
    fit_seconds: float
    test_metrics: dict[str, float] = field(default_factory=dict)


def fit_and_test(
    config: str | Path, *overrides: str, root: str | Path, seed: int = 0, test: bool = True, ckpt_path: str | Path | None = None
) -> RunResult:
    """``unlearning fit -c config overrides...`` under ``root``, then ``test`` on the last checkpoint.

    ``fit_seconds`` times ``Trainer.fit`` alone (not imports, data loading or the test pass), which is
    what the cost ratios compare. ``ckpt_path`` resumes an interrupted run.
    """
    args = [
        "-c",
        str(config),
        f"--seed_everything={seed}",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
        *overrides,
    ]
    cli = main(args, run=False)
    cli.datamodule.setup("fit")  # reading MNIST into memory is data loading, not fitting
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start
    checkpoint = last_checkpoint(cli.trainer)
    metrics: dict[str, float] = {}
    if test:
        (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[:1]
        metrics = {k: float(v) for k, v in results.items()}
    return RunResult(checkpoint, Path(cli.trainer.log_dir), fit_seconds, metrics)
