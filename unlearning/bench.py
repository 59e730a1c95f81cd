"""``unlearning bench -c configs/bench.yaml``: every number in the README from the configs users run.

For each experiment and seed it pretrains, retrains the oracle, runs every method from the
pretrained weights, scores them on the test set (``--holdout val``: on the validation split, for
tuning), and (for class experiments) runs the evidence suite on the same held-out samples against
that seed's oracle and pretrained model. The oracle and every method are timed
``--timing_repeats`` times (the cost takes the best of each). A finished run leaves ``result.json`` in its
folder and is not run again; a run that died leaves ``last.ckpt`` and is resumed from it. It writes
``results/`` (or ``--out``): ``results.json`` with every raw number, ``results.md`` with mean ± std
tables and per-seed rows, and PNG plots. Last, it times Lightning against a plain torch loop
(:mod:`unlearning.speed`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import InitVar, asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse import ArgumentError, ArgumentParser
from tqdm import tqdm

from unlearning.checkpoints import net_state_dict
from unlearning.errors import CellsFailed, HeadlineChanged, UsageError
from unlearning.evaluation import evaluate_against
from unlearning.evaluation.data import HELD_OUT_NAME, Holdout
from unlearning.evaluation.inputs import torch_threads
from unlearning.evaluation.verdict import worst_class
from unlearning.files import atomic_file
from unlearning.launch import Launcher, Slurm, launch
from unlearning.pages import read_section, replace_section
from unlearning.runs import fit_and_test
from unlearning.saliency import unchanged_share
from unlearning.speed import compare
from unlearning.training import parse_error


@dataclass
class Experiment:
    """A pretrain config, its oracle and the methods run from the pretrained weights.

    Each entry is a config path followed by optional CLI overrides, exactly as a user would type them.
    ``args``: overrides every entry (pretrain, oracle, each method) shares, such as the forget class; they go in right
    after each entry's config path, so an entry's own overrides still win. An experiment written with them is the same
    experiment, and reuses the same runs, as one that spells them out in every entry.
    ``after`` names methods that start from another method's checkpoint instead (``undo: selective_gradient``);
    their fit time, and so their cost, includes that method's.
    """

    name: str
    pretrain: list[str]
    oracle: list[str]
    methods: dict[str, list[str]] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)
    evidence: bool = True
    args: InitVar[list[str] | None] = None

    def __post_init__(self, args: list[str] | None) -> None:
        entries = {"pretrain": self.pretrain, "oracle": self.oracle} | {f"methods: {m}": e for m, e in self.methods.items()}
        for where, entry in entries.items():
            if not entry or not entry[0].endswith((".yaml", ".yml")):
                raise UsageError(f"experiment {self.name}: {where}: starts with a config file (.yaml), got {entry}")
        if args:
            self.pretrain, self.oracle = ([entry[0], *args, *entry[1:]] for entry in (self.pretrain, self.oracle))
            self.methods = {method: [entry[0], *args, *entry[1:]] for method, entry in self.methods.items()}
        for method, upstream in self.after.items():
            if (
                method not in self.methods
                or upstream not in self.methods
                or list(self.methods).index(upstream) > list(self.methods).index(method)
            ):
                raise UsageError(f"experiment {self.name}: after: {method}: {upstream} needs both methods listed, {upstream} first")


def _run(args: list[str], root: Path, seed: int, holdout: Holdout, bar: tqdm) -> dict[str, Any]:
    """Fit one config under ``root`` and score it on ``holdout`` (kept under its name, ``"test"`` or ``"val"``), or return
    what an earlier run of the same cell left there; a run that died leaves ``last.ckpt`` and is resumed from it."""
    done = root / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if Path(result["checkpoint"]).exists():
            bar.update()
            return result | {"reused": True}
    resume = next(iter(sorted(root.glob("lightning_logs/*/*/version_*/checkpoints/last.ckpt"))), None)  # one run per folder here
    bar.set_postfix_str(f"{root.parent.parent.name}/{root.name} seed {seed}")
    run = fit_and_test(*args, root=root, seed=seed, score=holdout, ckpt_path=resume)
    result = {
        "checkpoint": str(run.checkpoint), "fit_seconds": run.fit_seconds, "phases": run.phases, "resumed": resume is not None,
        holdout: run.scores,
    }  # fmt: skip
    with atomic_file(done) as f:
        f.write(json.dumps(result, indent=1).encode())
    bar.update()
    return result


def _best_fit_seconds(
    runs: dict[str, list[str]], first: dict[str, dict[str, Any]], where: Path, seed: int, repeats: int, bar: tqdm
) -> dict[str, float]:
    """The best (least) fit seconds of each run over ``repeats`` fits of the same work.

    The least, as ``timeit`` reports: the work is identical, and the VM's noise only ever adds time.
    The first fit is the bench's own (unless it was resumed: that timed part of a fit); the others
    run in rounds over all the runs, so that a drift in the machine's speed hits the oracle and the
    methods alike. The rounds are kept in ``timings.json``, so a rerun does not repeat them.
    """
    cache = where / "timings.json"
    rounds = [r for r in (json.loads(cache.read_text()) if cache.exists() else []) if runs.keys() <= r.keys()][: repeats - 1]
    bar.update(len(rounds) * len(runs))
    while len(rounds) < repeats - 1:
        bar.set_postfix_str(f"{where.parent.name}/{where.name}: timing round {len(rounds) + 1}")
        with tempfile.TemporaryDirectory() as scratch:
            round_seconds = {}
            for name, args in runs.items():
                round_seconds[name] = fit_and_test(*args, root=Path(scratch) / name, seed=seed, score=None).fit_seconds
                bar.update()
        rounds.append(round_seconds)
        with atomic_file(cache) as f:
            f.write(json.dumps(rounds, indent=1).encode())
    best = {}
    for name in runs:
        times = [r[name] for r in rounds] + ([] if first[name]["resumed"] else [first[name]["fit_seconds"]])
        best[name] = min(times or [first[name]["fit_seconds"]])
    return best


@dataclass
class Cell:
    """One experiment on one seed, scored on one holdout: its fits, their timings and its evidence.

    A pure function of these fields and of the config files its entries name; :attr:`key` hashes all of them, so a
    changed config or setting makes a new cell (and a new folder) and never mixes an old result in.
    """

    experiment: Experiment
    seed: int
    holdout: Holdout = "test"
    timing_repeats: int = 1
    threads: int = 1
    allow_modules: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """A hash of the cell's fields and of the contents of every config file its entries name."""
        entries = [self.experiment.pretrain, self.experiment.oracle, *self.experiment.methods.values()]
        files = {arg: Path(arg).read_text() for args in entries for arg in args if arg.endswith(".yaml") and Path(arg).is_file()}
        return hashlib.sha256(json.dumps([asdict(self), files], sort_keys=True).encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        return f"{self.experiment.name}-seed{self.seed}-{self.key}"


def _check_holdout(out: Path, holdout: Holdout) -> None:
    """One results folder never mixes the two holdouts: a folder whose cells were scored on the other one is refused."""
    for path in sorted(out.glob("cells/*.json")):
        scored = json.loads(path.read_text())["cell"]["holdout"]
        if scored != holdout:
            raise UsageError(f"{out} was scored on {scored}, not {holdout}: bench --holdout {holdout} into another --out")


def cell_file(out: Path, cell: Cell) -> Path:
    """Where a finished cell's rows are: ``<out>/cells/<experiment>-seed<seed>-<key>.json``."""
    return out / "cells" / f"{cell.name}.json"


def run_cell(cell: Cell, out: Path, cwd: str | None = None, bar: tqdm | None = None) -> Path:
    """Run one cell (unless its file exists) and write its rows to :func:`cell_file`; what every launcher calls.

    Its fits live under ``<out>/runs/<experiment>/seed<seed>-<key>/<stage>/``. A lock on the cell makes a second bench
    that wants the same cell wait for the first and then read its file, so two benches sharing a results folder lose
    nothing. ``cwd``: the folder the configs' relative paths start from (a launcher's process may start elsewhere).
    """
    if cwd is not None:
        os.chdir(cwd)
    target = cell_file(out, cell)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        if target.exists():
            return target
        bar = bar if bar is not None else tqdm(disable=True)
        start = time.perf_counter()
        with torch_threads(cell.threads), quiet_lightning():
            rows = cell_rows(cell, out / "runs" / cell.experiment.name / f"seed{cell.seed}-{cell.key}", bar)
        with atomic_file(target) as f:
            f.write(json.dumps({"cell": asdict(cell), "seconds": time.perf_counter() - start, "rows": rows}, indent=1).encode())
    return target


def cell_rows(cell: Cell, where: Path, bar: tqdm) -> list[dict[str, Any]]:
    """One row per stage of the cell (pretrained, oracle, each method) with the holdout's metrics, fit seconds, cost against
    the oracle and evidence (networks rebuilt from the project's models or the cell's ``allow_modules``)."""
    exp, seed, holdout = cell.experiment, cell.seed, cell.holdout
    stages = {
        "pretrained": _run(exp.pretrain, where / "pretrained", seed, holdout, bar),
        "oracle": _run(exp.oracle, where / "oracle", seed, holdout, bar),
    }
    timed_runs = {"oracle": exp.oracle}
    for method, args in exp.methods.items():
        start = stages[exp.after.get(method, "pretrained")]["checkpoint"]
        timed_runs[method] = [*args, f"--model.init_args.weights={start}"]
        stages[method] = _run(timed_runs[method], where / method, seed, holdout, bar)
    seconds = {"pretrained": stages["pretrained"]["fit_seconds"]}
    seconds |= _best_fit_seconds(timed_runs, stages, where, seed, cell.timing_repeats, bar)
    for method, upstream in exp.after.items():  # listed in order, so an upstream's own chain is summed first
        seconds[method] += seconds[upstream]
    pretrained = net_state_dict(stages["pretrained"]["checkpoint"])
    frozen = {name: unchanged_share(pretrained, net_state_dict(r["checkpoint"])) for name, r in stages.items()}
    evidence = {}
    if exp.evidence:
        bar.set_postfix_str(f"{exp.name} seed {seed}: evidence")
        checkpoints = {name: Path(r["checkpoint"]) for name, r in stages.items()}
        evidence = evaluate_against(
            checkpoints, oracle="oracle", pretrained="pretrained", seed=seed, cache=where / "evidence.json", holdout=holdout,
            allow_modules=cell.allow_modules,
        )  # fmt: skip
    return [
        {
            "experiment": exp.name, "method": method, "seed": seed, "phases": None if result["resumed"] else result.get("phases"),
            "reused": result.get("reused", False), "checkpoint": result["checkpoint"],
            "fit_seconds": seconds[method], "cost": seconds[method] / seconds["oracle"], "frozen": frozen[method],
            **{k.removeprefix(f"{holdout}/"): v for k, v in result[holdout].items()}, **evidence.get(method, {}),
        }
        for method, result in stages.items()
    ]  # fmt: skip


def fits_per_cell(cell: Cell) -> int:
    methods = len(cell.experiment.methods)
    return 2 + methods + (cell.timing_repeats - 1) * (1 + methods)


def run_grid(
    cells: list[Cell], out: Path, launcher: Launcher = "serial", jobs: int = 2, slurm: Slurm | None = None
) -> list[dict[str, Any]]:
    """Every cell's rows, in the cells' order, each cell run by ``launcher`` unless its file exists; the rows are read back from
    the cell files alone, so every launcher gives the same tables. Cells that fail are reported in one line each (with their
    log), after the others have finished; then :class:`CellsFailed` is raised."""
    todo = [cell for cell in cells if not cell_file(out, cell).exists()]
    earlier = {cell.name for cell in cells} - {cell.name for cell in todo}
    if launcher == "serial":
        with tqdm(total=sum(map(fits_per_cell, todo)), desc="bench", unit="run") as bar:
            failures = launch(todo, [c.name for c in todo], partial(run_cell, bar=bar), out)
    else:
        failures = launch(todo, [c.name for c in todo], run_cell, out, launcher, jobs, slurm, progress=tqdm.write)
    if failures:
        for failure in failures:
            print(f"unlearning bench: {failure.line()}", file=sys.stderr)
        raise CellsFailed(
            f"{len(failures)} of {len(cells)} cells failed (the others' results are kept in {out / 'cells'}): rerun to retry them"
        )
    rows = [(cell, row) for cell in cells for row in json.loads(cell_file(out, cell).read_text())["rows"]]
    return [row | {"reused": True} if cell.name in earlier else row for cell, row in rows]


# -- tables -------------------------------------------------------------------------------------
#: (column key, header, scale, digits)
COLUMNS = [
    ("forget_acc", "forget %", 100, 2), ("retain_acc", "retain %", 100, 2), ("acc", "all %", 100, 2), ("new_acc", "new %", 100, 2),
    ("mia", "MIA %", 100, 1), ("avg_gap", "avg gap", 100, 2), ("relearn_steps", "relearn steps", 1, 0),
    ("probe_auc", "probe AUC", 1, 3), ("probe_ratio", "probe miss × oracle", 1, 2), ("recovered", "recovered %", 100, 1),
    ("reach", "reach %", 100, 1), ("proto", "proto %", 100, 1), ("quant", "quant %", 100, 1), ("frozen", "frozen %", 100, 1),
    ("fit_seconds", "fit s", 1, 2), ("cost", "cost × oracle", 1, 3),
]  # fmt: skip


def _cell(values: list[float], scale: float, digits: int) -> str:
    values = [scale * v for v in values if v is not None]
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def markdown_tables(rows: list[dict[str, Any]], columns_wanted: list[tuple[str, str, float, int]] = COLUMNS, level: str = "###") -> str:
    """Mean ± std over seeds per experiment and method; columns that an experiment lacks are left out."""
    lines = []
    for exp in dict.fromkeys(r["experiment"] for r in rows):
        mine = [r for r in rows if r["experiment"] == exp]
        seeds = sorted({r["seed"] for r in mine})
        columns = [c for c in columns_wanted if any(r.get(c[0]) is not None for r in mine)]
        has_verdict = any("verdict" in r for r in mine)
        lines += [f"{level} {exp} (seeds {', '.join(map(str, seeds))}, mean ± std)", ""]
        header = ["method", *[c[1] for c in columns]] + (["verdict"] if has_verdict else [])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in dict.fromkeys(r["method"] for r in mine):
            group = [r for r in mine if r["method"] == method]
            cells = [_cell([r.get(key) for r in group], scale, digits) for key, _, scale, digits in columns]
            if has_verdict:
                cells.append(", ".join(sorted({r.get("verdict", "–") for r in group})))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def worst_retain_class(row: dict[str, Any], oracle: dict[str, Any], holdout: Holdout, skip: set[int]) -> tuple[int, float] | None:
    """The retain class whose accuracy falls furthest below the same seed's oracle's, and by how much (percentage points):
    the verdict's own check (:func:`~unlearning.evaluation.verdict.worst_class`) on a bench row's per-class scores."""
    keys = {c: f"{holdout}_class_acc/{c}" for c in range(10)}
    if not all(key in row and key in oracle for key in keys.values()):
        return None
    as_metrics = [{"class_acc": [100 * r[keys[c]] for c in range(10)]} for r in (row, oracle)]
    return worst_class({**as_metrics[0], "retain_classes": [c for c in range(10) if c not in skip]}, as_metrics[1])


def _grid_axes(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The verdict grid's rows (experiments with evidence) and columns (their methods, the pretrained model and oracle aside)."""
    experiments = list(dict.fromkeys(r["experiment"] for r in rows if "verdict" in r))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows if r["experiment"] in experiments) if m not in ("pretrained", "oracle")]
    return experiments, methods


