"""An evaluation from checkpoint files to numbers: load, cross-check, run every check once per network, compare with the oracle.

``judge`` serves the command (one checkpoint) and ``evaluate_against`` the benchmark grid (every
method of a seed against that seed's oracle and pretrained model, each network evaluated once).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from unlearning.data.splits import recorded_split_seed
from unlearning.evaluation.data import EvalData, Holdout, load_eval_data
from unlearning.evaluation.inputs import (
    check_architectures,
    check_references,
    load,
    resolve_classes,
    resolve_device,
    resolve_setting,
    torch_threads,
)
from unlearning.evaluation.probe import bootstrap_weights, misranked_ratio_interval, resampled_aucs
from unlearning.evaluation.relearn import mean_steps
from unlearning.evaluation.suite import Budget, NetEvaluation, evaluate_nets, probe_held_out
from unlearning.evaluation.verdict import (
    Thresholds,
    most_telling_layer,
    oracle_gap,
    probe_ratios,
    quant_keys,
    reach_keys,
    relearning,
    targets_text,
    verdict,
)


def judge(
    paths: Mapping[str, str | Path],
    oracle: str,
    pretrained: str,
    forget_classes: Sequence[int] | None = None,
    new_classes: Sequence[int] | None = None,
    seed: int | None = None,
    val_size: int | None = None,
    data_dir: str | Path = "data",
    device: str = "auto",
    budget: Budget | None = None,
    thresholds: Thresholds | None = None,
    holdout: Holdout = "test",
    allow_modules: Sequence[str] = (),
) -> tuple[dict[str, Any], dict[str, NetEvaluation]]:
    """Every check on every named checkpoint, its gap to the ``oracle`` entry and its verdict.

    The classes, split seed and validation size are what the first checkpoint that is neither
    the oracle nor the pretrained one records (the oracle's when there is none); given values
    must agree; that checkpoint is the report's ``subject``. ``holdout`` picks the held-out samples
    (see :func:`~.data.load_eval_data`). Network classes come from the project's models or ``allow_modules``
    (modules the user trusts; a checkpoint naming any other is refused). ``budget`` and ``thresholds`` default
    to :class:`Budget` and :class:`Thresholds`. Returns the report (plain JSON-ready values) and the
    per-network evaluations.
    """
    budget, thresholds = budget or Budget(), thresholds or Thresholds()
    torch_device = resolve_device(device)
    loaded = {name: load(name, path, allow_modules) for name, path in paths.items()}
    subject = next((name for name in paths if name not in (oracle, pretrained)), oracle)
    check_architectures(loaded, subject)
    classes = resolve_classes(loaded[subject], subject, forget_classes, new_classes)
    check_references(loaded, oracle, pretrained, classes)
    recorded = loaded[subject].datamodule_hparams
    split = {
        "seed": resolve_setting("--seed", seed, recorded_split_seed(recorded), 0),
        "val_size": resolve_setting("--val-size", val_size, recorded.get("val_size"), 5000),
        "holdout": holdout,
    }
    data = load_eval_data(data_dir, classes["forget_classes"], classes["new_classes"], classes["forget_fraction"], **split).to(torch_device)
    nets = {name: (item.net.to(torch_device), item.unit_labels.to(torch_device)) for name, item in loaded.items()}
    evaluations = evaluate_nets(nets, data, budget, pretrained, oracle)
    metrics = {name: evaluation.metrics for name, evaluation in evaluations.items()}
    probe = _probe_ratios(evaluations, oracle, data, budget)
    report = {
        "subject": subject,
        "checkpoints": {name: str(Path(path).resolve()) for name, path in paths.items()},
        "classes": classes,
        "split": split,
        "budget": asdict(budget),
        "thresholds": asdict(thresholds),
        "metrics": metrics,
        "not_applicable": {name: evaluation.not_applicable for name, evaluation in evaluations.items()},
        "gap": {name: oracle_gap(metrics[name], metrics[oracle]) for name in paths},
        "probe_ratio": probe,
        "relearn": {name: relearn_steps_table(metrics[name], metrics[oracle]) for name in paths if "relearn_curves" in metrics[name]},
        "verdict": {
            name: verdict(
                metrics[name], metrics[oracle], thresholds, {int(layer): ends for layer, (_, *ends) in probe.get(name, {}).items()}
            )
            for name in paths
        },
    }
    return report, evaluations


def relearn_steps_table(metrics: dict, oracle: dict) -> dict[str, str | float | None]:
    """The report's relearning rows of one network: ``relearn_targets`` (the oracle's, as text), ``relearn_steps``, the
    attacker's best mean steps to them (what the verdict reads), and ``relearn/<cell>``, each cell's of the grid alone."""
    targets, curves = oracle["relearn_targets"], metrics["relearn_curves"]
    cells = {f"relearn/{cell}": mean_steps({cell: curve}, targets) for cell, curve in curves.items()}
    return {"relearn_targets": targets_text(targets), "relearn_steps": mean_steps(curves, targets)} | cells


def _probe_ratios(
    evaluations: Mapping[str, NetEvaluation], oracle: str, data: EvalData, budget: Budget
) -> dict[str, dict[str, list[float]]]:
    """Per checkpoint but the oracle, per probed hidden layer: ``[ratio, low, high]``, the probe's misranked share over
    the oracle's (what the verdict reads) and its interval over resamples of the held-out samples."""
    is_forget, reference = probe_held_out(data)[1].cpu().numpy(), evaluations[oracle]
    weights = bootstrap_weights(is_forget, budget.probe_draws, budget.sample_seed)  # the same draws for every network and layer

    @functools.cache
    def oracle_misranked(layer: int) -> np.ndarray:  # once per layer, not once per network compared
        return 1 - resampled_aucs(reference.probe_scores[layer], is_forget, weights)

    def interval(evaluation: NetEvaluation, layer: int) -> tuple[float, float]:
        return misranked_ratio_interval(evaluation.probe_scores[layer], oracle_misranked(layer), is_forget, weights)

    return {
        name: {
            str(layer): [ratio, *interval(evaluation, layer)]
            for layer, ratio in probe_ratios(evaluation.metrics, reference.metrics).items()
        }
        for name, evaluation in evaluations.items()
        if name != oracle
    }


