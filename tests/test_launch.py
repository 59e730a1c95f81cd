"""The bench's cells under every launcher: the same numbers serially, as local processes and as a SLURM job array.

The SLURM tests need a cluster (``bash tools/slurm.sh up`` starts a single-node one on this machine); without one
they are skipped, except in CI (``CI=true``), where they must run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from unlearning.cli import main
from unlearning.errors import CellsFailed
from unlearning.provenance import code_fingerprint, machine_name

pytestmark = pytest.mark.slow

CELLS = ROOT / "tests" / "conf" / "bench_cells.yaml"
#: what differs between two runs of one cell: the clock and where its files are
TIMING = ("fit_seconds", "cost", "phases", "reused", "checkpoint")


def _bench(out: Path, *args: str) -> list[dict]:
    return main(["bench", "-c", str(CELLS), "--out", str(out), *args])


def _numbers(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30, check=False)
    return state.returncode == 0 and any(s.strip(" *~#") in ("idle", "mixed", "allocated") for s in state.stdout.split())


needs_slurm = pytest.mark.skipif(
    not _slurm_up() and os.environ.get("CI") != "true", reason="no SLURM cluster here (bash tools/slurm.sh up starts one)"
)


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> list[dict]:
    return _bench(tmp_path_factory.mktemp("serial"))


@pytest.mark.timeout(600)
def test_local_processes_give_the_serial_numbers_cell_by_cell(serial, tmp_path):
    rows = _bench(tmp_path, "--launcher=local", "--jobs=2")
    assert len(rows) == 6 and {r["seed"] for r in rows} == {0, 1}
    assert _numbers(rows) == _numbers(serial)
    assert len(list((tmp_path / "logs").rglob("*_log.err"))) == 2  # one process, and one log, per cell


def test_a_rerun_runs_no_finished_cell_and_a_changed_config_makes_new_cells(serial, tmp_path):
    out = tmp_path / "results"
    _bench(out, "--seeds=[0]")
    (cell,) = out.glob("cells/*.json")
    stamp = cell.stat().st_mtime_ns
    again = _bench(out, "--seeds=[0]")
    assert cell.stat().st_mtime_ns == stamp and all(r["reused"] for r in again)  # nothing ran again
    changed = _bench(out, "--seeds=[0]", "--timing_repeats=2")
    assert len(list(out.glob("cells/*.json"))) == 2 and not any(r["reused"] for r in changed)  # a new cell, none mixed in
    assert _numbers(again) == _numbers(serial)[:3]
    assert {(r["code"], r["machine"]) for r in again} == {(code_fingerprint(), machine_name())}  # each fit says what made it


def test_reuse_this_code_refits_what_other_code_made_in_a_folder_of_its_own(serial, tmp_path, monkeypatch):
    out = tmp_path / "results"
    _bench(out, "--seeds=[0]")
    monkeypatch.setattr("unlearning.bench.code_fingerprint", lambda: "0123456789ab")  # as if the package had changed since
    stale = _bench(out, "--seeds=[0]")  # by default a cell's configs alone decide: the old fits are reused, and said to be
    assert all(r["reused"] for r in stale)
    assert f"Of its 3 fits, 3 by other code (`{code_fingerprint()}`): `--reuse this_code`" in (out / "results.md").read_text()
    old_runs = sorted(p for p in out.glob("runs/**/*") if p.is_file())
    fresh = _bench(out, "--seeds=[0]", "--reuse=this_code")
    assert not any(r["reused"] for r in fresh) and {r["code"] for r in fresh} == {"0123456789ab"}
    assert len(list(out.glob("cells/*.json"))) == 2 and set(old_runs) <= {p for p in out.glob("runs/**/*") if p.is_file()}
    assert "All 3 fits were made by this code (`0123456789ab`) on this machine." in (out / "results.md").read_text()
    assert all(r["reused"] for r in _bench(out, "--seeds=[0]", "--reuse=this_code"))  # this code's fits, now there, are reused


def test_a_failing_cell_is_one_line_with_its_log_and_the_others_are_kept(tmp_path, capsys):
    tiny = "-c, tests/conf/tiny.yaml, --trainer.limit_train_batches=40, --model.init_args.log_figures=false"
    config = tmp_path / "bench.yaml"
    config.write_text(
        "seeds: [0]\nspeed_repeats: 0\nexperiments:\n"
        + "".join(
            f"  - name: {name}\n    pretrain: [configs/pretrain.yaml, {tiny}]\n    oracle: [configs/oracle.yaml, {tiny}]\n"
            f"    methods:\n      head_mask: [configs/unlearn/head_mask.yaml{extra}]\n"
            for name, extra in (("broken", ", --model.init_args.no_such_option=1"), ("good", ""))
        )
    )
    with pytest.raises(CellsFailed, match=r"1 of 2 cells failed \(the others' results are kept in .*cells\): rerun to retry them"):
        main(["bench", "-c", str(config), "--out", str(tmp_path / "out"), "--launcher=local", "--jobs=2"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "failed:" in line]
    assert line.startswith("unlearning bench: cell broken-seed0-") and "(log: " in line
    assert "unknown option or config key 'model.init_args.no_such_option'" in line
    assert Path(line.split("(log: ")[1].rstrip(")")).is_file()
    assert [p.name.split("-")[0] for p in (tmp_path / "out" / "cells").glob("*.json")] == ["good"]


@pytest.mark.timeout(600)
def test_two_benches_sharing_a_results_folder_lose_nothing(serial, tmp_path):
    command = [sys.executable, "-m", "unlearning", "bench", "-c", str(CELLS), "--out", str(tmp_path)]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=500)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert len(list(tmp_path.glob("cells/*.json"))) == 2 and len(list(tmp_path.glob("runs/*/*/oracle/lightning_logs/*/*/version_*"))) == 2
    stored = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert _numbers(stored) == _numbers(serial)


@needs_slurm
@pytest.mark.timeout(900)
def test_a_slurm_job_array_gives_the_serial_numbers_and_a_cancelled_array_reruns_only_its_missing_cells(serial, tmp_path):
    slurm = ["--launcher=slurm", "--slurm.array_parallelism=1", "--slurm.time_min=15"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "unlearning", "bench", "-c", str(CELLS), "--out", str(tmp_path), *slurm],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not list(tmp_path.glob("cells/*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
    (first,) = tmp_path.glob("cells/*.json")  # one cell done, the other waits for the array's single slot
    subprocess.run(["scancel", "--name=unlearning-bench"], check=True, timeout=30)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "1 of 2 cells failed" in err, err
    stamp = first.stat().st_mtime_ns
    rows = _bench(tmp_path, *slurm)
    assert first.stat().st_mtime_ns == stamp and len(list(tmp_path.glob("cells/*.json"))) == 2  # only the missing cell ran
    assert _numbers(rows) == _numbers(serial)
