"""Runs never collide, clobber or lie: run folders, resume, bad input, and a 2-process fit that agrees with 1 process.

The stress tests start real processes, bounded in number and time.
"""

import hashlib
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import CONFIGS, ROOT, TINY, fit
from unlearning import files
from unlearning.checkpoints import AtomicCheckpointIO, last_checkpoint, read_checkpoint
from unlearning.cli import main
from unlearning.data.mnist import MNIST_MD5
from unlearning.errors import UsageError
from unlearning.run_dirs import RunLogger, release_runs

QUICK = ("--trainer.limit_train_batches=15", "--trainer.limit_val_batches=1.0", "--model.init_args.log_figures=false")


def test_a_run_stopped_after_one_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    straight = fit(CONFIGS / "pretrain.yaml", tmp_path / "straight", "--trainer.max_epochs=2", *QUICK)
    first = fit(CONFIGS / "pretrain.yaml", tmp_path / "resumed", "--trainer.max_epochs=1", *QUICK)
    resumed = fit(CONFIGS / "pretrain.yaml", tmp_path / "resumed", "--trainer.max_epochs=2", "--ckpt_path=last", *QUICK)
    assert resumed.trainer.log_dir == first.trainer.log_dir  # the same run folder: its curves continue
    assert resumed.trainer.global_step == straight.trainer.global_step == 30
    for name, value in straight.trainer.callback_metrics.items():
        assert torch.equal(value, resumed.trainer.callback_metrics[name]), name
    assert all(torch.equal(a, b) for a, b in zip(straight.model.net.state_dict().values(), resumed.model.net.state_dict().values()))


def test_resuming_last_with_no_run_to_resume_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"--ckpt_path last: no run under .* has a checkpoints/last.ckpt"):
        fit(CONFIGS / "pretrain.yaml", tmp_path, "--ckpt_path=last", *QUICK)
    assert not list(tmp_path.rglob("version_*"))


def test_last_is_refused_across_several_nodes(tmp_path):
    """Each node would resolve ``last`` from its own files before the process group exists."""
    with pytest.raises(UsageError, match="with several nodes give the checkpoint's path"):
        fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.num_nodes=2", "--ckpt_path=last", *QUICK)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its md5: what "nothing changed on disk" is checked against."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_last_resumes_the_newest_run_of_the_same_configuration_and_the_config_records_the_file(tmp_path):
    ours = fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=1", *QUICK)
    newer = fit(
        CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=1", "--seed_everything=1", *QUICK
    )  # same folder name, other seed
    assert Path(ours.trainer.log_dir).name == "version_0" and Path(newer.trainer.log_dir).name == "version_1"
    resumed = fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=2", "--ckpt_path=last", *QUICK)
    assert resumed.trainer.log_dir == ours.trainer.log_dir and resumed.trainer.global_step == 30
    saved = yaml.safe_load((Path(ours.trainer.log_dir) / "config.yaml").read_text())
    assert saved["ckpt_path"] == str(Path(ours.trainer.log_dir) / "checkpoints" / "last.ckpt")  # the file, never the word "last"
    assert saved["trainer"]["logger"]["init_args"]["version"] == 0
    with pytest.raises(
        UsageError, match=r"no run under .*pretrain/seed_mlp has this configuration; candidates: .*version_1 \(other seed_everything"
    ) as error:
        fit(CONFIGS / "pretrain.yaml", tmp_path, "--seed_everything=2", "--ckpt_path=last", *QUICK)
    assert "\n" not in str(error.value)


def test_a_failed_resume_changes_nothing_and_offers_the_checkpoint_that_is_still_good(tmp_path):
    run = fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=1", *QUICK)
    last = last_checkpoint(run.trainer)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a last.ckpt cut short by a crash
    before = _snapshot(tmp_path)
    (best,) = last.parent.glob("best-*.ckpt")
    for ckpt_path in ("last", str(last)):
        with pytest.raises(
            UsageError, match=rf"cannot resume: .*last.ckpt is not a readable checkpoint .*truncated.*; resume from {best} instead"
        ):
            fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=2", f"--ckpt_path={ckpt_path}", *QUICK)
    assert _snapshot(tmp_path) == before


