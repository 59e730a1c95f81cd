"""Class replacement, 6 → 3 on SeedMLP: pretrain → oracle → every configs/replace method, per seed, in one run.

    python benchmarks/replace.py [--seeds 0 1 2] [--methods selective_gradient finetune ...] [--root DIR] [--threads 1]

Every run is the project's own config through the CLI (``runs.fit_and_test``), scored on the test
set. Prints one row per method and seed (old-class, new-class and retain accuracy, the share of old
images now called the new class, ``Trainer.fit`` seconds and their ratio to the same seed's oracle),
then mean ± std per method, then whether ``configs/replace/selective_gradient.yaml`` met its targets:
new ≥ oracle − 2 pp, old ≤ 0.5%, retain ≥ oracle − 1 pp, fit time ≤ 20% of the oracle's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from unlearning.runs import RunResult, fit_and_test

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "replace"
STAGES = ("pretrain", "oracle")
TARGET_METHOD = "selective_gradient"
#: (row key, header, scale): the columns of both tables
COLUMNS = [("old_acc", "old%", 100), ("new_acc", "new%", 100), ("retain_acc", "retain%", 100), ("old_as_new", "old→new%", 100),
           ("fit_seconds", "fit s", 1), ("ratio", "× oracle", 1)]  # fmt: skip


def method_configs(methods: list[str] | None = None) -> dict[str, Path]:
    """``configs/replace/<method>.yaml`` by method name: every config but pretrain and oracle, or the ones named."""
    available = {path.stem: path for path in sorted(CONFIGS.glob("*.yaml")) if path.stem not in STAGES}
    unknown = sorted(set(methods or []) - set(available))
    if unknown:
        raise SystemExit(f"no config for {unknown}; the methods are {sorted(available)}")
    return {name: path for name, path in available.items() if methods is None or name in methods}


def _row(method: str, seed: int, run: RunResult, oracle_seconds: float) -> dict:
    m = run.test_metrics
    return {
        "method": method, "seed": seed, "old_acc": m["test/forget_acc"], "new_acc": m["test/new_acc"], "retain_acc": m["test/retain_acc"],
        "old_as_new": m.get("test/old_as_new"), "fit_seconds": run.fit_seconds, "oracle_seconds": oracle_seconds,
        "ratio": run.fit_seconds / oracle_seconds,
    }  # fmt: skip


def run_replace_grid(seeds: list[int], root: str | Path, methods: list[str] | None = None) -> list[dict]:
    """For each seed: pretrain without the new class, retrain the oracle without the old one, run every method from the pretrained weights.

    Returns one dict per (method, seed), the pretrained model and the oracle included, with test
    accuracies, fit seconds and the ratio to that seed's oracle fit time.
    """
    configs = method_configs(methods)
    rows = []
    for seed in seeds:
        where = Path(root) / f"seed{seed}"
        pretrained = fit_and_test(CONFIGS / "pretrain.yaml", root=where / "pretrain", seed=seed)
        oracle = fit_and_test(CONFIGS / "oracle.yaml", root=where / "oracle", seed=seed)
        rows += [_row("pretrained", seed, pretrained, oracle.fit_seconds), _row("oracle", seed, oracle, oracle.fit_seconds)]
        for name, config in configs.items():
            run = fit_and_test(config, f"--model.init_args.weights={pretrained.checkpoint}", root=where / name, seed=seed)
            rows.append(_row(name, seed, run, oracle.fit_seconds))
    return rows


def target_checks(rows: list[dict]) -> list[str]:
    """One line per seed saying whether selective_gradient.yaml met each target, from the measured rows."""
    oracle = {r["seed"]: r for r in rows if r["method"] == "oracle"}
    lines = []
    for r in rows:
        if r["method"] == TARGET_METHOD:
            o = oracle[r["seed"]]
            new_floor, retain_floor = o["new_acc"] - 0.02, o["retain_acc"] - 0.01
            checks = {
                f"new {100 * r['new_acc']:.2f}% >= oracle - 2 pp = {100 * new_floor:.2f}%": r["new_acc"] >= new_floor,
                f"old {100 * r['old_acc']:.2f}% <= 0.5%": r["old_acc"] <= 0.005,
                f"retain {100 * r['retain_acc']:.2f}% >= oracle - 1 pp = {100 * retain_floor:.2f}%": r["retain_acc"] >= retain_floor,
                f"time {100 * r['ratio']:.1f}% of the oracle's <= 20%": r["ratio"] <= 0.20,
            }
            lines.append(f"seed {r['seed']}: " + "; ".join(f"{text} {'met' if ok else 'NOT MET'}" for text, ok in checks.items()))
    return lines


def _cell(values: list[float | None], scale: float) -> str:
    present = [scale * v for v in values if v is not None]
    if not present:
        return "–"
    spread = statistics.stdev(present) if len(present) > 1 else 0.0
    return f"{statistics.mean(present):.2f} ± {spread:.2f}"


def report(rows: list[dict]) -> str:
    """The per-run table, the mean ± std table and the target checks, as printed."""
    width = max(len(r["method"]) for r in rows)
    header = f"{'method':<{width}} {'seed':>4} " + " ".join(f"{h:>9}" for _, h, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = ["–" if r[k] is None else f"{s * r[k]:.2f}" for k, _, s in COLUMNS]
        lines.append(f"{r['method']:<{width}} {r['seed']:>4} " + " ".join(f"{c:>9}" for c in cells))
    lines += ["", "mean ± std over seeds", f"{'method':<{width}} " + " ".join(f"{h:>15}" for _, h, _ in COLUMNS)]
    for method in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == method]
        lines.append(f"{method:<{width}} " + " ".join(f"{_cell([r[k] for r in group], s):>15}" for k, _, s in COLUMNS))
    checks = target_checks(rows)
    if checks:
        lines += ["", f"targets for configs/replace/{TARGET_METHOD}.yaml", *checks]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", help="config names in configs/replace (default: all)")
    parser.add_argument("--root", type=Path, help="where runs write logs and checkpoints (default: a temporary folder)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads for every run; 1 by default because on a shared CPU the threads of small "
        "models spin against other processes and fit times swing by an order of magnitude",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        print(report(run_replace_grid(args.seeds, args.root or scratch, args.methods)))