def verdict_grid(rows: list[dict[str, Any]], holdout: Holdout = "test") -> str:
    """Experiments (rows) by methods (columns): each cell's verdicts over the seeds (``forgets 3/3``), its retain accuracy
    against the oracle's (mean over seeds, points), its cost against the oracle's, and its most damaged retain class. The
    pretrained model's own retain gap comes first: the start, against which a method's gap reads; then each seed's oracle
    against the other seeds' (retraining on another seed: what a per-run retain target asks of retraining itself). A last
    row counts each column's runs within half a point and its ``forgets``."""
    experiments, methods = _grid_axes(rows)
    if len(experiments) < 2 or not methods:
        return ""
    oracle = {(r["experiment"], r["seed"]): r for r in rows if r["method"] == "oracle"}

    def retain_gap(row: dict[str, Any]) -> float:
        return 100 * (row["retain_acc"] - oracle[row["experiment"], row["seed"]]["retain_acc"])

    lines = [
        "### Verdicts by class and method",
        "",
        "Each cell: verdicts over the seeds; retain accuracy minus the oracle's (points, mean over seeds); cost against the oracle;",
        "the share of weights bit-identical to the pretrained model's; the retain class furthest below the oracle's same class",
        "(worst over seeds). The pretrained column is where every method starts: its own retain accuracy minus the oracle's,",
        "and in how many seeds that lies within half a point. The next column is a retrain from scratch on another seed: each",
        "seed's oracle read against every other seed's oracle of the row (the lowest gap, and how many of those pairs lie",
        "within half a point), what a per-run target on the retain gap demands of retraining itself. The last row counts, per",
        "column, the runs (or pairs) within half a point and the runs that get `forgets`.",
        "",
        "| experiment | pretrained | another seed's oracle | " + " | ".join(methods) + " |",
        "|" + "---|" * (len(methods) + 3),
    ]
    within = {column: [0, 0] for column in ("pretrained", "oracles", *methods)}
    forgets = dict.fromkeys(methods, 0)

    def count(column: str, gaps: list[float]) -> str:
        near = sum(g >= -0.5 for g in gaps)
        within[column][0] += near
        within[column][1] += len(gaps)
        return f"{near}/{len(gaps)} within 0.5"

    for exp in experiments:
        start = [retain_gap(r) for r in rows if r["experiment"] == exp and r["method"] == "pretrained"]
        cells = [f"{statistics.mean(start):+.2f} pp, {count('pretrained', start)}" if start else "–"]
        oracles = [r for r in rows if r["experiment"] == exp and r["method"] == "oracle"]
        pairs = [100 * (a["retain_acc"] - b["retain_acc"]) for a, b in itertools.permutations(oracles, 2)]
        cells.append(f"lowest {min(pairs):+.2f} pp, {count('oracles', pairs)}" if pairs else "–")
        for method in methods:
            group = [r for r in rows if r["experiment"] == exp and r["method"] == method]
            if not group:
                cells.append("–")
                continue
            counts = {v: sum(r["verdict"] == v for r in group) for v in dict.fromkeys(r["verdict"] for r in group)}
            forgets[method] += counts.get("forgets", 0)
            verdicts = ", ".join(f"{v} {n}/{len(group)}" for v, n in counts.items())
            gaps = [retain_gap(r) for r in group]
            count(method, gaps)
            cost = statistics.mean(r["cost"] for r in group)
            frozen = statistics.mean(r["frozen"] for r in group) if all("frozen" in r for r in group) else None
            skip = {int(c) for c in re.findall(r"\d", exp.split("to")[0])}  # the forgotten (or replaced) classes
            worst = [w for r in group if (w := worst_retain_class(r, oracle[exp, r["seed"]], holdout, skip)) is not None]
            worst_text = f"; worst {max(worst, key=lambda w: w[1])[0]} {-max(w[1] for w in worst):+.1f}" if worst else ""
            frozen_text = "" if frozen is None else f", {100 * frozen:.0f}% frozen"
            cells.append(f"{verdicts}<br>{statistics.mean(gaps):+.2f} pp, {cost:.2f}×{frozen_text}{worst_text}")
        lines.append(f"| {exp} | " + " | ".join(cells) + " |")
    totals = {column: f"{near}/{n} within 0.5" if n else "–" for column, (near, n) in within.items()}
    totals.update({m: f"{totals[m]}<br>forgets {forgets[m]}/{within[m][1]}" for m in methods if within[m][1]})
    lines.append("| all | " + " | ".join(totals.values()) + " |")
    return "\n".join(lines) + "\n"


