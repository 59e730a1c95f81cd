"""The verdict's calibration set, rebuilt and measured: ``python -m unlearning.evaluation.calibrate``.

:class:`~.verdict.Thresholds` is set on these cases, each with the verdict it must (or must not) get:

* the oracle of each seed, judged against every other seed's oracle: ``forgets``;
* the pretrained model: ``incomplete``;
* the head mask (the forget logit pushed to -1e4): ``hides``;
* selective gradient: anything but ``forgets`` (today's suite: ``incomplete``);
* the pretrained model distilled from itself with the forget logit pinned at -1e4 (:func:`pinned_logit`),
  which makes Adam relearn slowly while the representation is untouched: anything but ``forgets``;
* a fresh network distilled for 100 steps on retain data (:func:`distilled_fresh`), ~89% retain
  accuracy: anything but ``forgets``.

The checkpoints are the bench's (``unlearning bench -c configs/bench.yaml --only [forget9]`` names them in its
``results/cells/forget9-seed<seed>-*.json`` files); the two distilled models are built here in a second each. It prints,
per threshold, the values the cases take, so a maintainer sees each margin, and writes ``calibration.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unlearning.checkpoints import build_net
from unlearning.errors import UsageError
from unlearning.evaluation.data import EvalData, load_eval_data, seeded_batches
from unlearning.evaluation.inputs import load, torch_threads
from unlearning.evaluation.suite import Budget, evaluate_net, evaluate_nets, oracle_budget
from unlearning.evaluation.verdict import Thresholds, most_telling_layer, quant_keys, reach_keys, relearning, verdict, worst_class
from unlearning.losses import distillation
from unlearning.pages import replace_section

#: case -> the verdicts it may get
EXPECTED = {
    "oracle": {"forgets"},
    "pretrained": {"incomplete"},
    "head_mask": {"hides"},
    "selective_gradient": {"incomplete", "hides", "damages"},
    "pinned_logit": {"incomplete", "hides", "damages"},
    "distilled_fresh": {"incomplete", "hides", "damages"},
}
STAGES = ("pretrained", "oracle", "selective_gradient", "head_mask")


def pinned_logit(pretrained: nn.Module, data: EvalData, steps: int = 500, lr: float = 1e-2, seed: int = 0) -> nn.Module:
    """The pretrained net distilled from itself with the forget classes' logits pinned at -1e4, on retain ∪ forget data.

    The forget logits end far below the oracle's, so Adam at 1e-3 needs about twice the oracle's steps to
    raise them (46 against 23 on seed 0): relearning under Adam alone calls it more forgotten than the
    oracle while the features are the pretrained ones. A hundred steps at 1e-3 pin it less (4 steps).
    """
    teacher, student = pretrained.eval(), copy.deepcopy(pretrained).train()
    rows = torch.cat([data.splits["retain"], data.splits["forget"]])
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    for x, _ in seeded_batches(data.train_x[rows], data.train_y[rows], 200, steps, seed):
        with torch.no_grad():
            target = teacher(x)
            target[:, list(data.forget_classes)] = -1e4
        loss = distillation(student(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return student.eval()


def distilled_fresh(pretrained: nn.Module, data: EvalData, steps: int = 100, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """A freshly initialised copy of the architecture, distilled from the pretrained net on retain data (forget logits
    excluded) plus cross-entropy, for a few steps: it never learned the class, nor enough of the others."""
    torch.manual_seed(seed)
    student = copy.deepcopy(pretrained)
    for module in student.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    student.train()
    keep = list(data.retain_classes)
    rows = data.splits["retain"]
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    for x, y in seeded_batches(data.train_x[rows], data.train_y[rows], 200, steps, seed):
        with torch.no_grad():
            target = pretrained(x)[:, keep]
        logits = student(x)
        loss = distillation(logits[:, keep], target) + F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return student.eval()


def checkpoints(results: Path, seed: int) -> dict[str, Path]:
    """The bench's checkpoints of one seed: the newest ``forget9`` cell of that seed in ``results`` names each stage's."""
    cells = sorted(results.glob(f"cells/forget9-seed{seed}-*.json"), key=lambda path: path.stat().st_mtime)
    rows = {row["method"]: row for row in json.loads(cells[-1].read_text())["rows"]} if cells else {}
    missing = [stage for stage in STAGES if stage not in rows]
    if missing:
        raise UsageError(
            f"no forget9 cell of seed {seed} in {results} with {', '.join(missing)}: "
            f"run `unlearning bench -c configs/bench.yaml --only [forget9] --seeds [{seed}]` first"
        )
    return {stage: Path(rows[stage]["checkpoint"]) for stage in STAGES}


def as_subject(metrics: dict, budget: Budget) -> dict:
    """An oracle's metrics as a subject's under ``budget``: its relearning curves cut at the others' cap. A curve under a
    cap is the first steps of the curve under a longer one (every attacker starts alike)."""
    if "relearn_curves" not in metrics:
        return metrics
    return metrics | {"relearn_curves": {cell: curve[: budget.relearn_steps + 1] for cell, curve in metrics["relearn_curves"].items()}}


def calibration_metrics(results: Path, seeds: list[int], budget: Budget, data_dir: str = "data") -> dict[int, dict[str, dict]]:
    """Every case's metrics, per seed (each network evaluated once, on its seed's split)."""
    metrics: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        data = load_eval_data(data_dir, [9], [], None, 5000, seed)
        nets = {stage: build_net(path) for stage, path in checkpoints(results, seed).items()}
        nets["pinned_logit"] = pinned_logit(nets["pretrained"], data, seed=seed)
        nets["distilled_fresh"] = distilled_fresh(nets["pretrained"], data, seed=seed)
        metrics[seed] = case_metrics(nets, data, budget)
    return metrics


def case_metrics(nets: dict[str, nn.Module], data: EvalData, budget: Budget) -> dict[str, dict]:
    """Each case's metrics on one split, as a bench measures them: the ``oracle`` case relearns under its own cap
    (:func:`~.suite.evaluate_nets`)."""
    evaluations = evaluate_nets({name: (net, torch.arange(10)) for name, net in nets.items()}, data, budget, "pretrained", "oracle")
    return {name: evaluation.metrics for name, evaluation in evaluations.items()}


def oracle_metrics(results: Sequence[Path], budget: Budget, data_dir: str = "data") -> dict[str, dict[int, dict[str, dict]]]:
    """Per experiment of the benches' cells in ``results`` (``configs/bench_all_classes.yaml``: every digit and four
    replacement pairs, seeds 0-2; ``configs/bench_fresh_seeds.yaml`` the same on seeds 3-5; ``configs/bench_pairs.yaml``
    ten more pairs), each seed's oracle's metrics on its own seed's split: the oracles of one experiment, from whichever
    folder, then judge each other (:func:`judge_cases`). Where two folders hold the same experiment and seed, the later
    folder's oracle stands."""
    found: dict[str, dict[int, Path]] = {}
    for folder in results:
        cells = sorted(folder.glob("cells/*.json"))
        if not cells:
            raise UsageError(f"no bench cells in {folder}: run `unlearning bench -c configs/bench_all_classes.yaml` first")
        for path in cells:
            for row in json.loads(path.read_text())["rows"]:
                if row["method"] == "oracle":
                    found.setdefault(row["experiment"], {})[row["seed"]] = Path(row["checkpoint"])
    metrics: dict[str, dict[int, dict[str, dict]]] = {}
    for experiment, by_seed in found.items():
        for seed, checkpoint in sorted(by_seed.items()):
            oracle = load("oracle", checkpoint)
            classes = oracle.classes()
            data = load_eval_data(data_dir, classes["forget_classes"], classes.get("new_classes", []), None, 5000, seed)
            evaluation = evaluate_net(oracle.net, oracle.unit_labels, data, oracle_budget(budget))
            metrics.setdefault(experiment, {})[seed] = {"oracle": evaluation.metrics}
    return metrics