def _flip_a_weight_bit(checkpoint: Path, entry: str = "archive/data/0") -> None:
    """Flip one bit in the middle of a stored tensor's bytes, leaving the archive's structure intact (bit rot, a bad copy)."""
    with zipfile.ZipFile(checkpoint) as archive:
        info = archive.getinfo(entry)
    with checkpoint.open("r+b") as f:
        f.seek(info.header_offset + 26)  # the local header's name and extra-field lengths, then the stored bytes
        start = info.header_offset + 30 + sum(struct.unpack("<HH", f.read(4)))
        f.seek(start + info.file_size // 2)
        byte = f.read(1)[0]
        f.seek(start + info.file_size // 2)
        f.write(bytes([byte ^ 0x10]))


def test_a_checkpoint_changed_after_it_was_written_is_refused_not_loaded(tmp_path):
    """torch.load does not check the archive's CRCs: unchecked, a flipped bit would be a silently different model."""
    run = fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=1", *QUICK)
    last = last_checkpoint(run.trainer)
    stranger, good = tmp_path / "copy.ckpt", tmp_path / "good.ckpt"
    shutil.copy(last, stranger)
    shutil.copy(last, good)
    _flip_a_weight_bit(stranger)
    assert torch.load(stranger, weights_only=True)["state_dict"]  # what it guards against: torch reads the damaged file
    damaged = r"copy.ckpt is damaged: its entry archive/data/0 fails its checksum \(the file changed after it was written\)$"
    with pytest.raises(UsageError, match=damaged):
        main_test(tmp_path, stranger)
    with pytest.raises(UsageError, match=rf"^cannot resume: .*{damaged}"):  # good.ckpt beside it belongs to no run: not offered
        fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=2", f"--ckpt_path={stranger}", *QUICK)
    _flip_a_weight_bit(last)
    (best,) = last.parent.glob("best-*.ckpt")
    with pytest.raises(UsageError, match=rf"last.ckpt is damaged: .* written\); resume from {best} instead$"):
        fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=2", f"--ckpt_path={last}", *QUICK)
    assert [p.name for p in tmp_path.rglob("version_*")] == ["version_0"]


@pytest.mark.parametrize("contents", [b"not a checkpoint at all\n", b"PK\x03\x04 cut short"], ids=["text", "truncated"])
def test_a_bad_checkpoint_path_is_one_line_saying_what_is_wrong(tmp_path, contents):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(contents)
    for command, message in (
        ("fit", "cannot resume: .*bad.ckpt is not a readable checkpoint"),
        ("test", "bad.ckpt is not a readable checkpoint"),
    ):
        with pytest.raises(UsageError, match=message) as error:
            fit(CONFIGS / "pretrain.yaml", tmp_path, f"--ckpt_path={bad}", *QUICK) if command == "fit" else main_test(tmp_path, bad)
        assert "\n" not in str(error.value) and "expected a Lightning .ckpt or a state dict" in str(error.value)
    assert not list(tmp_path.rglob("version_*"))


def main_test(root: Path, ckpt: Path):
    return main(["test", "-c", str(CONFIGS / "pretrain.yaml"), f"--trainer.default_root_dir={root}", f"--ckpt_path={ckpt}", *QUICK])


@pytest.mark.parametrize(
    "override",
    ["--data.init_args.forget_fraction=1.5", "--data.init_args.val_size=60000", "--data.init_args.forget_classes=[]"],
)
def test_a_usage_error_leaves_no_run_folder_and_overwrites_nothing(tmp_path, override):
    fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=1", *QUICK)
    before = _snapshot(tmp_path)
    with pytest.raises(UsageError):
        fit(
            CONFIGS / "pretrain.yaml",
            tmp_path,
            override,
            *QUICK,
            *(["--data.init_args.forget_classes=[]"] if "fraction" in override else []),
        )
    assert _snapshot(tmp_path) == before
    assert [p.name for p in tmp_path.rglob("version_*")] == ["version_0"]


def test_a_run_reproduces_from_its_folder_alone(tmp_path):
    first = fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=1", *QUICK)
    again = main(["fit", "-c", str(Path(first.trainer.log_dir) / "config.yaml")])  # the saved config alone, nothing layered on it
    assert Path(again.trainer.log_dir) == Path(first.trainer.log_dir).parent / "version_1"  # a new run, beside the first
    assert all(torch.equal(first.trainer.callback_metrics[k], again.trainer.callback_metrics[k]) for k in first.trainer.callback_metrics)


def test_an_interrupted_checkpoint_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)

    def crash(obj, f):
        f.write(b"PK\x03\x04 half")
        raise OSError("disk full")

    monkeypatch.setattr("unlearning.checkpoints.torch.save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    assert torch.equal(read_checkpoint(target)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_run_logger_claims_a_fresh_folder_and_keeps_a_given_version(tmp_path):
    """RunLogger relies on TensorBoardLogger keeping its version in ``_version``: this fails loudly if that changes."""
    (tmp_path / "x" / "version_0").mkdir(parents=True)
    claimed = RunLogger(save_dir=str(tmp_path), name="x")
    assert claimed.version == 1 and claimed.claimed and (tmp_path / "x" / "version_1").is_dir()
    given = RunLogger(save_dir=str(tmp_path), name="x", version=0)
    assert given.version == 0 and not given.claimed


# -- stress: real processes -----------------------------------------------------------------------
@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """A folder with only the bundled archives, nothing unpacked: what a fresh clone has."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_MD5:
        shutil.copy(ROOT / "data" / "MNIST" / "raw" / f"{name}.gz", raw)
    return tmp_path


TINY_RUN = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
            "--trainer.enable_model_summary=false", "--model.init_args.log_figures=false"]  # fmt: skip


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    """``unlearning fit ARGS`` in ``cwd``, its own process group (so a kill takes all of it), output to files (no pipe to fill)."""
    log = cwd / f"fit-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unlearning", "fit", *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
        )  # fmt: skip
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _output(proc: subprocess.Popen) -> str:
    return proc.log.read_text()  # type: ignore[attr-defined]


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_eight_fits_started_at_once_in_a_fresh_folder_each_get_their_own_run(fresh_clone):
    procs = [
        _start(fresh_clone, "-c", str(CONFIGS / ("pretrain.yaml" if i % 2 == 0 else "oracle.yaml")), f"--seed_everything={i}", *TINY_RUN)
        for i in range(8)
    ]
    results = [(p.wait(timeout=400), _output(p)) for p in procs]
    assert [rc for rc, _ in results] == [0] * 8, [err[-2000:] for rc, err in results if rc]
    runs = sorted(fresh_clone.glob("lightning_logs/*/*/version_*"))
    assert len(runs) == 8
    seeds = set()
    for run in runs:
        assert {"config.yaml", "hparams.yaml", "checkpoints"} <= {p.name for p in run.iterdir()} and list(run.glob("events.out.tfevents.*"))
        config = yaml.safe_load((run / "config.yaml").read_text())
        checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
        # the folder's config, its hparams and its checkpoint all belong to one and the same run
        assert checkpoint["datamodule_hyper_parameters"]["seed"] == config["seed_everything"]
        assert checkpoint["hyper_parameters"]["stage"] == config["model"]["init_args"]["stage"] == run.parent.parent.name
        assert yaml.safe_load((run / "hparams.yaml").read_text())["stage"] == config["model"]["init_args"]["stage"]
        seeds.add(config["seed_everything"])
    assert seeds == set(range(8))
    assert not list((fresh_clone / "data").rglob("*.part"))


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_a_fit_killed_at_random_points_resumes_to_the_uninterrupted_result_or_refuses_in_one_line(fresh_clone):
    args = ["-c", str(CONFIGS / "pretrain.yaml"), "--trainer.max_epochs=4", "--trainer.limit_train_batches=40",
            "--trainer.enable_model_summary=false", "--model.init_args.log_figures=false"]  # fmt: skip
    straight = _start(
        fresh_clone, *args, f"--trainer.default_root_dir={fresh_clone / 'straight'}"
    )  # the same environment as the killed runs
    rc, log = straight.wait(timeout=300), _output(straight)
    assert rc == 0, log
    (expected,) = (fresh_clone / "straight").glob("lightning_logs/pretrain/seed_mlp/version_0/checkpoints/last.ckpt")
    expected = read_checkpoint(expected)
    generator, outcomes = random.Random(0), []
    for _ in range(5):
        resume = ["--ckpt_path=last"] if list(fresh_clone.glob("lightning_logs/*/*/version_*/checkpoints/last.ckpt")) else []
        proc = _start(fresh_clone, *args, *resume)
        time.sleep(generator.uniform(2.0, 7.0))  # python's start-up is about 2 s: the kill lands in a step, a validation or a write
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        _output(proc)
        outcomes.append("killed" if proc.returncode == -signal.SIGKILL else f"exited {proc.returncode}")
    print(f"kill and resume: {outcomes}")
    final = _start(fresh_clone, *args, "--ckpt_path=last")
    rc, err = final.wait(timeout=300), _output(final)
    if rc != 0:  # nothing was ever saved: a clean refusal is the only other outcome allowed
        assert rc == 2 and err.strip().splitlines()[-1].startswith("unlearning: error:") and "Traceback" not in err, err
        return
    (run,) = fresh_clone.glob("lightning_logs/pretrain/seed_mlp/version_*")  # every resume continued the one run
    resumed = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == expected["global_step"] == 160, outcomes
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in expected["state_dict"].items()), outcomes


def test_the_same_seed_gives_the_same_metrics_twice(tmp_path):
    runs = [fit(CONFIGS / "pretrain.yaml", tmp_path / str(i), "--trainer.max_epochs=1", *QUICK).trainer.callback_metrics for i in (0, 1)]
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.timeout(300)
def test_two_process_pretraining_completes_and_agrees_with_one_process(tmp_path):
    one = fit(CONFIGS / "pretrain.yaml", tmp_path / "one", *QUICK, "--trainer.limit_train_batches=40").trainer.callback_metrics
    # two ranks with half the batch each: the same samples per step, so the same optimisation up to float order
    two = fit(
        CONFIGS / "pretrain.yaml", tmp_path / "two", *QUICK, "--trainer.limit_train_batches=40", "--data.init_args.batch_size=100",
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_spawn",
    ).trainer.callback_metrics  # fmt: skip
    assert {k for k in one if "class_acc" in k} == {k for k in two if "class_acc" in k}
    for name in ("val/acc", "val/forget_acc", "val/retain_acc"):
        assert abs(float(one[name]) - float(two[name])) < 0.01, name


# -- a resume stays in its run ----------------------------------------------------------------------
def test_an_explicit_resume_of_another_configuration_is_refused_naming_what_differs(tmp_path):
    oracle = fit(CONFIGS / "oracle.yaml", tmp_path, "--trainer.max_epochs=1", *QUICK)
    last = last_checkpoint(oracle.trainer)
    before = _snapshot(tmp_path)
    for overrides, differs in (
        (["-c", str(CONFIGS / "pretrain.yaml"), "--seed_everything=1"], r"stage 'oracle' \(the checkpoint's\) vs 'pretrain'.*seed 0"),
        (["-c", str(CONFIGS / "oracle.yaml"), "--seed_everything=1"], r"seed 0 \(the checkpoint's\) vs 1"),
        (["-c", str(CONFIGS / "oracle.yaml"), "--data.init_args.split_seed=3"], r"split seed 0 \(the checkpoint's\) vs 3"),
        (
            ["-c", str(CONFIGS / "oracle.yaml"), "--model.init_args.optimizer.init_args.lr=0.1"],
            r"model\.init_args\.optimizer.*0\.001.*0\.1",
        ),
        (
            ["-c", str(CONFIGS / "oracle.yaml"), "--model.init_args.net=unlearning.models.LeNet"],
            r"net \{'class_path': 'unlearning\.models\.SeedMLP'",
        ),
    ):
        with pytest.raises(UsageError, match=rf"cannot resume {last} with this configuration: .*{differs}") as error:
            main(["fit", *overrides, "-c", str(TINY), f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={last}", *QUICK])
        assert "\n" not in str(error.value)
    assert _snapshot(tmp_path) == before  # the oracle's folder, config and checkpoints as they were


def _hold(lock: Path) -> str:
    """A program that takes ``lock`` as a running fit does, says so, and holds it until it is killed."""
    return (
        f"import fcntl, os, time; fd = os.open({str(lock)!r}, os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(120)"
    )


def test_a_run_folder_in_use_is_refused_and_free_again_once_its_holder_dies(tmp_path):
    """Two resumes of one run: the second is refused while the first holds the run (a stand-in process holds its lock here,
    as a resuming fit does for its whole life); once that process is killed the lock is gone with it."""
    run = fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=1", *QUICK)
    run_dir = Path(run.trainer.log_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", _hold(run_dir / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(tmp_path)
        for ckpt_path in ("last", str(run_dir / "checkpoints" / "last.ckpt")):
            with pytest.raises(UsageError, match=rf"run folder {run_dir} is in use by another process"):
                fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=2", f"--ckpt_path={ckpt_path}", *QUICK)
        with pytest.raises(UsageError, match="in use by another process"):
            main_test(tmp_path, run_dir / "checkpoints" / "last.ckpt")
        assert _snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.communicate()  # waits, and closes its pipe
    resumed = fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=2", "--ckpt_path=last", *QUICK)
    assert resumed.trainer.log_dir == str(run_dir) and resumed.trainer.global_step == 30


def test_two_claims_that_pick_the_same_number_get_two_folders(tmp_path, monkeypatch):
    """The race the exclusive mkdir guards against, forced: both claims list the folder before either creates its run."""
    monkeypatch.setattr(RunLogger, "_get_next_version", lambda self: 0)
    first, second = RunLogger(save_dir=str(tmp_path), name="x"), RunLogger(save_dir=str(tmp_path), name="x")
    assert (first.version, second.version) == (0, 1)
    release_runs()


def test_a_run_killed_before_its_first_checkpoint_is_swept_by_the_next_claim_and_a_live_one_is_not(tmp_path):
    root = tmp_path / "lightning_logs" / "pretrain" / "seed_mlp"
    for number in (0, 1):  # what a SIGKILL before the first checkpoint leaves: config, events, the mark, no checkpoint
        run_dir = root / f"version_{number}"
        run_dir.mkdir(parents=True)
        for name in ("config.yaml", "hparams.yaml", "events.out.tfevents.1", ".lock", ".incomplete"):
            (run_dir / name).write_text("")
    holder = subprocess.Popen(
        [sys.executable, "-c", _hold(root / "version_1" / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        run = fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=1", *QUICK)
    finally:
        holder.kill()
        holder.communicate()  # waits, and closes its pipe
    assert not (root / "version_0").exists()  # dead: swept
    assert (root / "version_1").exists()  # alive (its lock is held): kept
    assert Path(run.trainer.log_dir) == root / "version_2" and not (root / "version_2" / ".incomplete").exists()


def test_a_refused_run_leaves_no_folder_at_any_level(tmp_path):
    with pytest.raises(UsageError):
        fit(CONFIGS / "pretrain.yaml", tmp_path / "logs", "--data.init_args.val_size=60000", *QUICK)
    assert not (tmp_path / "logs").exists()


@pytest.fixture
def unwritable(monkeypatch):
    """Make folders unwritable: by their mode for an ordinary user; for root, who writes anywhere, by refusing the calls
    that create files and folders under them, with the error the kernel would give."""

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            return
        for name in ("mkdir", "open"):
            real = getattr(os, name)

            def refuse(path, *args, real=real, name=name, **kwargs):
                target = Path(os.fsdecode(path)).absolute()
                if (target == folder or folder in target.parents) and (name == "mkdir" or args[0] & (os.O_CREAT | os.O_WRONLY | os.O_RDWR)):
                    raise PermissionError(13, "Permission denied", str(target))
                return real(path, *args, **kwargs)

            monkeypatch.setattr(os, name, refuse)

    return make


def test_an_unwritable_logs_folder_is_one_line(tmp_path, unwritable):
    (tmp_path / "ro").mkdir()
    unwritable(tmp_path / "ro")
    with pytest.raises(UsageError, match=r"cannot write .*ro.*: permission denied; give --trainer.default_root_dir a folder you can write"):
        fit(CONFIGS / "pretrain.yaml", tmp_path / "ro", *QUICK)


def test_a_read_only_data_folder_that_needs_unpacking_is_one_line(fresh_clone, unwritable):
    raw = fresh_clone / "data" / "MNIST" / "raw"
    unwritable(raw)
    with pytest.raises(UsageError, match=rf"cannot write {raw}.*: permission denied; unpack the data once as a user who can write there"):
        fit(CONFIGS / "pretrain.yaml", fresh_clone, f"--data.init_args.data_dir={fresh_clone / 'data'}", *QUICK)


def test_a_deleted_archive_is_one_line_naming_it(fresh_clone):
    (fresh_clone / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UsageError, match=r"lacks t10k-labels-idx1-ubyte\(\.gz\); restore it") as error:
        fit(CONFIGS / "pretrain.yaml", fresh_clone, f"--data.init_args.data_dir={fresh_clone / 'data'}", *QUICK)
    assert "\n" not in str(error.value)


def test_a_folder_given_as_a_checkpoint_is_called_a_folder(tmp_path):
    with pytest.raises(UsageError, match=rf"checkpoint {tmp_path} is a folder, not a file"):
        main_test(tmp_path, tmp_path)


def test_a_misspelled_class_and_a_yaml_syntax_error_are_one_line_each(tmp_path):
    misspelled = tmp_path / "misspelled.yaml"
    misspelled.write_text((CONFIGS / "pretrain.yaml").read_text().replace("PretrainTask", "PretrainTsk"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_epochs: 1\n  callbacks: [1, 2\nmodel: x\n")
    for config, message in (
        (misspelled, r"model\.class_path: no class unlearning\.tasks\.PretrainTsk .*did you mean unlearning\.tasks\.PretrainTask\?"),
        (broken, rf"{broken}, line 4, column 6: not valid YAML: .*flow sequence opened on line 3"),
    ):
        with pytest.raises(UsageError, match=message) as error:
            main(["fit", "-c", str(config), f"--trainer.default_root_dir={tmp_path}"])
        assert "\n" not in str(error.value)


def test_files_written_whole_are_readable_as_the_umask_allows(tmp_path, monkeypatch):
    """A checkpoint or result shared with a group: ``mkstemp``'s private mode must not survive the rename."""
    monkeypatch.setattr(files, "_UMASK", 0o022)
    with files.atomic_file(tmp_path / "x.json") as f:
        f.write(b"{}")
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