VERDICT_COLOURS = {"forgets": "#2e7d32", "damages": "#8e24aa", "hides": "#ef6c00", "incomplete": "#c62828"}


def verdict_figure(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """:func:`verdict_grid` as a picture: one square per experiment and method, coloured by its worst verdict over the seeds
    (``incomplete`` > ``hides`` > ``damages`` > ``forgets``), labelled with how many seeds got ``forgets``."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    experiments, methods = _grid_axes(rows)
    if len(experiments) < 2 or not methods:
        return None
    order = list(VERDICT_COLOURS)  # best first
    grid = np.full((len(experiments), len(methods)), np.nan)
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2.5, 0.42 * len(experiments) + 1.6))
    for i, exp in enumerate(experiments):
        for j, method in enumerate(methods):
            group = [r["verdict"] for r in rows if r["experiment"] == exp and r["method"] == method]
            if group:
                grid[i, j] = max(order.index(v) for v in group)
                ax.text(j, i, f"{group.count('forgets')}/{len(group)}", ha="center", va="center", color="white", fontsize=8)
    ax.imshow(grid, cmap=ListedColormap(list(VERDICT_COLOURS.values())), vmin=-0.5, vmax=len(order) - 0.5, aspect="auto")
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(experiments)), experiments, fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in VERDICT_COLOURS.values()]
    ax.legend(handles, order, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="worst verdict", title_fontsize=8)
    ax.set_title("verdict by class and method (label: seeds that forget)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier_figure(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """The price of forgetting: per experiment with evidence, each method's frozen share (weights bit-identical to the
    pretrained model's, x) against its cost (y, log), coloured by its worst verdict over the seeds. Where a method's
    settings sweep (``masked_reset_u20``, ``masked_reset_u40``...), the points of one family are joined by a line."""
    import matplotlib.pyplot as plt

    experiments, methods = _grid_axes(rows)
    if not experiments or not methods or not all("frozen" in r for r in rows):
        return None
    order = list(VERDICT_COLOURS)
    fig, axes = plt.subplots(1, len(experiments), figsize=(6.2 * len(experiments), 4.8), squeeze=False)
    labels = []
    for ax, exp in zip(axes[0], experiments):
        points: dict[str, tuple[float, float, str]] = {}
        for method in methods:
            group = [r for r in rows if r["experiment"] == exp and r["method"] == method]
            if group:
                worst = order[max(order.index(r["verdict"]) for r in group)]
                points[method] = (100 * statistics.mean(r["frozen"] for r in group), statistics.mean(r["cost"] for r in group), worst)
        families: dict[str, list[str]] = {}
        for method in points:
            families.setdefault(re.sub(r"_[a-z]*\d+$", "", method), []).append(method)
        for members in families.values():
            if len(members) > 1:
                ax.plot(*zip(*sorted(points[m][:2] for m in members)), color="0.75", lw=1, zorder=1)
        for x, y, worst in points.values():
            ax.scatter(x, y, s=45, color=VERDICT_COLOURS[worst], zorder=2)
        ax.set_yscale("log")
        ax.set(xlabel="weights bit-identical to the pretrained model (%)", ylabel="cost (fit time / oracle's)", title=exp, xlim=(-3, 103))
        ax.grid(alpha=0.3)
        labels.append((ax, {method: point[:2] for method, point in points.items()}))
    handles = [plt.Line2D([], [], ls="", marker="o", color=c) for c in VERDICT_COLOURS.values()]
    axes[0][-1].legend(handles, order, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="worst verdict", title_fontsize=8)
    fig.tight_layout()
    for ax, named_points in labels:  # placed where the layout has put the axes for good
        place_labels(ax, named_points)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def place_labels(ax: Any, points: dict[str, tuple[float, float]], fontsize: int = 7) -> None:
    """Label each point with its name beside it, at the first of ten positions around it whose text stays inside the axes
    and overlaps no label already placed and no other point (where none is free, the first inside the axes): the settings
    of one method often sit at one height, a few points apart, where labels all to the right of their points would print
    over each other."""
    fig = ax.figure
    fig.canvas.draw()  # fixes the axes' limits and gives the renderer that measures text
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    marks = {name: ax.transData.transform(xy) for name, xy in points.items()}
    offsets = [(dx, dy, ha) for dy in (3, -10, 12, -19) for dx, ha in ((4, "left"), (-4, "right"))]
    offsets += [(0, 7, "center"), (0, -15, "center")]
    taken: list[Any] = []

    def inside(box: Any) -> bool:
        return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1

    def clear(box: Any, name: str) -> bool:
        padded = box.expanded(1.05, 1.1)
        return not any(padded.overlaps(t) for t in taken) and not any(padded.contains(*m) for n, m in marks.items() if n != name)

    for name, (x, y) in sorted(points.items(), key=lambda item: item[1]):
        candidates = []
        for dx, dy, ha in offsets:
            label = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, ha=ha)
            candidates.append((dx, dy, ha, label.get_window_extent(renderer)))
            label.remove()
        fits = [c for c in candidates if inside(c[3])] or candidates
        dx, dy, ha, box = next((c for c in fits if clear(c[3], name)), fits[0])
        ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, ha=ha)
        taken.append(box)


#: the per-seed table: what every target in the README is checked against
SEED_COLUMNS = [
    ("forget_acc", "forget %"), ("new_acc", "new %"), ("retain_acc", "retain %"), ("acc", "all %"), ("frozen", "frozen %"),
    ("fit_seconds", "fit s"), ("cost", "cost × oracle"),
]  # fmt: skip


def per_seed_tables(rows: list[dict[str, Any]]) -> str:
    """One row per experiment, method and seed: accuracies (%), fit seconds and cost against that seed's oracle."""
    lines = []
    for exp in dict.fromkeys(r["experiment"] for r in rows):
        mine = [r for r in rows if r["experiment"] == exp]
        columns = [c for c in SEED_COLUMNS if any(r.get(c[0]) is not None for r in mine)]
        lines += [
            f"### {exp}, per seed",
            "",
            "| method | seed | " + " | ".join(h for _, h in columns) + " |",
            "|" + "---|" * (len(columns) + 2),
        ]
        for r in sorted(mine, key=lambda r: r["seed"]):
            cells = [
                "–" if r.get(k) is None else f"{r[k]:.3f}" if k == "cost" else f"{r[k]:.2f}" if k == "fit_seconds" else f"{100 * r[k]:.2f}"
                for k, _ in columns
            ]
            lines.append(f"| {r['method']} | {r['seed']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# -- plots --------------------------------------------------------------------------------------
def plots(rows: list[dict[str, Any]], out: Path, holdout: Holdout = "test") -> list[Path]:
    """Per experiment: forget vs retain accuracy, per-class bars before and after, retain accuracy against cost."""
    import matplotlib.pyplot as plt

    from unlearning.figures import class_bars  # selects matplotlib's Agg backend

    held_out = HELD_OUT_NAME[holdout]

    written = []
    for exp in dict.fromkeys(r["experiment"] for r in rows):
        mine = [r for r in rows if r["experiment"] == exp and r.get("forget_acc") is not None]
        if not mine:
            continue
        methods = list(dict.fromkeys(r["method"] for r in mine))
        mean = {
            m: {k: statistics.mean(r[k] for r in mine if r["method"] == m) for k in ("forget_acc", "retain_acc", "cost")} for m in methods
        }

        for x_key, x_label, name in (
            ("forget_acc", f"forget-class {held_out} accuracy (%)", "forget_vs_retain"),
            ("cost", "fit time / oracle fit time", "retain_vs_cost"),
        ):
            fig, ax = plt.subplots(figsize=(6.5, 4.5))
            for m in methods:
                scale = 100 if x_key == "forget_acc" else 1
                marker, size = ("*", 220) if m == "oracle" else ("o", 50)
                ax.scatter(scale * mean[m][x_key], 100 * mean[m]["retain_acc"], marker=marker, s=size, label=m)
                ax.annotate(m, (scale * mean[m][x_key], 100 * mean[m]["retain_acc"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
            if x_key == "cost":
                ax.set_xscale("log")
            ax.set(xlabel=x_label, ylabel=f"retain-class {held_out} accuracy (%)", title=f"{exp}: {name.replace('_', ' ')}")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = out / f"{exp}_{name}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)

        per_class = {
            m: [statistics.mean(r[f"{holdout}_class_acc/{c}"] for r in mine if r["method"] == m) for c in range(10)]
            for m in methods if f"{holdout}_class_acc/0" in mine[0]
        }  # fmt: skip
        if per_class:
            fig = class_bars(per_class, f"{exp}: per-class {held_out} accuracy, before (pretrained) and after")
            fig.set_size_inches(max(6, 0.9 * len(per_class) + 4), 3.5)
            path = out / f"{exp}_per_class.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def bench_parser() -> ArgumentParser:
    """``unlearning bench``'s arguments; a config file (``-c``) sets any of them."""
    parser = ArgumentParser(prog="unlearning bench", description=__doc__.splitlines()[0], default_config_files=[])
    parser.add_argument("-c", "--config", action="config")
    parser.add_argument("--seeds", type=list[int], default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--experiments", type=list[Experiment], default=[])
    parser.add_argument("--only", type=list[str] | None, default=None, help="run only the experiments with these names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 keeps timings stable on a shared CPU")
    parser.add_argument(
        "--timing_repeats",
        type=int,
        default=1,
        help="fits timed per oracle and method; the cost takes the best of each (the VM's noise only adds time)",
    )
    parser.add_argument(
        "--holdout",
        type=Holdout,
        default="test",
        help="what the runs and the evidence are scored on: the test set, or the validation split (to tune a method without seeing the test set)",
    )
    parser.add_argument(
        "--allow_module",
        type=list[str],
        default=[],
        help="modules whose network classes the runs' checkpoints may name, beyond the project's",
    )
    parser.add_argument(
        "--launcher", type=Launcher, default="serial",
        help="how the cells (experiment x seed) run: one after another here, --jobs at once on this machine, or as a SLURM job array",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="with --launcher local: cells running at once")
    parser.add_argument("--slurm", type=Slurm, default=Slurm(), help="with --launcher slurm: the job array's resources")
    parser.add_argument("--speed_repeats", type=int, default=3, help="fits with the plain torch loop interleaved; 0 skips the comparison")
    parser.add_argument(
        "--frontier", type=bool, default=False,
        help="add the figure of frozen share against cost, coloured by verdict, to the --docs section (configs/bench_frontier.yaml)",
    )  # fmt: skip
    parser.add_argument(
        "--docs", type=Path | None, default=None, help="a page whose section for this config the tables replace (docs/results.md)"
    )
    parser.add_argument(
        "--headline",
        type=Path | None,
        default=None,
        help="a page whose headline section gets the short table (README.md); a run's verdict that differs from the one the "
        "page recorded fails the bench (exit 1) after writing the new one",
    )
    return parser


def bench(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the grid a config describes and write ``results.json``, ``results.md`` and the plots."""
    parser = bench_parser()
    try:
        args = parser.instantiate(parser.parse_args(argv))
    except ArgumentError as err:
        raise UsageError(parse_error(str(err), "bench", list(argv or []))) from None
    experiments = [e for e in args.experiments if args.only is None or e.name in args.only]
    if not experiments:
        raise UsageError("no experiments to run: give --experiments or a config that lists them (configs/bench.yaml)")
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise UsageError(
            f"experiment names repeat: {sorted({n for n in names if names.count(n) > 1})}; each names its rows and run folders"
        )
    if not args.seeds:
        raise UsageError("--seeds must list at least one seed (a grid of no runs would overwrite the tables with empty ones)")
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds repeats a seed: {args.seeds}")
    if args.timing_repeats < 1:
        raise UsageError(f"--timing_repeats must be at least 1, got {args.timing_repeats}")
    if args.speed_repeats < 0:
        raise UsageError(f"--speed_repeats must be 0 (no speed comparison) or more, got {args.speed_repeats}")
    if args.holdout == "val" and args.headline is not None:
        raise UsageError("--headline takes test-set results; with --holdout val give --headline null")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    out = Path(args.out)
    _check_holdout(out, args.holdout)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cells = [Cell(e, seed, args.holdout, args.timing_repeats, args.threads, args.allow_module) for e in experiments for seed in args.seeds]
    rows = run_grid(cells, out, args.launcher, args.jobs, args.slurm)
    with torch_threads(args.threads), quiet_lightning():  # restored afterwards: a bench run from Python leaves the caller's settings alone
        speed = compare(repeats=args.speed_repeats) if args.speed_repeats else None
    seconds = time.perf_counter() - start
    machine = f"{platform.processor() or platform.machine()}, {args.threads} torch thread(s), {_cores()} cores, torch {torch.__version__}"
    with atomic_file(out / "results.json") as f:  # two benches may share a results folder
        f.write(
            json.dumps(
                {
                    "machine": machine,
                    "seconds": seconds,
                    "holdout": args.holdout,
                    "experiments": [asdict(e) for e in experiments],
                    "rows": rows,
                    "speed": speed and asdict(speed),
                },
                indent=1,
            ).encode()
        )
    tables = markdown_tables(rows)
    if speed is not None:
        tables += f"\n### speed: `fit -c configs/pretrain.yaml` against a plain torch loop interleaved with it, same work\n\n```\n{speed.report()}\n```\n"
    source = " ".join(["unlearning bench", *(argv or [])])
    reused = sum(r["reused"] for r in rows)
    reuse_note = (
        f" (reusing {reused} of {len(rows)} fits, and their timings, from an earlier bench into {out}, which a fresh clone lacks: "
        f"this command there computes them all)"
        if reused
        else ""
    )
    produced = f"Produced by `{source}` in {seconds / 60:.1f} min{reuse_note} on {machine}; scored on {HELD_OUT_NAME[args.holdout]} data."
    grid = verdict_grid(rows, args.holdout)

    def beside_docs(figure: Path, kind: str) -> str:
        """Copy ``figure`` next to the --docs page as ``<config>_<kind>.png``; its name, for the page's link."""
        copy = Path(args.docs).parent / f"{Path(args.config[0]).stem if args.config else 'bench'}_{kind}.png"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, copy)
        return copy.name

    if grid and verdict_figure(rows, out / "verdict_grid.png") is not None and args.docs is not None:
        grid += f"\n![verdicts by class and method]({beside_docs(out / 'verdict_grid.png', 'verdicts')})\n"
    if args.frontier and frontier_figure(rows, out / "frontier.png") is not None and args.docs is not None:
        figure = beside_docs(out / "frontier.png", "frontier")
        grid += (
            "\n### The price of forgetting\n\nEach method's share of weights bit-identical to the pretrained model's against its cost, "
            f"coloured by its worst verdict over the seeds; a line joins the settings of one method.\n\n![frozen share against cost]({figure})\n"
        )
    report = f"{produced}\n\n{grid}\n{tables}\n{phase_tables(rows)}\n{per_seed_tables(rows)}"
    with atomic_file(out / "results.md") as f:
        f.write(report.encode())
    written = [out / "results.md", out / "results.json"]
    section = (str(args.config[0]) if args.config else "bench") + (" --holdout val" if args.holdout == "val" else "")
    if args.docs is not None:
        replace_section(args.docs, section, f"## `{section}`\n\n{report}")
        written.append(args.docs)
    changed: list[str] = []
    if args.headline is not None:
        verdicts = headline_verdicts(rows)
        changed = changed_verdicts(read_section(args.headline, "headline"), verdicts)
        replace_section(
            args.headline,
            "headline",
            f"{headline_tables(rows)}\n_{produced} Every table: [docs/results.md](docs/results.md)._\n\n"
            f"{VERDICTS_MARK.format(json.dumps(verdicts, sort_keys=True))}\n",
        )
        written.append(args.headline)
    plots(rows, out, args.holdout)
    print(per_seed_tables(rows))
    print(tables)
    print(f"bench: {len(rows)} rows in {seconds / 60:.1f} min; wrote {', '.join(map(str, written))} and plots")
    if changed:
        raise HeadlineChanged(
            f"{len(changed)} verdict(s) {args.headline} documented came out otherwise (the page shows the new ones): {'; '.join(changed)}"
        )
    return rows


#: (column key, header, scale, digits) of the README's short table
HEADLINE = [
    ("forget_acc", "forget %", 100, 2),
    ("retain_acc", "retain %", 100, 2),
    ("new_acc", "new %", 100, 2),
    ("frozen", "frozen %", 100, 1),
    ("cost", "cost × oracle", 1, 3),
]


#: how the headline section records its verdicts for the next bench to compare with (an HTML comment: invisible on the page)
VERDICTS_MARK = "<!-- verdicts: {} -->"


def headline_verdicts(rows: list[dict[str, Any]]) -> dict[str, str]:
    """``experiment/method/seed<k>`` -> that run's verdict, for every row that has one."""
    return {f"{r['experiment']}/{r['method']}/seed{r['seed']}": r["verdict"] for r in rows if "verdict" in r}


def changed_verdicts(section: str | None, verdicts: dict[str, str]) -> list[str]:
    """Each ``experiment/method/seed<k>`` whose verdict the headline ``section`` recorded and ``verdicts`` has otherwise, as
    ``forget9/reset_retrain/seed0: forgets -> hides``; what only one of them holds is no change (a bench of fewer
    experiments or seeds)."""
    found = re.search(re.escape(VERDICTS_MARK).replace(r"\{\}", "(.*?)"), section or "")
    documented = json.loads(found.group(1)) if found else {}
    return [
        f"{key}: {documented[key]} -> {verdicts[key]}" for key in sorted(documented) if key in verdicts and documented[key] != verdicts[key]
    ]


def headline_tables(rows: list[dict[str, Any]]) -> str:
    """Per experiment: each method's forget, retain and new accuracy, cost and verdicts, mean ± std over seeds."""
    return markdown_tables(rows, HEADLINE, level="####")


PHASES = ("setup", "fit_start", "train_start", "steps", "validation", "checkpoint", "end", "loop")


def phase_tables(rows: list[dict[str, Any]]) -> str:
    """Where each method's fit time goes (the bench's own fit, milliseconds, median over seeds): the fixed costs beside the steps."""
    lines = []
    for exp in dict.fromkeys(r["experiment"] for r in rows):
        mine = [r for r in rows if r["experiment"] == exp and r.get("phases")]
        if not mine:
            continue
        lines += [f"### {exp}: where a fit's time goes (ms, median over seeds; see unlearning.runs.PhaseTimer)", ""]
        lines += ["| method | " + " | ".join(PHASES) + " | fit |", "|" + "---|" * (len(PHASES) + 2)]
        for method in dict.fromkeys(r["method"] for r in mine):
            group = [r for r in mine if r["method"] == method]
            cells = [f"{1000 * statistics.median(r['phases'][p] for r in group):.0f}" for p in PHASES]
            total = 1000 * statistics.median(sum(r["phases"].values()) for r in group)
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {total:.0f} |")
        lines.append("")
    return "\n".join(lines)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's per-fit notices and each fit's result table off while the bench's own bar runs."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "unlearning.summary")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
