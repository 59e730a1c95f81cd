"""The user's commands, through ``main([...])`` exactly as the console script runs them."""

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.profilers import SimpleProfiler
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from tests.conftest import CONFIGS, FP16_SCALER, ROOT, TINY, fit, fit_recording
from unlearning.checkpoints import last_checkpoint
from unlearning.cli import COMMANDS, main
from unlearning.errors import UsageError
from unlearning.tasks import PretrainTask
from unlearning.training import LogProgress, NoProfiler, ThrottledProgressBar


def _fit_recording_labels(config, tmp_path, *overrides):
    cli = main(["-c", str(config), "-c", str(TINY), f"--trainer.default_root_dir={tmp_path}", *overrides], run=False)
    return cli, set().union(*fit_recording(cli).labels.values())


def test_pretrain_fit_writes_checkpoints_beside_its_config_and_reloads_without_arguments(tmp_path):
    _, labels = _fit_recording_labels(CONFIGS / "pretrain.yaml", tmp_path, "--data.init_args.new_classes=[3]")
    run_dir = tmp_path / "lightning_logs" / "pretrain" / "seed_mlp_new3" / "version_0"  # named for what it is
    assert (run_dir / "config.yaml").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert 3 not in labels and 9 in labels  # pretraining sees retain and forget, never new
    model = PretrainTask.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert model.forget_classes == [9] and model.new_classes == [3]
    assert model.net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert {"val/acc", "val/forget_acc", "val_class_acc/9"} <= set(events.Tags()["scalars"])
    assert {"val/confusion_matrix", "weights/first_layer"} <= set(events.Tags()["images"])
    confusion = Image.open(io.BytesIO(events.Images("val/confusion_matrix")[-1].encoded_image_string))
    assert (
        confusion.size == (11 * 40 + 22, 11 * 22 + 38) and confusion.mode == "RGB"
    )  # a 10x10 grid of cells, class indices, axis names, title
    layout = {tag for tag in events.Tags()["tensors"]}
    assert "custom_scalars__config__" in layout  # the charts that put per-class lines together
    hparams = EventAccumulator(str(run_dir), size_guidance={"tensors": 0}).Reload().summary_metadata
    (session,) = [
        HParamsPluginData.FromString(meta.plugin_data.content).session_start_info
        for meta in hparams.values()
        if meta.plugin_data.plugin_name == "hparams"
        and HParamsPluginData.FromString(meta.plugin_data.content).HasField("session_start_info")
    ]  # the HParams tab: one session, named by the settings that tell runs apart, without LightningCLI's bookkeeping
    assert {"Classes", "Method", "Net", "Seed", "Stage", "task", "optimizer", "lr"} <= set(session.hparams)
    # TensorBoard ticks the first five by name: these, short enough for its columns
    assert sorted(session.hparams)[:5] == ["Classes", "Method", "Net", "Seed", "Stage"]
    assert [session.hparams[k].string_value for k in ("Classes", "Method", "Net", "Stage", "task")] == [
        "without3",
        "seed_mlp_new3",
        "SeedMLP",
        "pretrain",
        "PretrainTask",
    ]
    assert not any(k.startswith("_") for k in session.hparams)
    assert {"hparam/acc", "hparam/forget_acc", "hparam/retain_acc", "hparam/new_acc"} <= set(events.Tags()["scalars"])


def test_last_checkpoint_holds_the_final_step_when_the_best_is_older(tmp_path):
    # lr 0: the second epoch's val/acc only ties the first, so the best stays at epoch 0 (Lightning 2.6's
    # save_last would then leave last.ckpt there too)
    cli = fit(
        CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_epochs=2", "--trainer.limit_train_batches=2",
        "--model.init_args.optimizer.init_args.lr=0", "--model.init_args.log_figures=false",
    )  # fmt: skip
    checkpoints = tmp_path / "lightning_logs" / "pretrain" / "seed_mlp" / "version_0" / "checkpoints"
    (best,) = checkpoints.glob("best-*.ckpt")
    assert best.name == "best-0-2.ckpt"
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, cli.trainer.global_step) == (1, 4)
    assert last_checkpoint(cli.trainer) == checkpoints / "last.ckpt"


