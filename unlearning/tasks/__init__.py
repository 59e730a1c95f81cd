from unlearning.tasks.base import BaseTask
from unlearning.tasks.pretrain import PretrainTask

__all__ = ["BaseTask", "PretrainTask"]
