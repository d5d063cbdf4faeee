"""Device selection and capability probes: which torch device a run uses, and what it can do.

Every engine module that turns a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``;
``pairseg.constants.DEVICES``) into a ``torch.device`` goes through ``resolve_device``.
"""

from __future__ import annotations

import re
import sys

import torch

from pairseg.constants import DEVICES, PRECISIONS, is_device_name
from pairseg.errors import PairSegInputError

__all__ = ["resolve_device", "bf16_supported", "check_precision", "resolve_inference_precision", "PRECISIONS", "cuda_arch_supported",
           "unusable_cuda_reason"]

#: what the engine prints on stderr before a message the Slicer modules show after the run
WARNING_PREFIX = "pairseg: warning: "


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def cuda_arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a PyTorch build compiled for ``arch_list`` (``torch.cuda.get_arch_list()``: ``sm_XY``
    binaries, ``compute_XY`` PTX) can run kernels on a GPU of compute ``capability`` (major, minor).

    A binary runs on GPUs of its major version and a minor version at least its own (sm_80 code runs
    on 8.6, not on 9.0); PTX is compiled by the driver for any GPU at least its version. Suffixed
    targets (sm_90a) run only on exactly that version. An empty list (unknown) counts as supported.
    """
    if not arch_list:
        return True
    major, minor = int(capability[0]), int(capability[1])
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", str(arch).strip())
        if match is None:
            continue
        kind, archMajor, archMinor, suffix = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
        if suffix:
            if (archMajor, archMinor) == (major, minor):
                return True
        elif kind == "sm" and archMajor == major and archMinor <= minor:
            return True
        elif kind == "compute" and (archMajor, archMinor) <= (major, minor):
            return True
    return False


def unusable_cuda_reason(index: int = 0) -> str | None:
    """Why CUDA GPU ``index`` cannot run this PyTorch build's kernels (a sentence), or None when it can
    (``cuda_arch_supported`` on ``torch.cuda.get_device_capability`` and ``get_arch_list``). A query
    that fails counts as a reason: running on that GPU would fail the same way."""
    try:
        capability = torch.cuda.get_device_capability(index)
        arch_list = list(torch.cuda.get_arch_list())
        name = torch.cuda.get_device_name(index)
    except Exception as error:  # a broken driver or runtime
        return f"the CUDA GPU cannot be used ({error})"
    if cuda_arch_supported(capability, arch_list):
        return None
    return (f"the GPU {name} (compute capability {capability[0]}.{capability[1]}) is not supported by the "
            f"installed PyTorch {torch.__version__} (built for {', '.join(arch_list)})")


def resolve_device(name: str = "auto") -> torch.device:
    """The ``torch.device`` for ``name``: ``auto`` picks CUDA, then Apple MPS, then the CPU.

    ``auto`` skips a CUDA GPU the installed PyTorch cannot run (``unusable_cuda_reason``) and says so
    on stderr (a line starting with WARNING_PREFIX), running on MPS or the CPU instead.

    Raises:
        PairSegInputError: an unknown name, a device this machine does not have, or ``cuda`` on a
            GPU the installed PyTorch cannot run.
    """
    name = (name or "auto").lower()
    if not is_device_name(name):
        raise PairSegInputError(f"unknown device {name!r}; use {', '.join(DEVICES)} or cuda:N")
    if name == "auto":
        if torch.cuda.is_available():
            reason = unusable_cuda_reason(torch.cuda.current_device())
            if reason is None:
                return torch.device("cuda")
            fallback = "mps" if _mps_available() else "cpu"
            print(f"{WARNING_PREFIX}{reason}; running on the {fallback.upper()} instead (slower). Install a "
                  "PyTorch build for this GPU (PyTorch Utils module) to use it.", file=sys.stderr, flush=True)
            return torch.device(fallback)
        return torch.device("mps" if _mps_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PairSegInputError("device 'cuda' requested but no CUDA GPU is available to PyTorch")
    if name.startswith("cuda"):
        index = int(name.split(":", 1)[1]) if ":" in name else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise PairSegInputError(f"device {name!r} requested but PyTorch sees {torch.cuda.device_count()} "
                                    "CUDA GPU(s)")
        reason = unusable_cuda_reason(index)
        if reason is not None:
            raise PairSegInputError(f"{reason}: choose the CPU (or automatic device choice), or install a "
                                    "PyTorch build for this GPU")
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


def resolve_inference_precision(precision: str, device: torch.device) -> str:
    """The precision inference runs in: ``"auto"`` is ``"bf16"`` where ``device`` runs bfloat16
    natively (``bf16_supported``) and ``"fp32"`` elsewhere; ``"fp32"``/``"bf16"`` are checked by
    ``check_precision``. On the shipped model bf16 changed no case's mean Dice by more than 0.02
    points and ran 1.75-2.1x faster on an AVX-512 BF16 CPU (benchmarks/RESULTS.md, inference
    precision).

    Raises:
        PairSegInputError: an unknown precision, or bf16 asked for where it is not supported.
    """
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    check_precision(precision, device)
    return precision