#: how far past the most demanding oracle pair a limit sits: a tenth of that pair's value
RULE_MARGIN = 0.1


def rule_limit(extreme: float, sign: int, decimals: int) -> float | None:
    """The limit the calibration's rule gives a threshold: the most demanding oracle pair's value moved a tenth of
    itself further out and rounded outward to ``decimals`` (``sign`` +1 where the limit caps a reading from above, -1
    from below). Every threshold that genuine oracles vary on is set so, in both directions: a looser limit lets a
    network through that the oracles never come near, a tighter one convicts a genuine retraining.

    ``None`` where no oracle pair reads above zero on a limit that caps from above (every oracle scores 0 on forget
    accuracy, say): the rule gives no limit there, and the threshold is a floor, the smallest difference that counts.
    """
    if sign > 0 and extreme <= 0:
        return None
    scaled = round(extreme * (1 + sign * RULE_MARGIN) * 10**decimals, 9)  # the rounding spares float noise a step
    return (math.ceil(scaled) if sign > 0 else math.floor(scaled)) / 10**decimals


def oracle_summary(rows: list[dict]) -> str:
    """What the oracles judged against each other ask of each threshold: the extreme value seen and the pair that
    showed it, beside the limit and the limit the rule gives (:func:`rule_limit`)."""
    t = Thresholds()
    # (threshold, limit, what each pair shows, +1 where the limit caps it from above, -1 from below, decimals kept)
    reads = [
        ("probe_ratio (lowest probe ratio)", t.probe_ratio, lambda r: r["probe_ratio"], -1, 2),
        ("reach_margin (most real starts above)", t.reach_margin, lambda r: r["reach_above"] or 0, 1, 0),
        ("noise_reach_margin (most noise starts above)", t.noise_reach_margin, lambda r: r["noise_reach_above"] or 0, 1, 0),
        ("utility_margin (TA below)", t.utility_margin, lambda r: r["ta_below"], 1, 1),
        ("class_margin (one class below)", t.class_margin, lambda r: r["class_below"] or 0, 1, 0),
        (
            "relearn_ratio (steps over the other's)",
            t.relearn_ratio,
            lambda r: r["relearn"] / r["oracle_relearn"] if r["relearn"] is not None and r["oracle_relearn"] else None,
            -1,
            2,
        ),
        ("acc_margin (forget accuracy above)", t.acc_margin, lambda r: r["forget_acc_above"], 1, 0),
        ("acc_margin (after quantisation, above)", t.acc_margin, lambda r: r["quant_above"] or 0, 1, 0),
        ("recovery_margin (retain-only fine-tuning brings back, above)", t.recovery_margin, lambda r: r["recovered_above"], 1, 0),
        ("proto_margin (prototype accuracy above)", t.proto_margin, lambda r: r["proto_above"] or 0, 1, 0),
    ]
    forgets = sum(r["verdict"] == "forgets" for r in rows)
    lines = [f"{len(rows)} oracle pairs over {len({r['experiment'] for r in rows})} experiments; {forgets} get `forgets`.", ""]
    lines += [
        "| threshold | limit | by the rule | extreme, oracle against oracle | pair (seed/oracle) | room |",
        "|---|---|---|---|---|---|",
    ]
    for name, limit, read, sign, decimals in reads:
        value, row = max(((v, r) for r in rows if (v := read(r)) is not None), key=lambda item: sign * item[0])
        pair = f"{row['experiment']} {row['seed']}/{row['oracle_seed']}"
        rule = rule_limit(value, sign, decimals)
        rule_text = "– (a floor)" if rule is None else f"{rule:g}" + ("" if rule == limit else " **(not the limit)**")
        lines.append(f"| {name} | {limit:g} | {rule_text} | {value:.3f} | {pair} | {sign * (limit - value):+.3f} |")
    return "\n".join(lines)


