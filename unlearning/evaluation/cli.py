"""``unlearning evaluate``: every check on a checkpoint, beside the oracle and the pretrained model, with a verdict.

    unlearning evaluate --ckpt <unlearned> --oracle <oracle ckpt> --pretrained <pretrain ckpt> [--forget-classes 9] [--out results/x]

The classes, the split seed and the validation size come from the checkpoint; given explicitly,
they must agree with it. Prints the table, and writes ``report.json`` (every number),
``summary.md`` and TensorBoard events under ``--out``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields
from pathlib import Path
from typing import NoReturn, get_args

import docstring_parser

from unlearning.errors import UsageError
from unlearning.evaluation.data import Holdout
from unlearning.evaluation.inputs import torch_threads
from unlearning.evaluation.mia import Attack
from unlearning.evaluation.report import check_out, write_outputs
from unlearning.evaluation.run import judge
from unlearning.evaluation.suite import Budget
from unlearning.evaluation.verdict import EVIDENCE
from unlearning.run_dirs import claim_next, run_dir_of

ROLES = ("checkpoint", "oracle", "pretrained")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (a :class:`UsageError`) instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (run '{self.prog} --help' for the options)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="unlearning evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="the checkpoint to judge")
    p.add_argument("--oracle", required=True, help="a checkpoint retrained without the forget data")
    p.add_argument("--pretrained", required=True, help="the checkpoint unlearning started from")
    p.add_argument("--forget-classes", type=int, nargs="*", help="default: the checkpoint's; given, must match it")
    p.add_argument("--new-classes", type=int, nargs="*", help="default: the checkpoint's; given, must match it")
    p.add_argument(
        "--out", help="folder for report.json, summary.md and TensorBoard events (default: a new lightning_logs/evaluate/<run>/version_N)"
    )
    p.add_argument("--data-dir", default="data", help="folder holding MNIST/raw")
    p.add_argument(
        "--seed", type=int, help="the split's seed; default: the checkpoint run's (its split_seed, else seed_everything), else 0"
    )
    p.add_argument("--val-size", type=int, help="the split's validation size; default: the checkpoint run's, else 5000")
    p.add_argument(
        "--holdout", default="test", choices=get_args(Holdout),
        help="the held-out samples every test-set check reads: the test set, or the run's validation split (for tuning a method)",
    )  # fmt: skip
    p.add_argument(
        "--allow-module", action="append", default=[], metavar="MODULE",
        help="a module whose network classes a checkpoint may name (repeatable); the project's own are always allowed",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads; the checks are many small steps, which more threads slow down"
    )
    budget = p.add_argument_group("budget", "what each check may spend (unlearning.evaluation.suite.Budget)")
    helps = budget_help()
    for f in fields(Budget):
        default = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        flag, words = f"--{f.name.replace('_', '-')}", f"{helps[f.name]} (default: {default})"
        if f.name == "mia_attack":
            budget.add_argument(flag, default=f.default, choices=get_args(Attack), help=words)
        elif isinstance(f.default, tuple):  # a grid: one or more values
            budget.add_argument(flag, type=type(f.default[0]), nargs="+", default=f.default, help=words)
        else:
            budget.add_argument(flag, type=type(f.default), default=f.default, help=words)
    return p


def budget_help() -> dict[str, str]:
    """Each :class:`Budget` field's words from its docstring, as ``--help`` prints them: one place documents a budget.

    ``code`` marks are dropped, and ``%`` is escaped for argparse.
    """
    params = docstring_parser.parse(Budget.__doc__ or "").params
    return {p.arg_name: " ".join(p.description.replace("``", "").split()).replace("%", "%%") for p in params}


def default_out(checkpoint: str) -> Path:
    """``lightning_logs/evaluate/<stage>_<method>/version_N`` for a checkpoint in a run folder (``<stem>`` otherwise), claimed
    once the checks are done: beside the runs, so ``tensorboard --logdir lightning_logs`` shows it, and never shared."""
    run = run_dir_of(checkpoint)
    name = f"{run.parents[1].name}_{run.parent.name}" if run is not None and len(run.parents) > 1 else Path(checkpoint).stem
    root = Path("lightning_logs") / "evaluate" / name
    root.mkdir(parents=True, exist_ok=True)
    return claim_next(root)


def evaluate_main(argv: list[str] | None = None) -> dict:
    """Parse ``argv``, run every check on the three checkpoints, print the table, write the outputs; returns the report."""
    args = parser().parse_args(argv)
    budget = Budget(**{f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v for f in fields(Budget)})
    paths = dict(zip(ROLES, (args.ckpt, args.oracle, args.pretrained)))
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out(out)
    with torch_threads(args.threads):
        start = time.perf_counter()
        report, evaluations = judge(
            paths,
            "oracle",
            "pretrained",
            args.forget_classes,
            args.new_classes,
            args.seed,
            args.val_size,
            args.data_dir,
            args.device,
            budget,
            holdout=args.holdout,
            allow_modules=args.allow_module,
        )
        report["seconds"] = time.perf_counter() - start
        out = out or default_out(args.ckpt)
        text = write_outputs(out, report, evaluations, budget)
    checkpoint = report["verdict"]["checkpoint"]
    print(text, f"\nverdict: {checkpoint['verdict']}", sep="\n")
    for kind in EVIDENCE:
        for item in checkpoint[kind]:
            print(f"  {kind.split('_')[0]}: {item}")
    print(f"wrote {out / 'report.json'}, {out / 'summary.md'} and TensorBoard events ({report['seconds']:.1f} s)")
    return report
