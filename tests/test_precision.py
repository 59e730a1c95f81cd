"""Every precision the README lists, through pretraining, unlearning, replacement and the evidence suite, on CPU.

``16-mixed`` becomes ``bf16-mixed`` on a CPU in Lightning; its GradScaler path is exercised through Lightning's own
``MixedPrecision`` plugin with fp16 autocast and a CPU GradScaler, which stands in for a GPU's.
"""

import pytest
import torch

from tests.conftest import CONFIGS, FP16_SCALER, TINY
from unlearning.checkpoints import last_checkpoint, net_state_dict
from unlearning.cli import main
from unlearning.errors import UsageError
from unlearning.evaluation.cli import evaluate_main

PRECISIONS = {
    "32": ["--trainer.precision=32"],
    "bf16-mixed": ["--trainer.precision=bf16-mixed"],
    "bf16-true": ["--trainer.precision=bf16-true"],
    "64-true": ["--trainer.precision=64-true"],
    "16-mixed-scaler": FP16_SCALER,
}
QUIET = ["--trainer.enable_model_summary=false", "--model.init_args.log_figures=false", "--trainer.limit_val_batches=1"]


def _fit(config, root, *overrides):
    return main(["fit", "-c", str(config), "-c", str(TINY), f"--trainer.default_root_dir={root}", *QUIET, *overrides])


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_every_stage_runs_and_evaluates_at_each_precision(precision, tmp_path):
    flags = PRECISIONS[precision]
    pretrained = last_checkpoint(_fit(CONFIGS / "pretrain.yaml", tmp_path / "pretrain", "--trainer.limit_train_batches=10", *flags).trainer)
    oracle = last_checkpoint(_fit(CONFIGS / "oracle.yaml", tmp_path / "oracle", "--trainer.limit_train_batches=10", *flags).trainer)
    unlearned = _fit(CONFIGS / "unlearn" / "reset_retrain.yaml", tmp_path / "unlearn", f"--model.init_args.weights={pretrained}",
                     "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--model.init_args.distill_weight=1", *flags)  # fmt: skip
    assert unlearned.trainer.global_step == 3 and torch.isfinite(unlearned.trainer.callback_metrics["val/acc"])
    replace_pretrained = last_checkpoint(
        _fit(CONFIGS / "replace" / "pretrain.yaml", tmp_path / "rpretrain", "--trainer.limit_train_batches=10", *flags).trainer
    )
    replaced = _fit(CONFIGS / "replace" / "selective_gradient.yaml", tmp_path / "replace", f"--model.init_args.weights={replace_pretrained}",
                    "--trainer.max_steps=3", "--trainer.val_check_interval=3", *flags)  # fmt: skip  # with the probe and the teacher
    assert replaced.trainer.global_step == 3 and torch.isfinite(replaced.trainer.callback_metrics["val/new_acc"])
    report = evaluate_main(["--ckpt", str(last_checkpoint(unlearned.trainer)), "--oracle", str(oracle), "--pretrained", str(pretrained),
                            "--out", str(tmp_path / "evidence"), "--train-samples", "500", "--mia-per-side", "200", "--probe-per-side", "100",
                            "--reach-starts", "4", "--reach-steps", "3", "--relearn-steps", "3", "--recover-steps", "3"])  # fmt: skip
    assert report["verdict"]["checkpoint"]["verdict"] in {"forgets", "hides", "incomplete", "damages"}  # it ran to a verdict at all


@pytest.mark.parametrize("method", ["ssd", "head_mask"])
def test_one_shot_edits_refuse_a_grad_scaler_in_one_line(method, pretrained_ckpt, tmp_path):
    with pytest.raises(UsageError, match="takes no gradient steps, which 16-mixed's GradScaler cannot step: use bf16-mixed or 32"):
        _fit(CONFIGS / "unlearn" / f"{method}.yaml", tmp_path, f"--model.init_args.weights={pretrained_ckpt}", *FP16_SCALER)
    assert not list(tmp_path.rglob("version_*"))  # the failed run left no folder


def test_a_true_precision_casts_the_data_once_and_the_teacher_with_the_net(pretrained_ckpt, tmp_path):
    cli = _fit(CONFIGS / "unlearn" / "reset_retrain.yaml", tmp_path, f"--model.init_args.weights={pretrained_ckpt}",
               "--trainer.max_steps=2", "--model.init_args.distill_weight=1", "--trainer.precision=bf16-true")  # fmt: skip
    assert cli.datamodule._tensors["train"][0].dtype == torch.bfloat16 and cli.datamodule._tensors["train"][1].dtype == torch.int64
    assert next(cli.model.teacher.parameters()).dtype == torch.bfloat16
    assert all(v.dtype == torch.bfloat16 for v in net_state_dict(last_checkpoint(cli.trainer)).values())
