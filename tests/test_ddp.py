"""Two CPU processes must report exactly what one process reports."""

import pytest
import torch
from lightning.pytorch import Callback

from tests.conftest import CONFIGS, TINY
from unlearning.cli import main


class SyncedSamples(Callback):
    """Logs how many samples the synced confusion matrix counts: accuracies are ratios, blind to a matrix counted twice."""

    def on_validation_epoch_end(self, trainer, pl_module):  # before the task's own hook, which resets the metrics
        pl_module.log("synced_samples", pl_module.eval_metrics["val"]["confmat"].compute().sum().float())


def _validate(ckpt, tmp_path, *overrides):
    cli = main(
        ["validate", "-c", str(CONFIGS / "pretrain.yaml"), "-c", str(TINY), "--trainer.limit_val_batches=1.0", "--data.init_args.val_size=4999",
         "--data.init_args.eval_batch_size=1000", f"--trainer.default_root_dir={tmp_path}", "--ckpt_path", str(ckpt),
         "--trainer.callbacks+=tests.test_ddp.SyncedSamples", *overrides]
    )  # fmt: skip
    return {k: v.cpu() for k, v in cli.trainer.callback_metrics.items()}


@pytest.mark.timeout(300)
def test_two_process_validation_matches_one_process(pretrained_ckpt, tmp_path):
    single = _validate(pretrained_ckpt, tmp_path / "one")
    # 4999 samples: the ranks hold 2500 and 2499, so uneven shards are covered too
    double = _validate(
        pretrained_ckpt, tmp_path / "two", "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_spawn"
    )
    assert single.keys() == double.keys() and "val_class_acc/9" in single
    # each rank's metric states its own: spawned processes once added into one shared matrix, every sample counted twice
    assert single["synced_samples"] == double["synced_samples"] == 4999
    for key in single:
        assert torch.allclose(single[key], double[key], atol=1e-6), key
