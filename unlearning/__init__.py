"""Class unlearning and class replacement on PyTorch Lightning, with evidence that a class is forgotten rather than hidden.

Importing the package imports no Lightning, torchmetrics or torchvision: ``unlearning --help`` and a misspelled command
answer at once. The modules that use Lightning import it through :mod:`unlearning.nvml`.
"""

__version__ = "0.1.0"
