"""Proxy supervision g_proxy (AND / XOR targets), the Eq. 12 read-out and label decoding.

Wang et al., "Pairwise learning for medical image segmentation", MedIA 2021, Sec. 3.1.2 and 3.2.1.
For a pair of label maps (y_i, y_j) the proxy supervision y_ij = g_proxy(y_i, y_j) is:

- one foreground class (K == 1): a 3-category one-hot map
  [background in both, y_i AND y_j, y_i XOR y_j] (fitted as multi-class segmentation);
- K > 1 classes: 2K binary maps [AND_1..AND_K, XOR_1..XOR_K] (fitted as multi-label segmentation).

g_proxy is symmetric and g_proxy(y, y) = {AND = y, XOR = 0}, so a network trained on it segments a
slice x from the AND channel(s) of f(x, x) (reflexivity, Eq. 12).

Every function takes numpy arrays or torch tensors and returns the same library; torch work stays
on the input's device. The module imports torch only for tensors, so numpy callers (the Slicer
modules, which never load torch) use the same g_proxy as training does.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Union

import numpy as np

from pairseg.architectures import architecture

if TYPE_CHECKING:
    import torch

Array = Union[np.ndarray, "torch.Tensor"]

__all__ = [
    "proxy_channels",
    "proxy_targets",
    "proxy_targets_unchecked",
    "proxy_probabilities",
    "segmentation_from_proxy",
    "READOUTS",
    "decode_labels",
]


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
    return int(num_classes)


def proxy_channels(num_classes: int) -> int:
    """Number of proxy maps P: 3 for one foreground class, else 2K (AND_k and XOR_k per class)."""
    k = _check_num_classes(num_classes)
    return 3 if k == 1 else 2 * k


def _is_tensor(x: object) -> bool:
    """Whether ``x`` is a torch tensor (torch cannot have made one if it was never imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _is_integer_labels(labels: Array) -> bool:
    if _is_tensor(labels):
        import torch

        return labels.dtype == torch.bool or not (labels.is_floating_point() or labels.is_complex())
    return labels.dtype == np.bool_ or np.issubdtype(labels.dtype, np.integer)


def _value_range(labels: Array) -> tuple[int, int]:
    if _is_tensor(labels):
        import torch

        lo, hi = torch.aminmax(labels.to(torch.int64))  # one device sync for both bounds
        return int(lo), int(hi)
    return int(labels.min()), int(labels.max())


def _check_labels(label_a: Array, label_b: Array, num_classes: int) -> None:
    """Raise ValueError on mismatched libraries / shapes, non-integer dtypes or values outside 0..K."""
    a_torch = _is_tensor(label_a)
    b_torch = _is_tensor(label_b)
    for name, lab, is_t in (("label_a", label_a, a_torch), ("label_b", label_b, b_torch)):
        if not is_t and not isinstance(lab, np.ndarray):
            raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(lab).__name__}")
    if a_torch != b_torch:
        raise ValueError("label_a and label_b must both be numpy arrays or both torch tensors")
    if tuple(label_a.shape) != tuple(label_b.shape):
        raise ValueError(
            f"label_a and label_b must have the same shape, got {tuple(label_a.shape)} "
            f"and {tuple(label_b.shape)}"
        )
    if label_a.ndim < 2:
        raise ValueError(f"label maps must have shape (..., H, W), got {tuple(label_a.shape)}")
    for name, lab in (("label_a", label_a), ("label_b", label_b)):
        if not _is_integer_labels(lab):
            raise ValueError(f"{name} must hold integer labels (0 = background, 1..K), got dtype {lab.dtype}")
        if lab.shape.numel() if a_torch else lab.size:
            lo, hi = _value_range(lab)
            if lo < 0 or hi > num_classes:
                raise ValueError(
                    f"{name} has label values in [{lo}, {hi}], outside 0..{num_classes} "
                    f"(num_classes={num_classes})"
                )


def proxy_targets_unchecked(label_a: Array, label_b: Array, num_classes: int) -> Array:
    """``proxy_targets`` without validation (the training loss's hot path): numpy arrays or torch
    tensors (on any device) of the same shape with values 0..K."""
    if _is_tensor(label_a):
        import torch

        classes = torch.arange(1, num_classes + 1, device=label_a.device).view(num_classes, 1, 1)
        a = label_a.unsqueeze(-3).to(torch.int64) == classes  # (..., K, H, W): y_i == k
        b = label_b.unsqueeze(-3).to(torch.int64) == classes

        def stack(maps):
            return torch.cat(maps, dim=-3).to(torch.float32)
    else:
        classes = np.arange(1, num_classes + 1).reshape(num_classes, 1, 1)
        a = np.expand_dims(np.asarray(label_a).astype(np.int64), -3) == classes
        b = np.expand_dims(np.asarray(label_b).astype(np.int64), -3) == classes

        def stack(maps):
            return np.concatenate(maps, axis=-3).astype(np.float32)
    both, one = a & b, a ^ b  # AND_k and XOR_k (Eqs. 3-4)
    return stack((~(a | b), both, one) if num_classes == 1 else (both, one))