def judge_cases(metrics: dict[int, dict[str, dict]], thresholds: Thresholds, budget: Budget) -> list[dict]:
    """One row per case: its seed, the reference oracle's seed, the verdict, whether it is allowed, and the numbers each threshold
    reads. ``budget`` is the subjects' (the oracles' metrics come from :func:`~.suite.oracle_budget`'s)."""
    rows = []
    for seed, cases in metrics.items():
        references = [(name, seed, seed) for name in cases if name != "oracle"]
        references += [("oracle", seed, other) for other in metrics if other != seed]
        for name, subject_seed, oracle_seed in references:
            subject, oracle = metrics[subject_seed][name], metrics[oracle_seed]["oracle"]
            subject = as_subject(subject, budget) if name == "oracle" else subject
            result = verdict(subject, oracle, thresholds)
            steps, oracle_steps = relearning(subject, oracle)
            telling = most_telling_layer(subject, oracle)
            reach, noise_reach = (
                max((subject[k] - oracle[k] for k in reach_keys(subject, start) if k in oracle), default=None)
                for start in ("real", "noise")
            )
            rows.append(
                {
                    "case": name, "seed": subject_seed, "oracle_seed": oracle_seed, "verdict": result["verdict"],
                    "allowed": result["verdict"] in EXPECTED[name],
                    "forget_acc_above": subject["forget_test_acc"] - oracle["forget_test_acc"],
                    "reach_above": reach, "noise_reach_above": noise_reach,
                    "probe_layer": telling and telling[0], "probe_ratio": telling and telling[1],
                    "relearn": steps, "oracle_relearn": oracle_steps,
                    "recovered_above": subject["recovered_acc"] - oracle["recovered_acc"],
                    "proto_above": subject["proto_acc"] - oracle["proto_acc"] if "proto_acc" in subject and "proto_acc" in oracle else None,
                    "quant_above": max((subject[k] - oracle[k] for k in quant_keys(subject) if k in oracle), default=None),
                    "ta_below": oracle["ta"] - subject["ta"],
                    "class_below": (worst := worst_class(subject, oracle)) and worst[1],
                }
            )  # fmt: skip
    return rows


