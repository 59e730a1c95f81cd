"""Class unlearning and class replacement on PyTorch Lightning, with evidence that a class is forgotten rather than hidden."""

__version__ = "0.1.0"
