"""``unlearning bench -c configs/bench.yaml``: every number in the README from the configs users run.

For each experiment and seed it pretrains, retrains the oracle, runs every method from the
pretrained weights, scores them on the test set (``--holdout val``: on the validation split, for
tuning), and (for class experiments) runs the evidence suite on the same held-out samples against
that seed's oracle and pretrained model (``--draws N``: each method N times, each fit its own draw of the method's
randomness on the seed's model, split and oracle). The oracle and every method are timed
``--timing_repeats`` times (the cost takes the best of each); with ``--count_flops`` each is fitted once more under
torch's FLOP counter, for a cost in operations beside the one in seconds. A finished run leaves ``result.json`` in its
folder and is not run again; a run that died leaves ``last.ckpt`` and is resumed from it. It writes
``results/`` (or ``--out``): ``results.json`` with every raw number, ``results.md`` with mean ± std
tables and per-seed rows, and PNG plots (:mod:`unlearning.bench_report`, from the rows alone). Last, it times Lightning against a plain torch loop
(:mod:`unlearning.speed`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import InitVar, asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from jsonargparse import ArgumentError, ArgumentParser
from tqdm import tqdm

from unlearning.bench_report import (
    VERDICTS_MARK,
    changed_verdicts,
    frontier_cost,
    frontier_figure,
    headline_tables,
    headline_verdicts,
    markdown_tables,
    per_seed_tables,
    phase_tables,
    plots,
    provenance_note,
    verdict_figure,
    verdict_grid,
)
from unlearning.checkpoints import net_state_dict
from unlearning.errors import CellsFailed, HeadlineChanged, UsageError
from unlearning.evaluation import Thresholds, evaluate_against
from unlearning.evaluation.data import HELD_OUT_NAME, Holdout
from unlearning.evaluation.inputs import check_threads, torch_threads
from unlearning.files import atomic_file
from unlearning.launch import Launcher, Slurm, launch
from unlearning.pages import read_section, replace_section
from unlearning.provenance import code_fingerprint, machine_name
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

    def entries(self) -> dict[str, list[str]]:
        """Each run's config and overrides, named as the bench config names them."""
        return {"pretrain": self.pretrain, "oracle": self.oracle} | {f"methods: {m}": e for m, e in self.methods.items()}

    def __post_init__(self, args: list[str] | None) -> None:
        for where, entry in self.entries().items():
            if not entry or not entry[0].endswith((".yaml", ".yml")):
                raise UsageError(f"experiment {self.name}: {where}: starts with a config file (.yaml), got {entry}")
        if args:  # right after each entry's config path
            self.pretrain, self.oracle, *methods = ([e[0], *args, *e[1:]] for e in (self.pretrain, self.oracle, *self.methods.values()))
            self.methods = dict(zip(self.methods, methods))
        for method, upstream in self.after.items():
            if (
                method not in self.methods
                or upstream not in self.methods
                or list(self.methods).index(upstream) > list(self.methods).index(method)
            ):
                raise UsageError(f"experiment {self.name}: after: {method}: {upstream} needs both methods listed, {upstream} first")


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON at ``path``, renamed into place: a reader never sees half a file."""
    with atomic_file(path) as f:
        f.write(json.dumps(value, indent=1).encode())


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
        "code": code_fingerprint(), "machine": machine_name(), holdout: run.scores,
    }  # fmt: skip
    write_json(done, result)
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
        write_json(cache, rounds)
    best = {}
    for name in runs:
        times = [r[name] for r in rounds] + ([] if first[name]["resumed"] else [first[name]["fit_seconds"]])
        best[name] = min(times or [first[name]["fit_seconds"]])
    return best


def _fit_flops(runs: dict[str, list[str]], where: Path, seed: int, bar: tqdm) -> dict[str, int]:
    """Each run's floating-point operations, counted in one more fit of each (:func:`~unlearning.runs.fit_and_test`'s
    ``count_flops``): a cost that neither the machine's speed nor its load moves, beside the timed one. Kept in
    ``flops.json``, so a rerun does not count them again."""
    cache = where / "flops.json"
    flops = json.loads(cache.read_text()) if cache.exists() else {}
    for name, args in runs.items():
        if name not in flops:
            bar.set_postfix_str(f"{where.parent.name}/{where.name}: counting {name}'s FLOPs")
            with tempfile.TemporaryDirectory() as scratch:
                flops[name] = fit_and_test(*args, root=Path(scratch) / name, seed=seed, score=None, count_flops=True).flops
            write_json(cache, flops)
        bar.update()
    return flops


def config_settings(path: Path) -> Any:
    """What a config file sets, parsed, for :attr:`Cell.key`; a file that does not parse counts by its text (its fit then
    reports the error)."""
    text = path.read_text()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


#: what draw ``d`` of a seed's methods adds to the seed, times ``d``, for its ``seed_everything``
DRAW_SEED_STRIDE = 1000


def draw_overrides(seed: int, draw: int) -> list[str]:
    """What draw ``draw`` of a method adds to its fit: its own randomness (batches, ranked images, a reset's fresh draw)
    on the seed's split, from the seed's pretrained model, judged against the seed's oracle. Draw 0 is the seed's own fit."""
    return [] if draw == 0 else [f"--seed_everything={seed + DRAW_SEED_STRIDE * draw}", f"--data.init_args.split_seed={seed}"]


#: which earlier fits a bench reuses: any its cells' configs match, or only those by this code (and on this machine)
Reuse = Literal["any_code", "this_code", "this_machine"]


def provenance_key(reuse: Reuse) -> str | None:
    """What of the fits' origin :attr:`Cell.key` holds under ``reuse``: nothing, the code's fingerprint, or that and the
    machine's name. A fit made elsewhere then lies in another cell's folder and is never mixed in."""
    if reuse == "any_code":
        return None
    return code_fingerprint() if reuse == "this_code" else f"{code_fingerprint()} on {machine_name()}"


def stage_name(method: str, draw: int) -> str:
    """A method's fit in a cell: its name for draw 0 (the folder it always had), ``<method>.draw<d>`` for the others."""
    return method if draw == 0 else f"{method}.draw{draw}"


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
    count_flops: bool = False
    draws: int = 1  # fits of each method, each its own draw of the method's randomness (:func:`draw_overrides`)
    provenance: str | None = None  # :func:`provenance_key`: the code (and machine) its fits must come from, or any

    #: fields added after cells were first kept, at the value that is the cell as it was before them
    LATER_FIELDS: ClassVar[dict[str, Any]] = {"count_flops": False, "draws": 1, "provenance": None}

    @property
    def key(self) -> str:
        """A hash of the cell's fields and of the settings in every config file its entries name (:data:`LATER_FIELDS` only
        where set otherwise: a cell that counts no FLOPs, draws once and takes fits from any code is the cell it was
        before these options existed, and its finished runs are reused).

        A file counts by what it sets, not how it is written: a comment, a blank line or the order of a mapping's keys
        refits nothing (:func:`config_settings`).
        """
        entries = [self.experiment.pretrain, self.experiment.oracle, *self.experiment.methods.values()]
        files = {
            arg: config_settings(Path(arg)) for args in entries for arg in args if arg.endswith((".yaml", ".yml")) and Path(arg).is_file()
        }
        fields = {k: v for k, v in asdict(self).items() if k not in self.LATER_FIELDS or v != self.LATER_FIELDS[k]}
        return hashlib.sha256(json.dumps([fields, files], sort_keys=True, default=str).encode()).hexdigest()[:12]

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


def finished(path: Path) -> bool:
    """Whether a cell's file exists and its verdicts were judged under today's thresholds. A recalibrated limit is not part
    of the cell's key (nothing is fitted again), but it runs the cell again: its fits and timings are reused, and its
    evidence is judged again from the metrics the evidence file keeps (:func:`~unlearning.evaluation.run.evaluate_against`)."""
    return path.exists() and json.loads(path.read_text()).get("thresholds") == asdict(Thresholds())


def run_cell(cell: Cell, out: Path, cwd: str | None = None, bar: tqdm | None = None) -> Path:
    """Run one cell (unless it is :func:`finished`) and write its rows to :func:`cell_file`; what every launcher calls.

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
        if finished(target):
            return target
        bar = bar if bar is not None else tqdm(disable=True)
        start = time.perf_counter()
        with torch_threads(cell.threads), quiet_lightning():
            rows = cell_rows(cell, out / "runs" / cell.experiment.name / f"seed{cell.seed}-{cell.key}", bar)
        write_json(target, {"cell": asdict(cell), "thresholds": asdict(Thresholds()), "seconds": time.perf_counter() - start, "rows": rows})
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
    method_of = {"pretrained": ("pretrained", 0), "oracle": ("oracle", 0)}  # stage -> (method, draw)
    for draw in range(cell.draws):
        for method, args in exp.methods.items():
            stage, upstream = stage_name(method, draw), exp.after.get(method)
            start = stages[stage_name(upstream, draw) if upstream else "pretrained"]["checkpoint"]
            timed_runs[stage] = [*args, f"--model.init_args.weights={start}", *draw_overrides(seed, draw)]
            stages[stage] = _run(timed_runs[stage], where / stage, seed, holdout, bar)
            method_of[stage] = method, draw
    seconds = {"pretrained": stages["pretrained"]["fit_seconds"]}
    seconds |= _best_fit_seconds(timed_runs, stages, where, seed, cell.timing_repeats, bar)
    flops = _fit_flops(timed_runs, where, seed, bar) if cell.count_flops else {}
    for draw in range(cell.draws):
        for method, upstream in exp.after.items():  # listed in order, so an upstream's own chain is summed first
            stage, upstream_stage = stage_name(method, draw), stage_name(upstream, draw)
            seconds[stage] += seconds[upstream_stage]
            if flops:
                flops[stage] += flops[upstream_stage]
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
            "experiment": exp.name, "method": method_of[stage][0], "seed": seed, "draw": method_of[stage][1],
            "phases": None if result["resumed"] else result.get("phases"), "reused": result.get("reused", False),
            "checkpoint": result["checkpoint"], "code": result.get("code"), "machine": result.get("machine"),
            "fit_seconds": seconds[stage], "cost": seconds[stage] / seconds["oracle"], "frozen": frozen[stage],
            **({"flops": flops[stage], "compute": flops[stage] / flops["oracle"]} if stage in flops else {}),
            **{k.removeprefix(f"{holdout}/"): v for k, v in result[holdout].items()}, **evidence.get(stage, {}),
        }
        for stage, result in stages.items()
    ]  # fmt: skip


def fits_per_cell(cell: Cell) -> int:
    methods = len(cell.experiment.methods) * cell.draws
    return 2 + methods + (cell.timing_repeats - 1 + cell.count_flops) * (1 + methods)


def run_grid(
    cells: list[Cell], out: Path, launcher: Launcher = "serial", jobs: int = 2, slurm: Slurm | None = None
) -> list[dict[str, Any]]:
    """Every cell's rows, in the cells' order, each cell run by ``launcher`` unless it is :func:`finished`; the rows are read back from
    the cell files alone, so every launcher gives the same tables. Cells that fail are reported in one line each (with their
    log), after the others have finished; then :class:`CellsFailed` is raised."""
    todo = [cell for cell in cells if not finished(cell_file(out, cell))]
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


def bench_parser() -> ArgumentParser:
    """``unlearning bench``'s arguments; a config file (``-c``) sets any of them."""
    parser = ArgumentParser(prog="unlearning bench", description=__doc__.splitlines()[0], default_config_files=[], exit_on_error=False)
    parser.add_argument("-c", "--config", action="config")
    parser.add_argument("--seeds", type=list[int] | int, default=[0, 1, 2], help="a seed or a list: --seeds 0, --seeds [0,1]")
    parser.add_argument(
        "--draws", type=int, default=1,
        help="fits of each method per seed: the seed's pretrained model, oracle and split, each fit its own seed_everything "
        f"(draw d: seed + {DRAW_SEED_STRIDE}·d), to tell how often a method forgets one model from how it does across models",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="the folder of the runs, each cell's rows, results.md, results.json and plots"
    )
    parser.add_argument(
        "--experiments",
        type=list[Experiment],
        default=[],
        help="what runs: each a pretrain config, its oracle and the methods (in the config file)",
    )
    parser.add_argument(
        "--only", type=list[str] | str | None, default=None, help="run only the experiments with these names: --only forget9, --only [forget9,forget2]"
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 keeps timings stable on a shared CPU")
    parser.add_argument(
        "--timing_repeats",
        type=int,
        default=1,
        help="fits timed per oracle and method; the cost takes the best of each (the VM's noise only adds time)",
    )
    parser.add_argument(
        "--count_flops",
        type=bool,
        default=False,
        help="count each oracle's and method's FLOPs in one more fit (several times slower): a `compute` column beside the timed cost",
    )
    parser.add_argument(
        "--holdout",
        type=Holdout,
        default="test",
        help="what the runs and the evidence are scored on: the test set, or the validation split (to tune a method without seeing the test set)",
    )
    parser.add_argument(
        "--allow_module",
        type=list[str] | str,
        default=[],
        help="modules whose network classes the runs' checkpoints may name, beyond the project's: --allow_module mypkg.nets, or a list",
    )
    parser.add_argument(
        "--launcher", type=Launcher, default="serial",
        help="how the cells (experiment x seed) run: one after another here, --jobs at once on this machine, or as a SLURM job array",
    )  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="with --launcher local: cells running at once")
    parser.add_argument("--slurm", type=Slurm, default=Slurm(), help="with --launcher slurm: the job array's resources")
    parser.add_argument(
        "--reuse", type=Reuse, default="any_code",
        help="which fits an earlier bench left in --out are reused: any whose cell's configs match (the report counts those "
        "made by other code or on another machine); this_code: only those by this package's code (comments and docstrings "
        "aside); this_machine: and on this CPU model and torch build. The others are refitted, in a folder of their own",
    )  # fmt: skip
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
        raise UsageError(parse_error(str(err), "bench", list(argv or []), parser)) from None
    args.seeds, args.only, args.allow_module = (
        [x] if isinstance(x, (int, str)) else x for x in (args.seeds, args.only, args.allow_module)
    )  # one, or a list
    unknown = sorted(set(args.only or []) - {e.name for e in args.experiments})
    if unknown:
        raise UsageError(f"--only names no experiment of this grid: {unknown} (it has {[e.name for e in args.experiments]})")
    experiments = [e for e in args.experiments if args.only is None or e.name in args.only]
    if not experiments:
        raise UsageError("no experiments to run: give --experiments or a config that lists them (configs/bench.yaml)")
    for e in experiments:  # before any cell trains: a misspelled path in the last method would fail hours in
        for where, entry in e.entries().items():
            if not Path(entry[0]).is_file():
                raise UsageError(f"experiment {e.name}: {where}: no config file {entry[0]} (paths are relative to {Path.cwd()})")
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise UsageError(
            f"experiment names repeat: {sorted({n for n in names if names.count(n) > 1})}; each names its rows and run folders"
        )
    if not args.seeds:
        raise UsageError("--seeds must list at least one seed (a grid of no runs would overwrite the tables with empty ones)")
    if len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds repeats a seed: {args.seeds}")
    check_threads(args.threads)
    if args.draws < 1:
        raise UsageError(f"--draws must be at least 1, got {args.draws}")
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
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file of that name, or a folder this user cannot write
        raise UsageError(f"--out {out}: cannot make the results folder there ({err.strerror}); give another --out") from None
    start = time.perf_counter()
    provenance = provenance_key(args.reuse)
    cells = [
        Cell(e, seed, args.holdout, args.timing_repeats, args.threads, args.allow_module, args.count_flops, args.draws, provenance)
        for e in experiments
        for seed in args.seeds
    ]
    rows = run_grid(cells, out, args.launcher, args.jobs, args.slurm)
    with torch_threads(args.threads), quiet_lightning():  # restored afterwards: a bench run from Python leaves the caller's settings alone
        speed = compare(repeats=args.speed_repeats) if args.speed_repeats else None
    seconds = time.perf_counter() - start
    machine = f"{machine_name()}, {args.threads} torch thread(s), {_cores()} cores"
    results = {
        "machine": machine, "seconds": seconds, "holdout": args.holdout, "experiments": [asdict(e) for e in experiments],
        "rows": rows, "speed": speed and asdict(speed),
    }  # fmt: skip
    write_json(out / "results.json", results)  # two benches may share a results folder: renamed into place
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
    produced = (
        f"Produced by `{source}` in {seconds / 60:.1f} min{reuse_note} on {machine}; scored on {HELD_OUT_NAME[args.holdout]} data."
        f"{provenance_note(rows, code_fingerprint(), machine_name())}"
    )
    grid = verdict_grid(rows, args.holdout)

    def beside_docs(figure: Path, kind: str) -> str:
        """Copy ``figure`` next to the --docs page as ``<config>_<kind>.png`` (``<config>_val_<kind>.png`` for a
        ``--holdout val`` bench, whose section sits beside the test set's on the same page); its name, for the link."""
        stem = (Path(args.config[0]).stem if args.config else "bench") + ("_val" if args.holdout == "val" else "")
        copy = Path(args.docs).parent / f"{stem}_{kind}.png"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, copy)
        return copy.name

    if grid and verdict_figure(rows, out / "verdict_grid.png") is not None and args.docs is not None:
        grid += f"\n![verdicts by class and method]({beside_docs(out / 'verdict_grid.png', 'verdicts')})\n"
    if args.frontier and frontier_figure(rows, out / "frontier.png") is not None and args.docs is not None:
        figure = beside_docs(out / "frontier.png", "frontier")
        grid += (
            "\n### The price of forgetting\n\nEach method's share of weights bit-identical to the pretrained model's against its "
            f"{frontier_cost(rows)[1]}, coloured by its worst verdict over the seeds; a line joins the settings of one method.\n\n"
            f"![frozen share against cost]({figure})\n"
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
