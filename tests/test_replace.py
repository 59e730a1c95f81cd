"""Class replacement through the real CLI, from a real pretrained checkpoint that never saw the new class."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from tests.conftest import CONFIGS, TINY, changed, fit_recording
from unlearning.checkpoints import build_net, last_checkpoint, net_state_dict, read_checkpoint, task_hparams
from unlearning.cli import main
from unlearning.errors import UsageError
from unlearning.saliency import frozen_share, unchanged_share
from unlearning.tasks.replace import ReplaceTask

REPLACE = CONFIGS / "replace"
METHODS = sorted(p for p in REPLACE.glob("*.yaml") if p.stem not in ("pretrain", "oracle") and not p.is_symlink())
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--model.init_args.log_figures=false"]


def pretrain(root: Path, *overrides: str) -> Path:
    cli = main(
        [
            "fit",
            "-c",
            str(REPLACE / "pretrain.yaml"),
            "-c",
            str(TINY),
            "--trainer.limit_train_batches=50",
            f"--trainer.default_root_dir={root}",
            *QUIET,
            *overrides,
        ]
    )
    return last_checkpoint(cli.trainer)


@pytest.fixture(scope="module")
def replace_ckpt(tmp_path_factory) -> Path:
    """SeedMLP pretrained for 50 steps on every digit but 3 (old class 6, new class 3)."""
    return pretrain(tmp_path_factory.mktemp("replace_pretrained"))


def replace(config: Path, weights: Path, root: Path, *overrides: str, run: bool = True):
    """``unlearning fit -c config --model.init_args.weights weights`` for two steps (unless overridden), one validation batch."""
    args = ["-c", str(config), "--model.init_args.weights", str(weights), "--trainer.max_steps=2", "--trainer.limit_val_batches=1"]
    args += [f"--trainer.default_root_dir={root}", *QUIET, *overrides]
    return main(["fit", *args] if run else args, run=run)


def last(cli) -> Path:
    return last_checkpoint(cli.trainer)


@pytest.mark.parametrize("stage", ["pretrain", "oracle"])
def test_pretraining_never_sees_the_new_class_and_the_oracle_never_the_old(stage, tmp_path):
    cli = main(["-c", str(REPLACE / f"{stage}.yaml"), "-c", str(TINY), f"--trainer.default_root_dir={tmp_path}", *QUIET], run=False)
    expected = set(range(10)) - ({3} if stage == "pretrain" else {6})
    assert fit_recording(cli).labels == {"train": expected}


def test_replacement_streams_for_another_pair_of_digits(tmp_path):
    """Any two digits: 1 -> 7 here. Each stream holds its own classes, and the metrics name them."""
    classes = ["--data.init_args.forget_classes=[1]", "--data.init_args.new_classes=[7]"]
    weights = pretrain(tmp_path / "pretrain", *classes)
    cli = replace(REPLACE / "selective_gradient.yaml", weights, tmp_path, *classes, "--trainer.val_check_interval=2", run=False)
    assert cli.model.forget_classes == [1] and cli.model.new_classes == [7]  # linked from the datamodule
    assert fit_recording(cli).labels == {"forget": {1}, "new": {7}, "retain": set(range(10)) - {1, 7}}
    assert cli.model.remaining_classes.tolist() == [0, 2, 3, 4, 5, 6, 8, 9]  # where old images may go: never old, never new
    metrics = cli.trainer.callback_metrics
    assert {"val/old_acc", "val/new_acc", "val/retain_acc", "val/old_as_new"} <= set(metrics)


@pytest.mark.parametrize("config", METHODS, ids=lambda p: p.stem)
def test_every_replacement_config_runs_through_the_cli(config, replace_ckpt, tmp_path):
    cli = replace(config, replace_ckpt, tmp_path)
    assert cli.trainer.global_step == 2
    assert changed(net_state_dict(replace_ckpt), net_state_dict(last(cli)))
    state = read_checkpoint(last(cli))["state_dict"]
    assert all(key.startswith("net.") for key in state)  # the distillation teacher stays out of the checkpoint
    assert build_net(last(cli))(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert task_hparams(last(cli))["head_mode"] == cli.model.head_mode  # the evaluation suite reads it from here


def test_pretrain_and_oracle_configs_run_through_the_cli(tmp_path):
    for stage in ("pretrain", "oracle"):
        cli = main(
            [
                "fit",
                "-c",
                str(REPLACE / f"{stage}.yaml"),
                "--trainer.max_steps=2",
                "--trainer.limit_val_batches=1",
                f"--trainer.default_root_dir={tmp_path}",
                *QUIET,
            ]
        )
        assert cli.trainer.global_step == 2 and task_hparams(last(cli))["stage"] == stage


def test_unselected_weights_stay_bit_identical(replace_ckpt, tmp_path):
    cli = replace(
        REPLACE / "selective_gradient.yaml",
        replace_ckpt,
        tmp_path,
        "--trainer.max_steps=5",
        "--model.init_args.optimizer.init_args.weight_decay=0.1",
    )
    masks = read_checkpoint(last(cli))["weight_masks"]
    before, after = net_state_dict(replace_ckpt), net_state_dict(last(cli))
    kept = sum(m.sum() for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert 0.7 <= kept < 0.71  # mask_fraction, plus the new unit's head row the probe needs
    assert masks["head.weight"][3].all() and masks["head.bias"][3]
    for name, mask in masks.items():
        assert torch.equal(after[name][~mask], before[name][~mask]), name
        assert not torch.equal(after[name][mask], before[name][mask]), name


def test_the_probe_fits_only_the_new_unit_before_training(replace_ckpt, tmp_path):
    # learning rate 0: the optimizer moves nothing, so whatever changed, the probe changed
    cli = replace(
        REPLACE / "full_network.yaml", replace_ckpt, tmp_path, "--model.init_args.optimizer.init_args.lr=0", "--trainer.max_steps=1"
    )
    before, after = net_state_dict(replace_ckpt), net_state_dict(last(cli))
    assert changed(before, after) == {"head.weight", "head.bias"}
    rows = torch.ones(10, dtype=torch.bool)
    rows[3] = False
    assert torch.equal(after["head.weight"][rows], before["head.weight"][rows]) and torch.equal(
        after["head.bias"][rows], before["head.bias"][rows]
    )
    net = build_net(last(cli))
    x, _ = cli.datamodule.split_tensors("new")
    assert (net(x).argmax(1) == 3).float().mean() > 0.5  # the pretrained net never predicts 3; the probe alone gets most of them


@pytest.mark.parametrize(("probe_norm", "target_norm"), [("aligned", torch.mean), ("capped", torch.max)])
def test_a_norm_limited_probe_is_the_free_probe_scaled_down_to_the_other_rows_norm(probe_norm, target_norm, replace_ckpt, tmp_path):
    """Weight aligning shrinks the new unit's row and bias by one factor: the decision direction stays the probe's."""
    heads, logged = {}, {}
    for norm in ("free", probe_norm):
        cli = replace(REPLACE / "full_network.yaml", replace_ckpt, tmp_path / norm, "--model.init_args.optimizer.init_args.lr=0",
                      "--trainer.max_steps=1", f"--model.init_args.probe_norm={norm}")  # fmt: skip
        after = net_state_dict(last(cli))
        heads[norm] = after["head.weight"], after["head.bias"]
        events = EventAccumulator(cli.trainer.log_dir).Reload()
        logged[norm] = {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"] if tag.startswith("probe/")}
    (free_w, free_b), (w, b) = heads["free"], heads[probe_norm]
    others = torch.ones(10, dtype=torch.bool)
    others[3] = False
    target = target_norm(free_w[others].norm(dim=1))
    assert free_w[3].norm() > 2 * target  # the unregularised regression outgrows the other rows
    assert torch.equal(w[others], free_w[others]) and torch.equal(b[others], free_b[others])
    assert torch.allclose(w[3].norm(), target)
    scale = w[3].norm() / free_w[3].norm()
    assert torch.allclose(w[3], free_w[3] * scale, atol=1e-6) and torch.allclose(b[3], free_b[3] * scale, atol=1e-6)
    # TensorBoard shows the row as fitted and as kept, beside the other rows' mean norm
    fitted, other_rows = float(free_w[3].norm()), float(free_w[others].norm(dim=1).mean())
    assert logged["free"] == pytest.approx({"probe/fitted_row_norm": fitted, "probe/row_norm": fitted, "probe/other_rows_norm": other_rows})
    assert logged[probe_norm] == pytest.approx(
        {"probe/fitted_row_norm": fitted, "probe/row_norm": float(target), "probe/other_rows_norm": other_rows}
    )


def test_replacement_by_reset_resets_what_serves_the_old_class_then_trains_every_weight(replace_ckpt, tmp_path):
    cli = replace(REPLACE / "reset_retrain.yaml", replace_ckpt, tmp_path, "--trainer.max_steps=3")
    checkpoint = read_checkpoint(last(cli))
    reset, before, after = checkpoint["reset_masks"], net_state_dict(replace_ckpt), net_state_dict(last(cli))
    assert reset["features.1.weight"].all(1).sum() == 25 and "weight_masks" not in checkpoint  # half the first layer's units; no freeze
    assert changed(before, after) == set(before)
    assert fit_recording(replace(REPLACE / "reset_retrain.yaml", replace_ckpt, tmp_path / "streams", run=False)).labels == {
        "new": {3},
        "retain": set(range(10)) - {3, 6},
    }  # no old-class stream: the cross-entropy alone pushes the old unit down


def test_replacement_without_reset_fraction_resets_the_old_class_units_alone(replace_ckpt, tmp_path):
    """``reset_fraction: null`` beside ``reset_unit_fraction``: the most selective half of the first layer's units, whole
    rows, and no scattered weight (before, the units were silently not reset at all)."""
    cli = replace(REPLACE / "reset_retrain.yaml", replace_ckpt, tmp_path, "--model.init_args.reset_fraction=null", "--trainer.max_steps=1")
    reset = read_checkpoint(last(cli))["reset_masks"]
    units = reset["features.1.weight"].all(1)
    assert units.sum() == 25 and torch.equal(reset["features.1.weight"], units[:, None].expand(-1, 784))
    assert torch.equal(reset["features.1.bias"], units)
    assert not any(mask.any() for name, mask in reset.items() if not name.startswith("features.1."))


def test_masked_replacement_of_two_old_classes_keeps_a_frozen_majority_with_the_new_row_trained(replace_ckpt, tmp_path):
    """Two old classes (6 and 8) would reset 26 of the first layer's units and leave 44% of SeedMLP frozen; the config's
    ``min_frozen: 0.5`` resets 22, and the new class's head row still trains."""
    old = ("--data.init_args.forget_classes=[6,8]", "--model.init_args.optimizer.init_args.lr=0", "--trainer.max_steps=1")
    cli = replace(REPLACE / "masked_reset.yaml", replace_ckpt, tmp_path, *old)
    checkpoint = read_checkpoint(last(cli))
    moving = checkpoint["weight_masks"]
    assert checkpoint["reset_masks"]["features.1.weight"].all(1).sum() == 22 and moving["head.weight"][3].all()
    assert (
        frozen_share(moving) == pytest.approx(28 * 785 / 43_350)
        and unchanged_share(net_state_dict(replace_ckpt), net_state_dict(last(cli))) >= 0.5
    )