def test_oracle_never_sees_the_forget_class(tmp_path):
    _, labels = _fit_recording_labels(CONFIGS / "oracle.yaml", tmp_path)
    assert labels == set(range(9))


def test_oracle_with_new_classes_trains_on_retain_and_new(tmp_path):
    _, labels = _fit_recording_labels(
        CONFIGS / "oracle.yaml", tmp_path, "--data.init_args.forget_classes=[6]", "--data.init_args.new_classes=[3]"
    )
    assert labels == set(range(10)) - {6}


def test_test_command_reports_per_class_accuracy_equal_to_a_direct_computation(pretrained_ckpt, tmp_path):
    cli = main(
        [
            "test",
            "-c",
            str(CONFIGS / "pretrain.yaml"),
            "-c",
            str(TINY),
            "--trainer.limit_test_batches=1.0",
            f"--trainer.default_root_dir={tmp_path}",
            "--ckpt_path",
            str(pretrained_ckpt),
        ]
    )
    metrics = cli.trainer.callback_metrics
    net = PretrainTask.load_from_checkpoint(pretrained_ckpt).net.eval()
    x, y = cli.datamodule.split_tensors("test")
    with torch.no_grad():
        preds = net(x).argmax(1)
    for c in range(10):
        expected = (preds[y == c] == c).float().mean()
        assert torch.isclose(metrics[f"test_class_acc/{c}"], expected), c
    assert torch.isclose(metrics["test/acc"], (preds == y).float().mean())
    assert torch.isclose(metrics["test/forget_acc"], (preds[y == 9] == 9).float().mean())
    assert torch.isclose(metrics["test/retain_acc"], (preds[y != 9] == y[y != 9]).float().mean())


def test_random_forgetting_mode_reports_accuracy_on_the_forget_samples(tmp_path):
    cli = fit(CONFIGS / "retrain" / "oracle.yaml", tmp_path, "--trainer.limit_val_batches=1.0", "--data.init_args.batch_size=200")
    metrics = cli.trainer.callback_metrics
    assert len(cli.datamodule.split_index["forget"]) == round(0.9 * 55000)
    x, y = cli.datamodule.split_tensors("forget")  # the forgotten training samples themselves, not a class
    with torch.no_grad():
        own = (cli.model.net.eval()(x).argmax(1) == y).float().mean()
    assert torch.isclose(metrics["val/forget_acc"], own)
    assert not torch.isclose(metrics["val/forget_acc"], metrics["val/retain_acc"])  # a different set of samples


def test_print_config_shows_the_linked_classes_once(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--print_config", "-c", str(CONFIGS / "pretrain.yaml")])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "unlearning.models.SeedMLP" in printed and printed.count("forget_classes") == 1


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--trainer.max_epcohs=3", r"unknown option or config key 'trainer.max_epcohs'; did you mean --trainer.max_epochs\?"),
        ("--trainer.max_epoch=3", r"'trainer.max_epoch'; did you mean --trainer.max_epochs\?"),  # a prefix is no abbreviation
        ("--model.init_args.log_figure=false", r"'model.init_args.log_figure'; did you mean --model.init_args.log_figures\?"),
        ("--model.init_args.optimizer.init_args.lrr=0.1", r"did you mean --model.init_args.optimizer.init_args.lr\?"),
        ("--data.init_args.batchsize=3", r"did you mean --data.init_args.batch_size\?"),
        (
            "--model.init_args.lerning_rate=0.1",
            r"^unknown option or config key 'model.init_args.lerning_rate' \(run 'unlearning fit --help'",
        ),
        ("--trainer.max_epochs=abc", r"^trainer.max_epochs: expected int or NoneType, got abc"),
        ("--trainer.max_epochs=-5", r"`max_epochs` must be a non-negative integer or -1. You passed in -5."),
    ],
)
def test_a_mistyped_option_is_one_line_with_the_nearest_option(argument, message, tmp_path):
    with pytest.raises(UsageError, match=message) as error:
        main(["fit", "-c", str(CONFIGS / "pretrain.yaml"), f"--trainer.default_root_dir={tmp_path}", argument])
    assert "\n" not in str(error.value) and "help" in str(error.value)
    assert not (tmp_path / "lightning_logs").exists()  # nothing was written


