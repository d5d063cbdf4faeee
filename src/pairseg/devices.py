"""Device selection and capability probes: which torch device a run uses, and what it can do.

Every engine module that turns a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``;
``pairseg.constants.DEVICES``) into a ``torch.device`` goes through ``resolve_device``.
"""

from __future__ import annotations

import torch

from pairseg.constants import DEVICES, PRECISIONS, is_device_name
from pairseg.errors import PairSegInputError

__all__ = ["resolve_device", "bf16_supported", "check_precision", "PRECISIONS"]


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """The ``torch.device`` for ``name``: ``auto`` picks CUDA, then Apple MPS, then the CPU.

    Raises:
        PairSegInputError: an unknown name, or a device this machine does not have.
    """
    name = (name or "auto").lower()
    if not is_device_name(name):
        raise PairSegInputError(f"unknown device {name!r}; use {', '.join(DEVICES)} or cuda:N")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PairSegInputError("device 'cuda' requested but no CUDA GPU is available to PyTorch")
    if name == "mps" and not _mps_available():
        raise PairSegInputError("device 'mps' requested but Apple MPS is not available")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively: a CPU with oneDNN's bfloat16 path (AVX-512 BF16 or
    AMX) or a CUDA GPU that supports it."""
    if device.type == "cpu":
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return False


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse an unknown precision, and bf16 where the device cannot run it fast (``bf16_supported``).

    Raises:
        PairSegInputError: naming the precision and the device.
    """
    if precision not in PRECISIONS:
        raise PairSegInputError(f"unknown precision {precision!r}; use {' or '.join(PRECISIONS)}")
    if precision == "bf16" and not bf16_supported(device):
        raise PairSegInputError(f"precision bf16 is not supported on this {device.type} device; use fp32")
