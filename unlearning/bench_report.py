"""The bench's tables and figures, built from its rows alone: any launcher, and any rerun that reuses finished cells,
gives the same page. ``unlearning.bench`` runs the grid and calls these."""

from __future__ import annotations

import itertools
import json
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from unlearning.evaluation.data import HELD_OUT_NAME, Holdout
from unlearning.evaluation.verdict import worst_class

#: (column key, header, scale, digits)
COLUMNS = [
    ("forget_acc", "forget %", 100, 2), ("retain_acc", "retain %", 100, 2), ("acc", "all %", 100, 2), ("new_acc", "new %", 100, 2),
    ("mia", "MIA %", 100, 1), ("avg_gap", "avg gap", 100, 2), ("relearn_steps", "relearn steps", 1, 0),
    ("probe_auc", "probe AUC", 1, 3), ("probe_ratio", "probe miss × oracle", 1, 2), ("recovered", "recovered %", 100, 1),
    ("reach", "reach %", 100, 1), ("proto", "proto %", 100, 1), ("quant", "quant %", 100, 1), ("frozen", "frozen %", 100, 1),
    ("fit_seconds", "fit s", 1, 2), ("cost", "cost × oracle", 1, 3), ("compute", "FLOPs × oracle", 1, 3),
]  # fmt: skip


def _cell(values: list[float], scale: float, digits: int) -> str:
    values = [scale * v for v in values if v is not None]
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def draws(rows: list[dict[str, Any]]) -> int:
    """How many fits of each method a seed had (``unlearning bench --draws``); rows kept before draws existed have one."""
    return 1 + max((r.get("draw", 0) for r in rows), default=0)


def run_label(row: dict[str, Any]) -> str:
    """A row's seed, and its draw where it is not the seed's own fit: ``2``, ``2 (draw 1)``."""
    return f"{row['seed']}" + (f" (draw {row['draw']})" if row.get("draw") else "")


def provenance_note(rows: list[dict[str, Any]], code: str, machine: str) -> str:
    """Where a bench's fits came from, for its report: a reused fit may have been made by other code or on another
    machine (floats differ between CPU models), and a reader must see that. ``code`` and ``machine``: this bench's."""
    other_code = sorted({r["code"] for r in rows if r.get("code") not in (None, code)})
    other_machine = sorted({r["machine"] for r in rows if r.get("code") == code and r.get("machine") != machine})
    unrecorded = sum(r.get("code") is None for r in rows)
    if not other_code and not other_machine and not unrecorded:
        return f" All {len(rows)} fits were made by this code (`{code}`) on this machine."
    counts = [
        f"{sum(r.get('code') in other_code for r in rows)} by other code ({', '.join(f'`{c}`' for c in other_code)})" if other_code else "",
        f"{sum(r.get('code') == code and r.get('machine') in other_machine for r in rows)} by this code (`{code}`) on "
        f"{'; '.join(other_machine)}" if other_machine else "",
        f"{unrecorded} before fits recorded their code and machine" if unrecorded else "",
    ]  # fmt: skip
    return (
        f" Of its {len(rows)} fits, {', '.join(c for c in counts if c)}: `--reuse this_code` (or `this_machine`) refits them"
        " in a folder of their own."
    )


def markdown_tables(rows: list[dict[str, Any]], columns_wanted: list[tuple[str, str, float, int]] = COLUMNS, level: str = "###") -> str:
    """Mean ± std over seeds per experiment and method; columns that an experiment lacks are left out."""
    lines = []
    for exp in dict.fromkeys(r["experiment"] for r in rows):
        mine = [r for r in rows if r["experiment"] == exp]
        seeds = sorted({r["seed"] for r in mine})
        columns = [c for c in columns_wanted if any(r.get(c[0]) is not None for r in mine)]
        has_verdict = any("verdict" in r for r in mine)
        each = f", {draws(mine)} draws each" if draws(mine) > 1 else ""
        lines += [f"{level} {exp} (seeds {', '.join(map(str, seeds))}{each}, mean ± std)", ""]
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