def test_a_misspelled_key_in_a_config_file_is_named_with_the_nearest_one(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text((CONFIGS / "pretrain.yaml").read_text().replace("max_epochs:", "max_epoch:"))
    with pytest.raises(UsageError, match=r"unknown option or config key 'trainer.max_epoch'; did you mean --trainer.max_epochs\?"):
        main(["fit", "-c", str(config)])


def test_an_unknown_command_suggests_the_nearest(capsys):
    with pytest.raises(UsageError, match=r"unknown command 'fitt'; did you mean 'fit'\?"):
        main(["fitt"])
    with pytest.raises(UsageError, match=r"^unknown command 'predict'; the commands are fit, validate, test, evaluate, bench"):
        main(["predict", "-c", str(CONFIGS / "pretrain.yaml")])  # no task defines prediction data: not offered, so not a late failure
    with pytest.raises(UsageError, match=r"^no command given; the commands are fit, validate, test, evaluate, bench"):
        main([])
    main(["--help"])
    listing = capsys.readouterr().out
    assert all(f"  {command}" in listing for command in COMMANDS) and "predict" not in listing


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--data.init_args.forget_classes=[10]", "0..9"),
        ("--data.init_args.new_classes=[9]", "both forget_classes and new_classes"),
        ("--data.init_args.forget_fraction=1.5", r"\(0, 1\)"),
        ("--data.init_args.val_size=60000", "val_size"),
        ("--trainer.gradient_clip_val=1.0", "--model.init_args.gradient_clip_val"),
        ("--trainer.accumulate_grad_batches=2", "batch_size"),
        ("--model.init_args.optimizer.init_args.lr=-1", r"^model.init_args.optimizer or lr_scheduler: Invalid learning rate: -1.0$"),
        ("--trainer.val_check_interval=0", r"^--trainer.val_check_interval must be positive \(steps, or a share of an epoch\), got 0$"),
        ("--trainer.log_every_n_steps=0", r"^--trainer.log_every_n_steps must be at least 1, got 0$"),
        ("--seed_everything=-1", r"^seed_everything must lie in 0..4294967295, got -1$"),
        ("--seed_everything=true", r"^seed_everything \(linked to data.init_args.seed\): expected int, got True \(run"),
        ("--model.init_args.optimizer.init_args.lr=abc", r"^model.init_args.optimizer.init_args.lr: expected float, got abc \(run"),
        *(
            (budget, r"^this fit would train nothing \(max_steps, max_epochs or limit_train_batches is 0\)")
            for budget in ("--trainer.max_steps=0", "--trainer.max_epochs=0", "--trainer.limit_train_batches=0")
        ),
    ],
)
def test_bad_inputs_raise_usage_errors(tmp_path, override, message):
    with pytest.raises(UsageError, match=message):
        fit(
            CONFIGS / "pretrain.yaml",
            tmp_path,
            override,
            "--data.init_args.forget_fraction=null" if "fraction" not in override else "--data.init_args.forget_classes=[]",
        )
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("command", ["validate", "test"])
def test_scoring_without_a_checkpoint_is_refused(tmp_path, command):
    """It would score a fresh draw of the network and print its accuracy as if it were a result."""
    with pytest.raises(UsageError, match=rf"^`{command}` scores a trained model: give --ckpt_path"):
        main([command, "-c", str(CONFIGS / "pretrain.yaml"), f"--trainer.default_root_dir={tmp_path}"])
    assert not list(tmp_path.iterdir())


