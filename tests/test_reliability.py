"""Interrupted runs resume to the same result, and a 2-process fit completes and agrees with 1 process."""

import pytest
import torch

from tests.conftest import CONFIGS, fit
from unlearning.errors import UsageError

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
