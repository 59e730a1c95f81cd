"""Cross-entropy training from scratch: the pretrained model, and the oracle as the same task on fewer splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from torch import Tensor

from unlearning.tasks.base import BaseTask, Batch


class PretrainTask(BaseTask):
    """Trains ``net`` with cross-entropy.

    Args:
        stage: ``pretrain`` trains on retain ∪ forget and never sees the new classes;
            ``oracle`` retrains from scratch without the forget data (retain, plus the new
            classes when there are any), the reference every unlearning method is measured against.
        **kwargs: see :class:`BaseTask`.
    """

    def __init__(self, *args: Any, stage: Literal["pretrain", "oracle"] = "pretrain", **kwargs: Any):
        self.stage = stage
        super().__init__(*args, **kwargs)

    @classmethod
    def run_stage(cls, init_args: Mapping[str, Any]) -> str:
        return init_args.get("stage") or "pretrain"

    @property
    def train_streams(self) -> Mapping[str, Sequence[str]]:  # type: ignore[override]
        if self.stage == "pretrain":
            return {"train": ("retain", "forget")}
        return {"train": ("retain", "new") if self.new_classes else ("retain",)}

    def training_loss(self, batch: Batch) -> Tensor:
        loss = self.cross_entropy_step(batch, "train")
        self.log_loss("loss", loss, len(batch["train"][1]))
        return loss
