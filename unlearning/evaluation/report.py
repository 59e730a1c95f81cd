"""What a user reads: the comparison table (terminal and Markdown), the JSON of every number, TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from unlearning.errors import UsageError
from unlearning.evaluation.data import HELD_OUT_NAME
from unlearning.evaluation.mia import HEADLINE_FEATURE
from unlearning.evaluation.probe import INTERVAL_LEVEL
from unlearning.evaluation.relearn import attacker_name
from unlearning.evaluation.suite import REACH_NORMS, REACH_STARTS, Budget, NetEvaluation
from unlearning.evaluation.verdict import EVIDENCE, GAP_METRICS
from unlearning.figures import class_bars, confusion_image, tile

_ABSENT = object()  # a row a role has no value for: its check did not apply


def table_rows(budget: Budget, layers: int = 0) -> list[tuple[str, str]]:
    """``(key, label)`` of every row the table can show, in reading order; ``gap_*`` keys index the gap to the oracle.

    ``layers``: how many hidden layers were probed.
    """
    norm_names = {"linf": f"L∞ ≤ {budget.linf_eps:g}", "l2": f"L2 ≤ {budget.l2_eps:g}"}
    rows = [
        ("ua", "UA: 100 - forget-set accuracy (%)"),
        ("ra", "RA: retain training accuracy (%)"),
        ("ta", "TA: test accuracy, retain classes (%)"),
        ("test_acc", "test accuracy, all classes (%)"),
        ("forget_test_acc", "forget-class test accuracy (%)"),
        ("new_acc", "new-class test accuracy (%)"),
        ("mia", f"MIA efficacy: {HEADLINE_FEATURE.replace('_', ' ')} (%)"),
        ("mia_confidence", "MIA efficacy: confidence (%)"),
        ("mia_entropy", "MIA efficacy: entropy (%)"),
        *((f"gap_{k}", f"gap to oracle: {k.upper()}") for k in GAP_METRICS),
        ("gap_avg", "gap to oracle: average"),
        *((f"probe_auc_layer{i}", f"probe AUC, hidden layer {i}") for i in range(1, layers + 1)),
        *((f"probe_acc_layer{i}", f"probe balanced accuracy, hidden layer {i} (%)") for i in range(1, layers + 1)),
        *(
            (f"probe_ratio_layer{i}", f"probe: misranked share × the oracle's, hidden layer {i} ({INTERVAL_LEVEL:.0%} of resamples)")
            for i in range(1, layers + 1)
        ),
        ("relearn_targets", "relearn: the oracle's targets, forget-class test accuracy"),
        ("relearn_steps", "relearn: attacker's best, mean steps to the oracle's targets"),
        *(
            (f"relearn/{attacker_name(name, lr)}", f"relearn: {name}{' (momentum 0.9)' if name == 'sgd' else ''}, lr {lr:g}")
            for name, lr in budget.attackers()
        ),
        ("recovered_acc", f"retain-only fine-tuning: forget-class test accuracy it brings back (%), {budget.recover_steps} steps"),
    ]
    for start in REACH_STARTS:
        for norm in REACH_NORMS:
            rows.append((f"reach_{start}_{norm}", f"reach from {start}, {norm_names[norm]} (% of starts)"))
            rows.append((f"reach_{start}_{norm}_steps", f"reach from {start}, {norm_names[norm]}: mean steps"))
    rows += [
        ("forgetting_effectiveness", "forgetting effectiveness (forget-set accuracy, lower is better)"),
        ("utility_preservation", "utility preservation (TA / pretrained TA)"),
        ("verdict", "verdict"),
    ]
    return rows


def _cell(key: str, value) -> str:
    if value is _ABSENT:
        return "n/a"
    if value is None:  # a budget ran out: never relearned, never reached
        return "never"
    if isinstance(value, (str, int)):
        return str(value)
    if isinstance(value, list):  # a probe ratio and its interval
        return f"{value[0]:.2f} ({value[1]:.2f}-{value[2]:.2f})"
    four_digits = key.startswith("probe_auc") or key in ("forgetting_effectiveness", "utility_preservation")
    return f"{value:.4f}" if four_digits else f"{value:.2f}"


def table(report: dict, budget: Budget) -> list[list[str]]:
    """Header and rows of the comparison: one column per checkpoint, only the rows some checkpoint has."""
    names = list(report["checkpoints"])
    cells = [["", *names]]
    layers = max(
        (int(k.removeprefix("probe_auc_layer")) for m in report["metrics"].values() for k in m if k.startswith("probe_auc_layer")),
        default=0,
    )
    held_out = HELD_OUT_NAME[report["split"]["holdout"]]
    for key, label in table_rows(budget, layers):
        label = label.replace("test accuracy", f"{held_out} accuracy")  # what the held-out checks read
        values = {name: _row_value(report, name, key) for name in names}
        if all(v is _ABSENT for v in values.values()):
            continue
        cells.append([label, *(_cell(key, v) for v in values.values())])
    return cells


def _row_value(report: dict, name: str, key: str):
    if key == "verdict":
        return report["verdict"][name]["verdict"]
    if key.startswith("gap_"):
        return report["gap"][name][key.removeprefix("gap_")]
    if key.startswith("relearn"):
        return report.get("relearn", {}).get(name, {}).get(key, _ABSENT)
    if key.startswith("probe_ratio_layer"):  # against the oracle, as the gaps are: the oracle has none
        return report["probe_ratio"].get(name, {}).get(key.removeprefix("probe_ratio_layer"), _ABSENT)
    return report["metrics"][name].get(key, _ABSENT)


def format_table(cells: list[list[str]]) -> str:
    """A fixed-width text table for the terminal."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown(report: dict, cells: list[list[str]]) -> str:
    """The summary: verdict and its evidence, the table, what did not apply, and the thresholds used."""
    subject = report["verdict"][report["subject"]]
    lines = [
        "# Evidence that a class is forgotten",
        "",
        *(f"- {name}: `{path}`" for name, path in report["checkpoints"].items()),
        "- " + ", ".join(f"{key.replace('_', ' ')}: {value}" for key, value in report["classes"].items()),
        "- " + ", ".join(f"{key.replace('_', ' ')}: {value}" for key, value in report["split"].items()),
        "",
        f"**Verdict on {report['subject']}: {subject['verdict']}**",
        "",
    ]
    for kind in EVIDENCE:
        for item in subject[kind]:
            lines.append(f"- {kind.split('_')[0]}: {item}")
    lines += ["", "| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    skipped = {check: reason for name in report["checkpoints"] for check, reason in report["not_applicable"][name].items()}
    if skipped:
        lines += ["", "Not applicable:", *(f"- {check}: {reason}" for check, reason in skipped.items())]
    lines += ["", "Thresholds: " + ", ".join(f"{k}={v}" for k, v in report["thresholds"].items()), ""]
    return "\n".join(lines)


#: what :func:`write_outputs` writes; a folder holding anything else is not an evaluation's to overwrite
OUTPUT_FILES = ("report.json", "summary.md")
EVENTS = "events.out.tfevents.*"


def check_out(out: Path) -> None:
    """Refuse, before any check runs, an ``--out`` that is a file or a folder holding anything but an earlier evaluation's
    outputs: a re-run replaces those (TensorBoard events included), and must never delete a training run's history."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES and not p.match(EVENTS))
        if foreign:
            raise UsageError(
                f"--out {out} holds what no evaluation wrote ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): "
                "give a new or empty folder, or an earlier evaluation's"
            )


def write_outputs(out: Path, report: dict, evaluations: dict[str, NetEvaluation], budget: Budget) -> str:
    """``report.json``, ``summary.md`` and TensorBoard events (scalars, per-class bars, confusion matrices,
    reachability end points) under ``out``; returns the text table."""
    out.mkdir(parents=True, exist_ok=True)
    cells = table(report, budget)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "summary.md").write_text(markdown(report, cells))
    for stale in out.glob(EVENTS):  # a re-run replaces the last one's numbers, like the JSON
        stale.unlink()
    with SummaryWriter(log_dir=str(out)) as writer:
        for name in report["checkpoints"]:
            numbers = {**report["metrics"][name], **report.get("relearn", {}).get(name, {})}
            numbers |= {f"gap/{k}": v for k, v in report["gap"][name].items()}
            for layer, values in report["probe_ratio"].get(name, {}).items():
                numbers |= {f"probe_ratio_layer{layer}/{part}": v for part, v in zip(("ratio", "low", "high"), values)}
            for key, value in numbers.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(f"{name}/{key}", value)
            writer.add_image(f"confusion/{name}", confusion_image(torch.tensor(report["metrics"][name]["confusion"])))
            for variant, images in evaluations[name].reach_images.items():
                writer.add_image(f"reach/{name}/{variant}", tile(images))
        bars = {name: torch.tensor(report["metrics"][name]["class_acc"]) / 100 for name in report["checkpoints"]}
        held_out = HELD_OUT_NAME[report["split"]["holdout"]]
        writer.add_figure("class_accuracy", class_bars(bars, title=f"{held_out} accuracy per class"))
    return format_table(cells)
