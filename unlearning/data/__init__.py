from unlearning.data.mnist import MNISTDataModule, load_mnist, prepare_mnist
from unlearning.data.splits import build_splits

__all__ = ["MNISTDataModule", "build_splits", "load_mnist", "prepare_mnist"]
