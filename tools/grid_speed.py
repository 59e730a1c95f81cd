"""How much faster a bench grid runs under each launcher, measured side by side in one run, and whether the numbers agree.

    python tools/grid_speed.py -c configs/bench_all_classes.yaml --only '[forget0,forget1]' --seeds '[0,1]' \
        --launchers serial local slurm --jobs 2

Each launcher runs the same grid from nothing into a fresh folder (``--work``, default a temporary one), one launcher
after another, as ``unlearning bench`` processes. Printed per launcher: the process's wall time, the grid's own time
(``results.json``: the cells, without the process's start-up and imports) and the speed-up of each over ``serial``; then
whether every cell's numbers (timings aside) equal the serial run's. ``slurm`` is skipped when no cluster answers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMING = ("fit_seconds", "cost", "phases", "reused", "checkpoint")


def run(launcher: str, config: str, out: Path, extra: list[str], jobs: int) -> tuple[float, float, list[dict]]:
    command = [sys.executable, "-m", "unlearning", "bench", "-c", config, "--out", str(out), "--docs", "null", "--headline", "null",
               "--speed_repeats", "0", f"--launcher={launcher}", *extra]  # fmt: skip
    if launcher == "local":
        command.append(f"--jobs={jobs}")
    if launcher == "slurm":
        command.append(f"--slurm.array_parallelism={jobs}")
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    stored = json.loads((out / "results.json").read_text())
    return wall, stored["seconds"], [{k: v for k, v in row.items() if k not in TIMING} for row in stored["rows"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--only", help="passed to the bench: experiments to run")
    parser.add_argument("--seeds", help="passed to the bench")
    parser.add_argument("--launchers", nargs="+", default=["serial", "local", "slurm"])
    parser.add_argument("--jobs", type=int, default=2, help="local processes at once; the SLURM array's parallelism")
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary folder, removed afterwards)")
    args = parser.parse_args()
    extra = [f"--only={args.only}"] * bool(args.only) + [f"--seeds={args.seeds}"] * bool(args.seeds)
    work = args.work or Path(tempfile.mkdtemp(prefix="grid_speed_"))
    results = {}
    try:
        for launcher in args.launchers:
            if launcher == "slurm" and shutil.which("sbatch") is None:
                print("slurm: skipped (no sbatch here; bash tools/slurm.sh up starts a single-node cluster)")
                continue
            results[launcher] = run(launcher, args.config, work / launcher, extra, args.jobs)
            print(f"{launcher}: {results[launcher][0]:.1f} s", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    serial = results.get("serial")
    print("\n| launcher | wall s | grid s | speed-up (wall) | speed-up (grid) | same numbers as serial |\n|---|---|---|---|---|---|")
    for launcher, (wall, grid, rows) in results.items():
        ratios = f"{serial[0] / wall:.2f}× | {serial[1] / grid:.2f}×" if serial else "– | –"
        same = "–" if serial is None or launcher == "serial" else "yes" if rows == serial[2] else "NO"
        print(f"| {launcher}{f' (jobs {args.jobs})' if launcher != 'serial' else ''} | {wall:.1f} | {grid:.1f} | {ratios} | {same} |")


if __name__ == "__main__":
    main()
