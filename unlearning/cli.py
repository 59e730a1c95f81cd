"""``unlearning <command>``: the command dispatch, on top of everything it dispatches to (none of which imports it).

Every user mistake ends here as one line on stderr and exit status 2.
"""

from __future__ import annotations

import difflib
import sys
from typing import Any

from unlearning.errors import BenchFailed, UsageError

#: command -> what it does, as ``unlearning --help`` lists them
COMMANDS = {
    "fit": "train a configuration: pretrain, oracle, unlearn or replace (-c configs/...yaml)",
    "validate": "validation metrics of a checkpoint (--ckpt_path), logged into its run folder",
    "test": "per-class test accuracy of a checkpoint (--ckpt_path), logged into its run folder",
    "evaluate": "the evidence suite: is a class forgotten, hidden or still there? (--ckpt, --oracle, --pretrained)",
    "bench": "every method over seeds, with evidence and costs, into results/ and docs/results.md (-c configs/bench.yaml)",
}
LIGHTNING = ("fit", "validate", "test")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(
        [
            "usage: unlearning <command> [options]",
            "",
            "Class unlearning and class replacement on PyTorch Lightning, with evidence that a class is forgotten rather than hidden.",
            "",
            "commands:",
            *lines,
            "",
            "Run 'unlearning <command> --help' for a command's options.",
        ]
    )


def main(args: list[str] | None = None, run: bool = True) -> Any:
    """Run one command. Tests call ``main([...])``; a Lightning command returns its CLI object (trainer, model,
    datamodule), ``evaluate`` its report, ``bench`` its rows. ``run=False`` parses a fit's config into that CLI
    object without running it (no command word then)."""
    argv = sys.argv[1:] if args is None else list(args)
    command = argv[0] if argv else None
    if run and command in ("-h", "--help"):
        print(usage())
        return None
    if run and command is None:  # a command line with no command is a mistake, as argparse would have it
        raise UsageError(f"no command given; the commands are {', '.join(COMMANDS)} (unlearning --help describes them)")
    if command == "evaluate":
        from unlearning.evaluation.cli import evaluate_main

        return evaluate_main(argv[1:])
    if command == "bench":
        from unlearning.bench import bench

        return bench(argv[1:])
    if run and command not in LIGHTNING:
        close = difflib.get_close_matches(str(command), COMMANDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; the commands are {', '.join(COMMANDS)}"
        raise UsageError(f"unknown command '{command}'{hint} (unlearning --help lists them)")
    from unlearning.training import lightning_main

    return lightning_main(args, run)


def entry() -> None:
    """Console entry: user errors become one line on stderr and exit status 2, not a traceback."""
    try:
        main()
    except UsageError as err:
        print(f"unlearning: error: {err}", file=sys.stderr)
        sys.exit(2)
    except BenchFailed as err:  # failed cells have been reported with their logs, changed verdicts are in the message
        print(f"unlearning: {err}", file=sys.stderr)
        sys.exit(1)