def test_a_cosine_schedule_of_no_steps_is_one_line(tmp_path):
    """torch divides by ``T_max`` at the first step: refused when the optimizer is built, not as a traceback mid-run."""
    with pytest.raises(UsageError, match=r"^CosineAnnealingLR's T_max must be at least 1 \(it is normally max_steps\), got 0$"):
        fit(
            CONFIGS / "pretrain.yaml", tmp_path,
            "--model.init_args.lr_scheduler=torch.optim.lr_scheduler.CosineAnnealingLR", "--model.init_args.lr_scheduler.init_args.T_max=0",
        )  # fmt: skip


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        ("unlearn/unit_reset.yaml", "--data.init_args.forget_classes=[11]", "forget_classes must hold class indices in 0..9, got 11"),
        ("replace/reset_retrain.yaml", "--data.init_args.new_classes=[6]", r"class \[6\] is in both forget_classes and new_classes"),
    ],
)
def test_a_bad_class_is_named_before_the_missing_weights(config, override, message, tmp_path):
    """Both are wrong; the class is reported first, so a user who then gives the weights is not refused a second time."""
    with pytest.raises(UsageError, match=message):
        main(["fit", "-c", str(CONFIGS / config), override, f"--trainer.default_root_dir={tmp_path}"])
    assert not (tmp_path / "lightning_logs").exists()


def test_console_entry_prints_one_error_line_and_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "unlearning", "fit", "-c", str(CONFIGS / "pretrain.yaml"), "--data.init_args.forget_classes=[11]", f"--trainer.default_root_dir={tmp_path}"],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["unlearning: error: forget_classes must hold class indices in 0..9, got 11"]
    assert "Traceback" not in result.stderr


def test_the_task_steps_the_scheduler_each_epoch_and_on_each_validation(tmp_path):
    """Lightning leaves schedulers to a task that steps its own optimizer; these are stepped where Lightning would."""
    step = fit(
        CONFIGS / "pretrain.yaml", tmp_path / "step", "--trainer.max_epochs=2", "--trainer.limit_train_batches=2",
        "--model.init_args.lr_scheduler=torch.optim.lr_scheduler.StepLR", "--model.init_args.lr_scheduler.init_args.step_size=1",
        "--model.init_args.lr_scheduler.init_args.gamma=0.5",
    )  # fmt: skip
    assert step.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 / 4)
    plateau = fit(
        CONFIGS / "pretrain.yaml", tmp_path / "plateau", "--trainer.max_epochs=3", "--trainer.limit_train_batches=1",
        "--model.init_args.optimizer.init_args.lr=0", "--model.init_args.lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau",
        "--model.init_args.lr_scheduler.init_args.mode=max", "--model.init_args.lr_scheduler.init_args.patience=0",
    )  # fmt: skip
    scheduler = plateau.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 3  # one step per validation, none for the sanity check
    assert scheduler.best == plateau.trainer.callback_metrics["val/acc"].item()  # fed the monitored metric


@pytest.mark.parametrize(("precision", "tolerance"), [([], 1e-3), (FP16_SCALER, 1e-2)], ids=["32", "16-mixed-with-a-grad-scaler"])
def test_gradient_clip_val_bounds_each_step(tmp_path, precision, tolerance):
    """With SGD at lr 1, a step moves the weights by exactly the clipped gradient, whose global norm is the bound; under a
    GradScaler too (clipped before the scaler unscales, the step would be 65 536 times smaller)."""
    cli = main(
        ["-c", str(CONFIGS / "pretrain.yaml"), "-c", str(TINY), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=1", *precision,
         "--model.init_args.optimizer=torch.optim.SGD", "--model.init_args.optimizer.init_args.lr=1.0", "--model.init_args.gradient_clip_val=0.01"],
        run=False,
    )  # fmt: skip
    before = [p.detach().clone() for p in cli.model.net.parameters()]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(cli.model.net.parameters(), before)])
    assert moved.norm().item() == pytest.approx(0.01, rel=tolerance)