class FirstTen(nn.Module):
    """A 'network' whose logits are the first ten pixels of its input: metrics with hand-set predictions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]


def test_reuse_mode_reads_the_old_unit_as_the_new_class_in_predictions_and_metrics():
    task = ReplaceTask(FirstTen(), forget_classes=[6], new_classes=[3], head_mode="reuse", log_figures=False)
    labels = torch.tensor([6, 6, 6, 3, 3, 0, 0])
    units = torch.tensor([6, 0, 3, 6, 3, 0, 6])  # the unit that fires for each image
    x = torch.zeros(len(units), 1, 28, 28)
    x.view(len(units), -1)[torch.arange(len(units)), units] = 1.0
    assert task.predict_labels(task(x)).tolist() == [3, 0, 3, 3, 3, 0, 3]
    assert task.target_unit[torch.tensor([3, 0, 6])].tolist() == [6, 0, 6]  # new-class images train the old unit
    task._eval_step((x, labels), "test", 0)
    confmat = task.eval_metrics["test"].compute()["confmat"]
    assert confmat[6].tolist() == [1, 0, 0, 2, 0, 0, 0, 0, 0, 0]  # the old class's row: where its images now go
    summary = task.eval_summaries(confmat, "test")
    assert summary["old_acc"] == 0.0 and summary["old_as_new"] == pytest.approx(2 / 3)
    assert summary["new_acc"] == 1.0 and summary["retain_acc"] == 0.5

    own = ReplaceTask(FirstTen(), forget_classes=[6], new_classes=[3], log_figures=False)
    assert own.predict_labels(own(x)).tolist() == units.tolist()
    # label smoothing spreads over the units each mode trains: never the old class's own unit in `own` mode
    assert own.trained_units.tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert task.trained_units.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_a_pretrained_model_that_knows_the_new_class_gets_a_clear_warning(pretrained_ckpt, replace_ckpt, tmp_path, recwarn):
    # the project's default pretraining (forget 9, no new classes) trained on every digit, 3 included
    with pytest.warns(UserWarning, match=r"trained on class \[3\], which this run learns as new"):
        replace(REPLACE / "selective_gradient.yaml", pretrained_ckpt, tmp_path, run=False)
    replace(REPLACE / "selective_gradient.yaml", replace_ckpt, tmp_path, run=False)
    assert not [w for w in recwarn if "learns as new" in str(w.message)]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--data.init_args.new_classes=[6]"], r"class \[6\] is in both forget_classes and new_classes"),
        (["--data.init_args.new_classes=[10]"], r"new_classes must hold class indices in 0..9, got 10"),
        (["--data.init_args.forget_classes=[-1]"], r"forget_classes must hold class indices in 0..9, got -1"),
        (["--data.init_args.new_classes=[]"], "class replacement needs forget_classes"),
        (["--data.init_args.new_classes=[3,5]", "--model.init_args.head_mode=reuse"], "pairs old and new classes one to one"),
        (['--model.init_args.stream_batch_sizes={"old": 10}'], "stream_batch_sizes takes sizes >= 1 for the streams"),
        (["--model.init_args.mask_layers=6"], r"mask_layers must lie in 1..5 for SeedMLP, got 6"),
        (["--model.init_args.reset_fraction=2"], r"reset_fraction must lie in \(0, 1\], got 2"),
        (["--model.init_args.train_only_reset=true"], "train_only_reset trains the reset weights alone: set reset_fraction or"),
    ],
)
def test_bad_inputs_are_usage_errors_naming_the_problem(override, message, replace_ckpt, tmp_path):
    with pytest.raises(UsageError, match=message):
        replace(REPLACE / "selective_gradient.yaml", replace_ckpt, tmp_path, *override, run=False)


def test_each_stream_is_served_at_its_own_batch_size(replace_ckpt, tmp_path):
    cli = replace(REPLACE / "selective_gradient.yaml", replace_ckpt, tmp_path, "--data.init_args.batch_size=64",
                  '--model.init_args.stream_batch_sizes={"new": 32, "forget": 16}', run=False)  # fmt: skip
    recorder = fit_recording(cli)
    assert recorder.sizes == {"forget": {16}, "new": {32}, "retain": {64}}


def test_a_resumed_replacement_reuses_its_mask_skips_the_probe_and_ends_as_an_uninterrupted_run(replace_ckpt, tmp_path, monkeypatch):
    budget = ("--trainer.val_check_interval=3", "--trainer.limit_val_batches=1")
    straight = replace(REPLACE / "selective_gradient.yaml", replace_ckpt, tmp_path / "straight", "--trainer.max_steps=6", *budget)
    first = replace(REPLACE / "selective_gradient.yaml", replace_ckpt, tmp_path / "resumed", "--trainer.max_steps=3", *budget)
    monkeypatch.setattr(ReplaceTask, "probe", lambda self: pytest.fail("a resumed run probed again"))
    resumed = replace(
        REPLACE / "selective_gradient.yaml", replace_ckpt, tmp_path / "resumed", "--trainer.max_steps=6", *budget, "--ckpt_path=last"
    )
    saved = read_checkpoint(last(first))["weight_masks"]
    assert all(torch.equal(resumed.model.weight_masks[k].cpu(), v) for k, v in saved.items())
    expected, got = net_state_dict(last(straight)), net_state_dict(last(resumed))
    assert all(torch.equal(expected[k], got[k]) for k in expected)


class RankDependentProbe(ReplaceTask):
    """Rank 1 fits its probe on fewer samples than rank 0, so its local result differs: only the broadcast makes them agree."""

    def probe(self):
        if self.global_rank == 1:
            self.probe_samples = 300
        super().probe()


class HeadDump(Callback):
    """Each rank's new-class head row as training starts (after the probe), and the device it lives on."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, *args):
        if trainer.global_step == 0:
            head = pl_module.net.head
            assert head.weight.device == pl_module.device
            torch.save((head.weight[3].detach().cpu(), head.bias[3].detach().cpu()), self.folder / f"head_{trainer.global_rank}.pt")


@pytest.mark.timeout(300)
def test_two_process_replacement_broadcasts_rank_zeros_probe(replace_ckpt, tmp_path):
    cli = replace(
        REPLACE / "selective_gradient.yaml", replace_ckpt, tmp_path, "--trainer.max_steps=2", "--model.class_path=tests.test_replace.RankDependentProbe",
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_spawn", run=False,
    )  # fmt: skip
    cli.trainer.callbacks.append(HeadDump(tmp_path))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (w0, b0), (w1, b1) = (torch.load(tmp_path / f"head_{rank}.pt") for rank in (0, 1))
    assert torch.equal(w0, w1) and torch.equal(b0, b1)