def _stamps(paths: Mapping[str, str]) -> dict[str, list[int]]:
    """Each file's size and modification time (ns), which change when a run writes it again."""
    return {name: [(stat := Path(path).stat()).st_size, stat.st_mtime_ns] for name, path in paths.items()}


def evaluate_against(
    checkpoints: Mapping[str, str | Path],
    oracle: str,
    pretrained: str,
    seed: int | None = None,
    cache: str | Path | None = None,
    threads: int = 1,
    holdout: Holdout = "test",
    **settings: Any,
) -> dict[str, dict[str, Any]]:
    """Per checkpoint name: ``verdict``, ``mia``, ``avg_gap``, ``relearn_steps`` (the attacker's best, mean steps to the oracle's targets), ``probe_auc`` and
    ``probe_ratio`` (at the hidden layer whose probe finds the class best relative to the oracle's; see
    :func:`~.verdict.most_telling_layer`) with ``probe_ratio_interval`` (its interval over resamples of the held-out
    samples; ``None`` for the oracle), ``recovered`` (retain-only fine-tuning), ``reach`` (the largest
    reachability over starts and norms), ``proto`` (prototypical relearning) and ``quant`` (the forget classes' highest accuracy
    after 8- or 4-bit weight rounding), rates as fractions like test accuracies.

    ``checkpoints`` holds the oracle and pretrained entries too; ``settings`` go to :func:`judge`.
    A ``cache`` file keeps every network's metrics and probe intervals. It is read back for the same checkpoint files
    (paths, sizes and modification times: a run trained again at the same path is evaluated again), ``holdout`` and
    budget; the verdicts are then judged again from its metrics under the thresholds given now, so a recalibrated limit
    reaches every cached run without evaluating any network again.
    Runs on ``threads`` CPU threads, restored afterwards (see :func:`~.inputs.torch_threads`).
    """
    paths = {name: str(Path(path).resolve()) for name, path in checkpoints.items()}
    budget, thresholds = settings.get("budget") or Budget(), settings.get("thresholds") or Thresholds()
    # as JSON reads it back (tuples become lists)
    key = json.loads(json.dumps({"checkpoints": paths, "files": _stamps(paths), "holdout": holdout, "budget": asdict(budget)}))
    stored = json.loads(Path(cache).read_text()) if cache is not None and Path(cache).exists() else {}
    if "metrics" in stored and all(stored.get(k) == v for k, v in key.items()):
        return _summary(stored["metrics"], stored["probe_ratio"], oracle, thresholds)
    with torch_threads(threads):
        report, _ = judge(paths, oracle, pretrained, seed=seed, holdout=holdout, **settings)
    summary = _summary(report["metrics"], report["probe_ratio"], oracle, thresholds)
    if cache is not None:
        stored = key | {"metrics": report["metrics"], "probe_ratio": report["probe_ratio"]}  # no verdicts: they follow the limits
        Path(cache).write_text(json.dumps(stored, indent=1))
    return summary


def _summary(
    metrics: Mapping[str, dict], probe: Mapping[str, dict[str, list[float]]], oracle: str, thresholds: Thresholds
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_against`'s numbers per network, from :func:`judge`'s metrics and probe ratios (with their
    intervals), judged under ``thresholds``."""
    summary = {}
    for name, own in metrics.items():
        reach, quant = [own[k] for k in reach_keys(own)], quant_keys(own)
        telling = most_telling_layer(own, metrics[oracle])
        summary[name] = {
            "verdict": verdict(own, metrics[oracle], thresholds)["verdict"],
            "mia": own["mia"] / 100,
            "avg_gap": oracle_gap(own, metrics[oracle])["avg"] / 100,
            "relearn_steps": relearning(own, metrics[oracle])[0],
            "probe_layer": telling and telling[0],
            "probe_auc": telling and own[f"probe_auc_layer{telling[0]}"],
            "probe_ratio": telling and telling[1],
            "probe_ratio_interval": (telling and probe[name][str(telling[0])][1:]) if name != oracle else None,
            "recovered": own["recovered_acc"] / 100 if "recovered_acc" in own else None,
            "reach": max(reach) / 100 if reach else None,
            "proto": own["proto_acc"] / 100 if "proto_acc" in own else None,
            "quant": max(own[k] for k in quant) / 100 if quant else None,
        }
    return summary