def test_trainer_gets_the_cheap_profiler_and_throttled_bar_unless_the_config_names_its_own(tmp_path, monkeypatch):
    def trainer(*overrides):
        return main(["-c", str(CONFIGS / "pretrain.yaml"), f"--trainer.default_root_dir={tmp_path}", *overrides], run=False).trainer

    assert isinstance(trainer().progress_bar_callback, LogProgress)  # pytest's stdout is no terminal: plain lines
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    default = trainer()
    assert isinstance(default.profiler, NoProfiler) and isinstance(default.progress_bar_callback, ThrottledProgressBar)
    assert isinstance(trainer("--trainer.profiler=simple").profiler, SimpleProfiler)
    assert trainer("--trainer.enable_progress_bar=false").progress_bar_callback is None
    own = trainer("--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar", "--trainer.callbacks.refresh_rate=5")
    assert type(own.progress_bar_callback) is TQDMProgressBar and own.progress_bar_callback.refresh_rate == 5


def test_throttled_bar_redraws_at_most_every_min_interval_and_always_at_the_last_batch(monkeypatch):
    clock = iter([0.0, 0.05, 0.12, 0.13, 0.14])
    monkeypatch.setattr("unlearning.training.time.monotonic", lambda: next(clock))
    bar = ThrottledProgressBar(min_interval=0.1)
    assert [bar._should_update(batch, 5) for batch in (1, 2, 3, 4, 5)] == [True, False, True, False, True]


def test_importing_the_package_skips_a_cuda_probe_that_cannot_load():
    """Lightning's NVML-based CUDA check fails to load NVML on every optimizer step where there is no NVIDIA driver."""
    import ctypes
    import os

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        expected = "1"
    except OSError:
        expected = "0"
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == expected
    assert torch.cuda.is_available() == (torch.cuda.device_count() > 0)


def test_every_fit_ends_with_its_result_and_where_it_wrote_it(pretrained_ckpt, tmp_path, capsys):
    cli = main(["fit", "-c", str(CONFIGS / "unlearn" / "selective_gradient.yaml"), f"--model.init_args.weights={pretrained_ckpt}",
                f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                "--trainer.limit_val_batches=1", "--model.init_args.log_figures=false"])  # fmt: skip
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["before", "after"])
    forget = lines[header + 2].split()  # acc, then forget_acc
    assert forget[0] == "val/forget_acc" and forget[2] == f"{100 * float(cli.trainer.callback_metrics['val/forget_acc']):.2f}%"
    assert forget[1] == f"{100 * cli.model.before['val/forget_acc']:.2f}%"
    assert f"run folder   {cli.trainer.log_dir}" in out and f"last         {last_checkpoint(cli.trainer)}" in out
    assert "\r" not in out and "\x1b[" not in out  # stdout is no terminal here: plain progress lines, no redrawn bar


def test_test_logs_into_the_checkpoints_run_folder_and_prints_percent(pretrained_ckpt, tmp_path, capsys):
    run_dir = pretrained_ckpt.parents[1]
    before = set(run_dir.glob("events.out.tfevents.*"))
    main(
        [
            "test",
            "-c",
            str(CONFIGS / "pretrain.yaml"),
            "-c",
            str(TINY),
            f"--trainer.default_root_dir={tmp_path}",
            f"--ckpt_path={pretrained_ckpt}",
        ]
    )
    (events,) = set(run_dir.glob("events.out.tfevents.*")) - before  # no new version_N anywhere: the run's own folder
    assert "test/acc" in EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert (run_dir / "test_config.yaml").exists() and not list(tmp_path.rglob("version_*"))
    printed = capsys.readouterr().out
    assert re.search(r"^test/acc\s+\d+\.\d\d%$", printed, re.MULTILINE) and re.search(
        r"^test_class_acc/9\s+\d+\.\d\d%$", printed, re.MULTILINE
    )
    assert "0." not in printed.split("test/acc")[1].splitlines()[0]  # percent with two decimals, not Lightning's raw fraction


