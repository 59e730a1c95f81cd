"""Lightning, imported with torch's CUDA check kept cheap where NVML is missing; every module of the package that uses
Lightning imports this one first (through :mod:`unlearning.checkpoints` or directly)."""

import ctypes
import os

import lightning.fabric  # noqa: F401 - sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import; see below


def _skip_missing_nvml() -> None:
    """Ask the CUDA runtime, not NVML, whether CUDA exists when NVML cannot be loaded.

    Lightning turns on torch's NVML-based CUDA check at import, so that asking whether CUDA exists
    does not initialise it before a fork. torch's optimizers ask on every ``step()``, and where
    NVML is missing (any machine without an NVIDIA driver) each ask first fails to load the library,
    ~0.1 ms, then falls back to the runtime check: a twentieth of a small model's step. Loading NVML
    the way torch does and, if that fails, going straight to the runtime check changes no answer.
    """
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1":
        return
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


_skip_missing_nvml()