#: the rows every method is read against, which are no methods themselves
REFERENCES = ("pretrained", "oracle")


def _grid_axes(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The verdict grid's rows (experiments with evidence) and columns (their methods, the pretrained model and oracle aside)."""
    experiments = list(dict.fromkeys(r["experiment"] for r in rows if "verdict" in r))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows if r["experiment"] in experiments) if m not in REFERENCES]
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

    drawn = [
        f"Each seed's methods ran {draws(rows)} times (draws: their own randomness on the seed's model, oracle and split);",
        "a method's counts are over seeds and draws.",
    ]
    lines = [
        "### Verdicts by class and method",
        "",
        "Each cell: verdicts over the seeds; retain accuracy minus the oracle's (points, mean over seeds); cost against the oracle",
        "(fit time, and where the bench counted them, FLOPs);",
        "the share of weights bit-identical to the pretrained model's; the retain class furthest below the oracle's same class",
        "(worst over seeds). The pretrained column is where every method starts: its own retain accuracy minus the oracle's,",
        "and in how many seeds that lies within half a point. The next column is a retrain from scratch on another seed: each",
        "seed's oracle read against every other seed's oracle of the row (the lowest gap, and how many of those pairs lie",
        "within half a point), what a per-run target on the retain gap demands of retraining itself. The last row counts, per",
        "column, the runs (or pairs) within half a point and the runs that get `forgets`.",
        *(drawn if draws(rows) > 1 else []),
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
            compute = f" ({statistics.mean(r['compute'] for r in group):.2f}× FLOPs)" if all("compute" in r for r in group) else ""
            frozen = statistics.mean(r["frozen"] for r in group) if all("frozen" in r for r in group) else None
            skip = {int(c) for c in re.findall(r"\d", exp.split("to")[0])}  # the forgotten (or replaced) classes
            worst = [w for r in group if (w := worst_retain_class(r, oracle[exp, r["seed"]], holdout, skip)) is not None]
            worst_text = f"; worst {max(worst, key=lambda w: w[1])[0]} {-max(w[1] for w in worst):+.1f}" if worst else ""
            frozen_text = "" if frozen is None else f", {100 * frozen:.0f}% frozen"
            cells.append(f"{verdicts}<br>{statistics.mean(gaps):+.2f} pp, {cost:.2f}×{compute}{frozen_text}{worst_text}")
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
    runs = "seeds" if draws(rows) == 1 else f"runs ({draws(rows)} draws a seed)"
    ax.set_title(f"verdict by class and method (label: {runs} that forget)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier_figure(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """The price of forgetting: per experiment with evidence, each method's frozen share (weights bit-identical to the
    pretrained model's, x) against its cost (y, log), coloured by its worst verdict over the seeds. The cost is
    :func:`frontier_cost`'s. The points of one sweep (:func:`sweeps`) are joined by a line."""
    import matplotlib.pyplot as plt

    experiments, methods = _grid_axes(rows)
    if not experiments or not methods or not all("frozen" in r for r in rows):
        return None
    cost, cost_label = frontier_cost(rows)
    order = list(VERDICT_COLOURS)
    fig, axes = plt.subplots(1, len(experiments), figsize=(6.2 * len(experiments), 4.8), squeeze=False)
    labels = []
    for ax, exp in zip(axes[0], experiments):
        points: dict[str, tuple[float, float, str]] = {}
        for method in methods:
            group = [r for r in rows if r["experiment"] == exp and r["method"] == method]
            if group:
                worst = order[max(order.index(r["verdict"]) for r in group)]
                points[method] = (100 * statistics.mean(r["frozen"] for r in group), statistics.mean(r[cost] for r in group), worst)
        for members in sweeps(list(points)):
            ax.plot(*zip(*sorted(points[m][:2] for m in members)), color="0.75", lw=1, zorder=1)
        for x, y, worst in points.values():
            ax.scatter(x, y, s=45, color=VERDICT_COLOURS[worst], zorder=2)
        ax.set_yscale("log")
        ax.set(xlabel="weights bit-identical to the pretrained model (%)", ylabel=cost_label, title=exp, xlim=(-3, 103))
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


def sweeps(methods: list[str]) -> list[list[str]]:
    """The methods that sweep one setting of one method: ``masked_reset_u20`` and ``masked_reset_u40`` sweep ``u`` of
    ``masked_reset``, which (its config's own value) joins them; ``masked_reset_s88`` sweeps another setting, so it
    joins the config alone. Only sweeps of two methods or more."""
    families: dict[tuple[str, str], list[str]] = {}
    for method in methods:
        if match := re.fullmatch(r"(.+)_([a-z]*)\d+", method):
            families.setdefault((match[1], match[2]), []).append(method)
    lines = [members + ([base] if base in methods else []) for (base, _), members in families.items()]
    return [line for line in lines if len(line) > 1]


def frontier_cost(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The row field the frontier's y axis reads, and its label: ``compute`` (FLOPs over the oracle's, which no machine's
    speed or load moves) where every method's row has it (``count_flops``; the pretrained model's never has), else
    ``cost`` (fit time over the oracle's)."""
    methods = [r for r in rows if r["method"] not in REFERENCES]
    if methods and all("compute" in r for r in methods):
        return "compute", "compute (FLOPs / oracle's)"
    return "cost", "cost (fit time / oracle's)"


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


#: the per-seed table: what every target in the README is checked against, and which seed got which verdict
SEED_COLUMNS = [
    ("forget_acc", "forget %"), ("new_acc", "new %"), ("retain_acc", "retain %"), ("acc", "all %"), ("frozen", "frozen %"),
    ("probe_ratio", "probe miss × oracle (90%)"), ("fit_seconds", "fit s"), ("cost", "cost × oracle"),
    ("compute", "FLOPs × oracle"), ("verdict", "verdict"),
]  # fmt: skip


def _seed_cell(key: str, row: dict[str, Any]) -> str:
    """A per-seed table's entry: ratios to three decimals, seconds to two, accuracies and shares in percent; the probe
    ratio with its interval over resampled held-out images, where the evidence gave one."""
    value = row.get(key)
    if value is None:
        return "–"
    if key == "verdict":
        return value
    if key == "probe_ratio":
        interval = row.get("probe_ratio_interval")
        return f"{value:.2f}" + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else "")
    if key in ("cost", "compute"):
        return f"{value:.3f}"
    return f"{value:.2f}" if key == "fit_seconds" else f"{100 * value:.2f}"


def per_seed_tables(rows: list[dict[str, Any]]) -> str:
    """One row per experiment, method and seed: accuracies (%), the probe ratio, fit seconds and cost against that seed's
    oracle, and the verdict."""
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
        for r in sorted(mine, key=lambda r: (r["seed"], r.get("draw", 0))):
            cells = [_seed_cell(k, r) for k, _ in columns]
            lines.append(f"| {r['method']} | {run_label(r)} | " + " | ".join(cells) + " |")
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


#: (column key, header, scale, digits) of the README's short table
HEADLINE = [
    ("forget_acc", "forget %", 100, 2),
    ("retain_acc", "retain %", 100, 2),
    ("new_acc", "new %", 100, 2),
    ("frozen", "frozen %", 100, 1),
    ("cost", "cost × oracle", 1, 3),
    ("compute", "FLOPs × oracle", 1, 3),
]


#: how the headline section records its verdicts for the next bench to compare with (an HTML comment: invisible on the page)
VERDICTS_MARK = "<!-- verdicts: {} -->"


def headline_verdicts(rows: list[dict[str, Any]]) -> dict[str, str]:
    """``experiment/method/seed<k>`` (``.../seed<k>/draw<d>`` for a draw after the seed's own) -> that run's verdict, for
    every row that has one."""
    return {
        f"{r['experiment']}/{r['method']}/seed{r['seed']}" + (f"/draw{r['draw']}" if r.get("draw") else ""): r["verdict"]
        for r in rows
        if "verdict" in r
    }


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