def test_help_lists_every_command_under_the_programs_own_name():
    for argv in (["--help"], ["fit", "--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "unlearning", *argv], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
        )
        assert result.returncode == 0 and result.stdout.startswith("usage: unlearning"), result.stdout[:200]
    listing = subprocess.run(
        [sys.executable, "-m", "unlearning", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    ).stdout
    for command in COMMANDS:
        (line,) = [line for line in listing.splitlines() if line.strip().startswith(command + " ")]
        assert len(line.split(None, 1)[1]) > 20, line  # a description, not cut short


@pytest.mark.parametrize("argv", [["--help"], ["fitt"], []], ids=["help", "misspelled", "nothing"])
def test_help_and_a_misspelled_command_import_no_lightning(argv):
    """They answer at once: Lightning, torchmetrics and torchvision take seconds to import (read from -X importtime)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "unlearning", *argv], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "unlearning.cli" in imported, result.stderr[-500:]
    assert not {name for name in imported if name.split(".")[0] in ("lightning", "torchmetrics", "torchvision", "torch")}
    assert result.returncode == (0 if argv == ["--help"] else 2)


def test_validate_prints_its_table_and_no_progress_line(pretrained_ckpt, tmp_path, capsys):
    """A progress line ("epoch 0 step 0/inf validated") means a fit's progress; `validate` has its table of percentages."""
    main(["validate", "-c", str(CONFIGS / "pretrain.yaml"), "-c", str(TINY), "--trainer.enable_progress_bar=true",
          f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={pretrained_ckpt}"])  # fmt: skip
    printed = capsys.readouterr().out
    assert re.search(r"^val/retain_acc\s+\d+\.\d\d%$", printed, re.MULTILINE) and "validated" not in printed


def test_a_fit_that_stops_before_validating_says_so_instead_of_an_empty_table(tmp_path, capsys, recwarn):
    """max_steps inside the first epoch: no val/acc exists, so the summary says how to score the run, and Lightning's
    warning about the best checkpoint's missing metric (which names no cause) is not shown."""
    cli = fit(CONFIGS / "pretrain.yaml", tmp_path, "--trainer.max_steps=2", "--model.init_args.log_figures=false")
    printed = capsys.readouterr().out
    assert "no validation ran: the fit stopped before its first" in printed and last_checkpoint(cli.trainer).is_file()
    assert not [w for w in recwarn if "could not find the monitored key" in str(w.message)]


@pytest.mark.parametrize(
    ("given", "target", "source"),
    [
        ("model:\n  init_args:\n    forget_classes: [4]\n", "model.init_args.forget_classes", "data.init_args.forget_classes"),
        ("--model.forget_fraction=0.1", "model.init_args.forget_fraction", "data.init_args.forget_fraction"),
        ("--data.init_args.seed=3", "data.init_args.seed", "seed_everything"),
    ],
    ids=["yaml", "short_key", "seed"],
)
def test_a_value_for_a_linked_key_is_refused_not_silently_replaced(tmp_path, given, target, source):
    """jsonargparse overwrites a link's target with its source: the YAML's class 4 would have become the data's class 9."""
    if given.startswith("model:"):
        (tmp_path / "mine.yaml").write_text(given)
        given = f"--config={tmp_path / 'mine.yaml'}"
    where = "in .*mine.yaml" if given.startswith("--config") else "on the command line"
    with pytest.raises(
        UsageError, match=rf"^{target} \(given {where}\) is taken from {source}, which would silently replace it; set {source} instead$"
    ):
        fit(CONFIGS / "pretrain.yaml", tmp_path / "logs", given)
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("budget", "interval"), [("--trainer.max_steps=3", 3), ("--trainer.limit_train_batches=2", 2), ("--trainer.max_steps=30", 5)]
)
def test_a_fit_shorter_than_the_logging_interval_logs_at_its_end(tmp_path, budget, interval):
    """tiny.yaml logs every 5 steps: a 3-step budget or a 2-batch epoch would log no training loss at all (and Lightning warns)."""
    cli = fit(CONFIGS / "pretrain.yaml", tmp_path, budget, "--model.init_args.log_figures=false")
    assert cli.trainer.log_every_n_steps == interval
    (events,) = Path(cli.trainer.log_dir).glob("events.out.tfevents.*")
    assert EventAccumulator(str(events)).Reload().Scalars("train/loss")
