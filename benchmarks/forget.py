"""Class forgetting, every method beside the oracle: pretrain → oracle → each unlearning config, per seed, in one run.

    python benchmarks/forget.py [--seeds 0 1 2] [--methods selective_gradient ssd ...] [--root DIR] [--threads 1]

Every run is the project's own config through the CLI (``runs.fit_and_test``), scored on the test
set. Prints one row per network, method and seed (forget, retain and overall test accuracy,
``Trainer.fit`` seconds and their ratio to the same seed's oracle), then mean ± std per method, then
whether ``configs/unlearn/selective_gradient.yaml`` met its targets: forget accuracy ≤ 0.5%, retain
accuracy ≥ oracle − 0.5 pp, fit time ≤ 10% of the oracle's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from unlearning.runs import RunResult, fit_and_test

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CLASS_MODE = ("--data.init_args.forget_classes=[9]", "--data.init_args.forget_fraction=null")


@dataclass(frozen=True)
class Setup:
    """How one network is pretrained and how its oracle is retrained: a config and its overrides each."""

    pretrain: tuple[str | Path, ...]
    oracle: tuple[str | Path, ...]


#: network class path -> its setup; an unlearning config runs on the setup of the network it names
SETUPS = {
    "unlearning.models.SeedMLP": Setup((CONFIGS / "pretrain.yaml",), (CONFIGS / "oracle.yaml",)),
    "unlearning.models.LeNet": Setup((CONFIGS / "pretrain_cnn.yaml",), (CONFIGS / "pretrain_cnn.yaml", "--model.init_args.stage=oracle")),
    "unlearning.models.RetrainMLP": Setup(
        (CONFIGS / "retrain" / "pretrain.yaml", *CLASS_MODE),
        (CONFIGS / "retrain" / "pretrain.yaml", *CLASS_MODE, "--model.init_args.stage=oracle"),
    ),
}
TARGET_METHOD = "selective_gradient"


def net_class(config: Path) -> str:
    return yaml.safe_load(config.read_text())["model"]["init_args"]["net"]["class_path"]


def method_configs(methods: list[str] | None = None) -> dict[str, Path]:
    """``configs/unlearn/<method>.yaml`` by method name: all of them, or the ones named."""
    available = {path.stem: path for path in sorted((CONFIGS / "unlearn").glob("*.yaml"))}
    unknown = sorted(set(methods or []) - set(available))
    if unknown:
        raise SystemExit(f"no config for {unknown}; the methods are {sorted(available)}")
    return {name: path for name, path in available.items() if methods is None or name in methods}


def _row(net: str, method: str, seed: int, run: RunResult, oracle_seconds: float) -> dict:
    m = run.test_metrics
    return {
        "net": net.rsplit(".", 1)[-1], "method": method, "seed": seed,
        "forget_acc": m["test/forget_acc"], "retain_acc": m["test/retain_acc"], "acc": m["test/acc"],
        "fit_seconds": run.fit_seconds, "oracle_seconds": oracle_seconds, "ratio": run.fit_seconds / oracle_seconds,
    }  # fmt: skip


def run_forget_grid(seeds: list[int], root: str | Path, methods: list[str] | None = None) -> list[dict]:
    """For each network the chosen methods need and each seed: pretrain, retrain the oracle, run every method from the pretrained weights.

    Returns one dict per (network, method, seed), the pretrained model and the oracle included,
    with test accuracies, fit seconds and the ratio to that seed's oracle fit time.
    """
    configs = method_configs(methods)
    rows = []
    for net, setup in SETUPS.items():
        chosen = {name: path for name, path in configs.items() if net_class(path) == net}
        if not chosen:
            continue
        for seed in seeds:
            where = Path(root) / net.rsplit(".", 1)[-1] / f"seed{seed}"
            pretrained = fit_and_test(*setup.pretrain, root=where / "pretrain", seed=seed)
            oracle = fit_and_test(*setup.oracle, root=where / "oracle", seed=seed)
            rows += [_row(net, "pretrained", seed, pretrained, oracle.fit_seconds), _row(net, "oracle", seed, oracle, oracle.fit_seconds)]
            for name, config in chosen.items():
                run = fit_and_test(config, f"--model.init_args.weights={pretrained.checkpoint}", root=where / name, seed=seed)
                rows.append(_row(net, name, seed, run, oracle.fit_seconds))
    return rows


def target_checks(rows: list[dict]) -> list[str]:
    """One line per seed saying whether selective_gradient.yaml met each target, from the measured rows."""
    oracle = {r["seed"]: r for r in rows if r["net"] == "SeedMLP" and r["method"] == "oracle"}
    lines = []
    for r in rows:
        if r["net"] == "SeedMLP" and r["method"] == TARGET_METHOD:
            floor = oracle[r["seed"]]["retain_acc"] - 0.005
            checks = {
                f"forget {100 * r['forget_acc']:.2f}% <= 0.5%": r["forget_acc"] <= 0.005,
                f"retain {100 * r['retain_acc']:.2f}% >= oracle - 0.5 pp = {100 * floor:.2f}%": r["retain_acc"] >= floor,
                f"time {100 * r['ratio']:.1f}% of the oracle's <= 10%": r["ratio"] <= 0.10,
            }
            lines.append(f"seed {r['seed']}: " + "; ".join(f"{text} {'met' if ok else 'NOT MET'}" for text, ok in checks.items()))
    return lines


def _print(rows: list[dict]) -> None:
    header = f"{'net':<11} {'method':<31} {'seed':>4} {'forget%':>8} {'retain%':>8} {'test%':>7} {'fit s':>7} {'oracle s':>8} {'ratio':>6}"
    print(header, "-" * len(header), sep="\n")
    for r in rows:
        print(
            f"{r['net']:<11} {r['method']:<31} {r['seed']:>4} {100 * r['forget_acc']:8.2f} {100 * r['retain_acc']:8.2f} "
            f"{100 * r['acc']:7.2f} {r['fit_seconds']:7.2f} {r['oracle_seconds']:8.2f} {r['ratio']:6.3f}"
        )
    print(f"\nmean ± std over seeds\n{'net':<11} {'method':<31} {'forget%':>13} {'retain%':>13} {'test%':>13} {'fit s':>13} {'ratio':>13}")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["net"], r["method"]), []).append(r)
    for (net, method), group in groups.items():
        cells = []
        for key, scale, digits in (("forget_acc", 100, 2), ("retain_acc", 100, 2), ("acc", 100, 2), ("fit_seconds", 1, 2), ("ratio", 1, 3)):
            values = [scale * r[key] for r in group]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}")
        print(f"{net:<11} {method:<31} " + " ".join(f"{c:>13}" for c in cells))
    checks = target_checks(rows)
    if checks:
        print(f"\ntargets for configs/unlearn/{TARGET_METHOD}.yaml", *checks, sep="\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", help="config names in configs/unlearn (default: all)")
    parser.add_argument("--root", type=Path, help="where runs write logs and checkpoints (default: a temporary folder)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads for every run; 1 by default because on a shared CPU the threads of small "
        "models spin against other processes and fit times swing by an order of magnitude",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        _print(run_forget_grid(args.seeds, args.root or scratch, args.methods))