def proxy_targets(label_a: Array, label_b: Array, num_classes: int) -> Array:
    """Proxy supervision y_ij = g_proxy(y_i, y_j) (paper Sec. 3.1.2, Eqs. 3-4).

    label maps (..., H, W) with values 0..K -> float32 (..., P, H, W), P = proxy_channels(K):
    K == 1: one-hot [background in both, AND, XOR]; K > 1: binary [AND_1..AND_K, XOR_1..XOR_K].
    """
    k = _check_num_classes(num_classes)
    _check_labels(label_a, label_b, k)
    return proxy_targets_unchecked(label_a, label_b, k)


def _check_channels(x: Array, num_classes: int, what: str) -> int:
    p = proxy_channels(num_classes)
    if x.ndim < 3 or x.shape[-3] != p:
        raise ValueError(
            f"{what} must have shape (..., {p}, H, W) for num_classes={num_classes}, "
            f"got {tuple(x.shape)}"
        )
    return p


def proxy_probabilities(logits: Array, num_classes: int) -> Array:
    """Proxy logits (..., P, H, W) -> probabilities: softmax over channels (K == 1, 3 categories)
    or an independent sigmoid per map (K > 1, multi-label)."""
    k = _check_num_classes(num_classes)
    _check_channels(logits, k, "proxy logits")
    if _is_tensor(logits):
        import torch

        return torch.softmax(logits, dim=-3) if k == 1 else torch.sigmoid(logits)
    x = np.asarray(logits, dtype=np.float32)
    if k == 1:
        e = np.exp(x - x.max(axis=-3, keepdims=True))
        return e / e.sum(axis=-3, keepdims=True)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # overflow-free sigmoid


READOUTS = architecture("c2fcn").choices["readout"]  # the read-outs of the proxy maps (C2FCN option)


def segmentation_from_proxy(proxy_probs: Array, num_classes: int, readout: str = "and") -> Array:
    """Per-class foreground probabilities (..., K, H, W) from the proxy prediction on an identical
    pair, f(x, x) = {y, 0} (reflexivity, paper Eq. 12).

    ``readout="and"`` reads the AND channel(s), as the paper does. ``readout="union"`` reads
    "foreground in at least one input": AND + XOR for one class (1 - background-in-both), and
    1 - (1 - AND_k)(1 - XOR_k) for K classes. For a perfectly reflexive network both agree (XOR
    is 0 on an identical pair); a network that has not learned reflexivity yet puts part of the
    foreground into XOR, which the union keeps and the AND read-out loses.
    """
    k = _check_num_classes(num_classes)
    _check_channels(proxy_probs, k, "proxy probabilities")
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    if k == 1:
        if readout == "and":
            return proxy_probs[..., 1:2, :, :]
        return 1.0 - proxy_probs[..., 0:1, :, :]  # AND + XOR, without rounding above 1
    if readout == "and":
        return proxy_probs[..., :k, :, :]
    return 1.0 - (1.0 - proxy_probs[..., :k, :, :]) * (1.0 - proxy_probs[..., k:, :, :])


def decode_labels(class_probs: Array, threshold: float = 0.5) -> Array:
    """Per-class foreground probabilities (..., K, H, W) -> int64 label map (..., H, W):
    1 + argmax_k p_k where max_k p_k >= threshold, else 0 (background)."""
    if class_probs.ndim < 3:
        raise ValueError(
            f"class probabilities must have shape (..., K, H, W), got {tuple(class_probs.shape)}"
        )
    if class_probs.shape[-3] < 1:
        raise ValueError("class probabilities need at least one class channel")
    if _is_tensor(class_probs):
        import torch

        best, idx = torch.max(class_probs, dim=-3)
        labels = idx.to(torch.int64) + 1
        return torch.where(best >= threshold, labels, torch.zeros_like(labels))
    probs = np.asarray(class_probs)
    idx = np.argmax(probs, axis=-3)
    best = np.take_along_axis(probs, np.expand_dims(idx, -3), axis=-3)[..., 0, :, :]
    return np.where(best >= threshold, idx.astype(np.int64) + 1, 0).astype(np.int64)
