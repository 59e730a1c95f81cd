"""Running the bench's cells: one after another in this process, N at once on this machine, or as a SLURM job array.

A cell is whatever the bench hands over with the function that runs it (``run(cell, out, cwd)``, which writes the
cell's result file and returns nothing of interest); this module knows no task, no fit and no table. The local and
SLURM launchers are submitit's executors (``LocalExecutor``, ``SlurmExecutor``): each cell runs in a process of its
own, with its output in ``<out>/logs/``, and a cell that fails costs only itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unlearning.errors import UsageError

Launcher = Literal["serial", "local", "slurm"]


@dataclass
class Slurm:
    """Where and how a SLURM job array runs the cells (``--slurm.partition gpu --slurm.gpus_per_node 1`` ...).

    Args:
        partition: the partition to submit to (``None``: the cluster's default).
        time_min: each task's time limit, in minutes.
        cpus_per_task: CPU cores per cell (the bench's torch threads should not exceed them).
        gpus_per_node: GPUs per cell (0: CPU only).
        mem_gb: memory per cell, in GB (``None``: the partition's default).
        array_parallelism: how many cells of the array run at once.
        additional: further ``sbatch`` settings by name (``{"account": "lab", "qos": "short"}``).
    """

    partition: str | None = None
    time_min: int = 60
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb: float | None = None
    array_parallelism: int = 8
    additional: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failure:
    """A cell that did not finish: its name, the last line of its error, and where its full log is (``None``: this process)."""

    cell: str
    error: str
    log: str | None

    def line(self) -> str:
        return f"cell {self.cell} failed: {self.error}" + (f" (log: {self.log})" if self.log else "")


def launch(
    cells: Sequence[Any],
    names: Sequence[str],
    run: Callable[[Any, Path, str], Any],
    out: Path,
    launcher: Launcher = "serial",
    jobs: int = 2,
    slurm: Slurm | None = None,
    progress: Callable[[str], None] = print,
) -> list[Failure]:
    """Run ``run(cell, out, cwd)`` for every cell (``names`` name them in messages and logs); returns the cells that failed.

    ``serial`` runs them here, one after another; ``local`` as separate processes, ``jobs`` at once; ``slurm`` as one job
    array (``slurm`` sets its resources). Each cell runs in this process's working folder (the configs' relative paths).
    """
    if launcher not in ("serial", "local", "slurm"):
        raise UsageError(f"--launcher must be serial, local or slurm, got {launcher!r}")
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    cwd = os.getcwd()
    if launcher == "serial":
        failures = []
        for cell, name in zip(cells, names):
            try:
                run(cell, out, cwd)
            except Exception as err:  # noqa: BLE001 - one cell's failure must not lose the others'
                failures.append(Failure(name, _last_line(err), None))
        return failures
    import submitit  # the local and SLURM launchers only

    folder = out / "logs" / "%j"
    if launcher == "local":
        executor: Any = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=24 * 60)
        return _keep_running(executor, cells, names, run, out, cwd, jobs, progress)
    slurm = slurm or Slurm()
    executor = submitit.SlurmExecutor(folder=folder, python=sys.executable)
    settings = {"time": slurm.time_min, "cpus_per_task": slurm.cpus_per_task, "array_parallelism": slurm.array_parallelism,
                "job_name": "unlearning-bench", **slurm.additional}  # fmt: skip
    if slurm.partition is not None:
        settings["partition"] = slurm.partition
    if slurm.gpus_per_node:
        settings["gpus_per_node"] = slurm.gpus_per_node
    if slurm.mem_gb is not None:
        settings["mem"] = f"{slurm.mem_gb}GB"
    executor.update_parameters(**settings)
    submitted = executor.map_array(run, list(cells), [out] * len(cells), [cwd] * len(cells))
    if submitted:
        progress(f"bench: {len(submitted)} cells submitted as SLURM job array {submitted[0].job_id.split('_')[0]}")
    return _wait(dict(zip(submitted, names)), progress)


def _keep_running(executor: Any, cells: Sequence[Any], names: Sequence[str], run: Callable[..., Any], out: Path, cwd: str, jobs: int,
                  progress: Callable[[str], None]) -> list[Failure]:  # fmt: skip
    """Local processes, at most ``jobs`` at once: submitit's local executor starts every job it is given at once."""
    waiting = list(zip(cells, names))
    running: dict[Any, str] = {}
    failures: list[Failure] = []
    done, said = 0, -1
    while waiting or running:
        while waiting and len(running) < jobs:
            cell, name = waiting.pop(0)
            running[executor.submit(run, cell, out, cwd)] = name
        if done != said:
            progress(f"bench: {done} of {len(cells)} cells done, {len(running)} running")
            said = done
        finished = [job for job in running if job.done()]
        for job in finished:
            failures += _outcome(job, running.pop(job))
            done += 1
        if not finished:
            time.sleep(0.5)
    return failures


def _wait(jobs: dict[Any, str], progress: Callable[[str], None], interval: float = 5.0) -> list[Failure]:
    """Collect the jobs as they finish, with a progress line whenever the count changes (and at least each minute).

    A task that leaves the queue without a result (cancelled with ``scancel``, killed for its time limit) is a failure
    once it has been gone for two polls: submitit asks ``sacct`` for a job's end, and a cluster without accounting
    never answers, which would leave the bench waiting for ever.
    """
    failures: list[Failure] = []
    pending = dict(jobs)
    said, said_at, gone = -1, 0.0, dict.fromkeys(jobs, 0)
    while pending:
        queued = _queued()
        for job in list(pending):
            if job.done():
                failures += _outcome(job, pending.pop(job))
            elif queued is not None and job.job_id not in queued:
                gone[job] += 1
                if gone[job] >= 2:
                    failures.append(
                        Failure(pending.pop(job), "the task left the queue without a result (cancelled?)", str(job.paths.stderr))
                    )
        done = len(jobs) - len(pending)
        if done != said or time.monotonic() - said_at > 60:
            progress(f"bench: {done} of {len(jobs)} cells done" + (f", waiting for {len(pending)}" if pending else ""))
            said, said_at = done, time.monotonic()
        if pending:
            time.sleep(interval)
    return failures


def _queued() -> set[str] | None:
    """The job ids SLURM has queued or running, array tasks one by one (``123_4``); ``None`` when ``squeue`` does not answer."""
    try:
        listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return set(listed.split())


def _outcome(job: Any, name: str) -> list[Failure]:
    error = job.exception()
    return [] if error is None else [Failure(name, _last_line(error), str(job.paths.stderr))]


def _last_line(error: BaseException) -> str:
    """The line of an error that says what went wrong: in a traceback (submitit reports a job's), the exception's own line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"[\w.]*(Error|Exception|Exit|Interrupt)\b[\w.]*: ", line)]
    return (raised or lines or [type(error).__name__])[-1]