def format_rows(rows: list[dict], label: str = "case") -> str:
    header = f"{label:20s} seed/oracle  verdict     ok  forget+  reach+  noise+  probe(layer)  relearn/oracle  recovered+  proto+  quant+  TA-  class-"
    lines = [header, "-" * len(header)]
    for r in rows:
        probe = "-" if r["probe_ratio"] is None else f"{r['probe_ratio']:.2f} ({r['probe_layer']})"
        lines.append(
            f"{r[label]:20s} {r['seed']}/{r['oracle_seed']:<10} {r['verdict']:11s} {'yes' if r['allowed'] else 'NO':3s} "
            f"{r['forget_acc_above']:7.1f} {_number(r['reach_above']):>7} {_number(r.get('noise_reach_above')):>7} "
            f"{probe:>13} {_number(r['relearn']):>7}/{_number(r['oracle_relearn']):<7} {r['recovered_above']:10.1f} "
            f"{_number(r.get('proto_above')):>7} {_number(r.get('quant_above')):>7} {r['ta_below']:5.2f} "
            f"{'-' if r.get('class_below') is None else format(r['class_below'], '6.1f'):>6}"
        )
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m unlearning.evaluation.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="the results folder of `unlearning bench -c configs/bench.yaml`"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("results/calibration.json"))
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--docs", type=Path, help="a page whose calibration section gets the table (docs/evidence.md)")
    parser.add_argument(
        "--oracles",
        type=Path,
        nargs="+",
        help="instead: judge the oracles of every experiment in these bench results folders against each other (seeds pooled)",
    )
    args = parser.parse_args(argv)
    try:
        if args.oracles is not None:
            return main_oracles(args)
        with torch_threads(1):
            metrics = calibration_metrics(args.results, args.seeds, Budget(), args.data_dir)
    except UsageError as err:
        parser.error(str(err))
    rows = judge_cases(metrics, Thresholds(), Budget())
    print(format_rows(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"thresholds": Thresholds().__dict__, "rows": rows, "metrics": metrics}, indent=1))
    failed = [r for r in rows if not r["allowed"]]
    summary = f"{len(rows) - len(failed)} of {len(rows)} cases get an allowed verdict"
    if args.docs is not None:
        replace_section(
            args.docs,
            "calibration",
            f"```\n{format_rows(rows)}\n```\n\n{summary} (`python -m unlearning.evaluation.calibrate --docs docs/evidence.md`).",
        )
    print(f"{summary}; wrote {args.out}")
    return rows


def main_oracles(args: argparse.Namespace) -> list[dict]:
    """The oracles of every digit and replacement pair, each judged against the other seeds' oracles of its experiment."""
    with torch_threads(1):
        metrics = oracle_metrics(args.oracles, Budget(), args.data_dir)
    rows = [
        {**row, "experiment": experiment} for experiment, cases in metrics.items() for row in judge_cases(cases, Thresholds(), Budget())
    ]
    table = format_rows(rows, label="experiment")
    summary = oracle_summary(rows)
    print(table, summary, sep="\n\n")
    if args.docs is not None:  # the pairs that do not forget, and the extremes; the whole table is the command's output
        misses = [r for r in rows if r["verdict"] != "forgets"]
        text = (
            f"{summary}\n\n"
            + (f"The pairs not called `forgets`:\n\n```\n{format_rows(misses, label='experiment')}\n```\n\n" if misses else "")
            + f"(`python -m unlearning.evaluation.calibrate --oracles {' '.join(map(str, args.oracles))} --docs {args.docs}`"
            + ", which prints every pair)"
        )
        replace_section(args.docs, "oracle calibration", text)
    return rows


if __name__ == "__main__":
    main()
