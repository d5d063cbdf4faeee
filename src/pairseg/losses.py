"""Dice losses and the per-architecture training criterion.

Paper (Wang et al., MedIA 2021, Eq. 6): CFCN minimises
    L = Dice(y_i, p_i) + Dice(y_j, p_j) + lambda * L_proxy(y_ij, p_ij),   lambda = 2,
with y_ij = g_proxy(y_i, y_j) and L_proxy a multi-class Dice (softmax over the 3 proxy categories
for one foreground class; multi-label, sigmoid per map, for K > 1). C2FCN (Eq. 13) minimises
L_proxy alone.

The soft Dice is MONAI's ``DiceLoss`` on probabilities: per channel, summed over the batch and
the pixels (``batch=True``), ``1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)`` with s = 1, then
averaged over channels. The smoothing keeps empty masks finite (an empty target with an empty
prediction costs 0) and the batch-wide sums keep gradients sensible for slices without organs.
Targets are built with torch ops on the labels' device (no numpy round trip).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from monai.losses import DiceLoss

from .proxy import _check_num_classes, proxy_channels, proxy_probabilities, proxy_targets_unchecked

__all__ = [
    "PROXY_WEIGHT",
    "SMOOTH",
    "TRAINING_FORMS",
    "soft_dice_loss",
    "one_hot",
    "multiclass_dice_loss",
    "seg_weights",
    "proxy_weights",
    "proxy_dice_loss",
    "conjugate_loss",
    "siamese_loss",
    "criterion_for",
]

PROXY_WEIGHT = 2.0  # lambda of Eq. 6
SMOOTH = 1.0
TRAINING_FORMS = ("single", "proxy", "conjugate", "siamese")

Outputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]


@lru_cache(maxsize=None)
def _dice(smooth: float, batch: bool) -> DiceLoss:
    return DiceLoss(include_background=True, smooth_nr=smooth, smooth_dr=smooth, batch=batch)


def soft_dice_loss(
    probs: torch.Tensor, target: torch.Tensor, *, smooth: float = SMOOTH, batch: bool = True
) -> torch.Tensor:
    """Soft Dice loss between probabilities and a same-shaped (N, C, H, W) target, averaged over
    channels. ``batch=True`` sums over the batch before the ratio; False averages per-sample Dice."""
    if probs.shape != target.shape:
        raise ValueError(f"Dice inputs differ in shape: {tuple(probs.shape)} vs {tuple(target.shape)}")
    if probs.ndim < 3:
        raise ValueError(f"Dice inputs must be (N, C, ...), got {tuple(probs.shape)}")
    return _dice(float(smooth), bool(batch))(probs.float(), target.to(torch.float32))


def one_hot(labels: torch.Tensor, num_channels: int) -> torch.Tensor:
    """int labels (N, H, W) -> float32 one-hot (N, num_channels, H, W) on the labels' device."""
    channels = torch.arange(num_channels, device=labels.device).view(num_channels, 1, 1)
    return (labels.unsqueeze(-3) == channels).to(torch.float32)


def _check_labels(labels: torch.Tensor, name: str, logits: torch.Tensor, num_classes: int) -> None:
    """Labels must be integer (N, H, W) matching the logits' (N, ., H, W) with values 0..K."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor (N, H, W), got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer labels (int64), got dtype {labels.dtype}")
    if labels.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got {tuple(labels.shape)}")
    if logits.ndim != 4 or (logits.shape[0], *logits.shape[2:]) != tuple(labels.shape):
        raise ValueError(
            f"{name} shape {tuple(labels.shape)} does not match the outputs' (N, C, H, W) "
            f"shape {tuple(logits.shape)}"
        )
    if labels.numel():
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi > num_classes:
            raise ValueError(f"{name} has values in [{lo}, {hi}], outside 0..{num_classes}")


def _check_logits(logits: object, channels: int, what: str) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{what} must be a tensor (N, {channels}, H, W), got {type(logits).__name__}")
    if logits.ndim != 4 or logits.shape[1] != channels:
        raise ValueError(f"{what} must have shape (N, {channels}, H, W), got {tuple(logits.shape)}")
    return logits


def _masked(probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Soft Dice counting only the (sample, channel) positions where ``weight`` (N, C) is True:
    both the prediction and the target are zeroed elsewhere, so those positions add nothing to
    the batch-wide sums (a channel annotated nowhere in the batch costs 0)."""
    if weight is None:
        return soft_dice_loss(probs, target)
    w = weight.to(probs.device, torch.float32)[:, :, None, None]
    return soft_dice_loss(probs * w, target * w)


def seg_weights(annotated: torch.Tensor | None) -> torch.Tensor | None:
    """(N, K) annotated (slice, class) flags -> (N, K + 1) weights of the segmentation channels:
    class k counts where annotated for k, background where the slice is annotated for every class."""
    if annotated is None:
        return None
    return torch.cat([annotated.all(dim=1, keepdim=True), annotated], dim=1)


def proxy_weights(annotated_a: torch.Tensor | None, annotated_b: torch.Tensor | None) -> torch.Tensor | None:
    """(N, K) flags of both pair members -> (N, P) weights of the proxy channels: AND_k and XOR_k
    count where both slices are annotated for k; for one class all three categories do."""
    if annotated_a is None and annotated_b is None:
        return None
    both = annotated_a & annotated_b
    return both.expand(-1, 3) if both.shape[1] == 1 else torch.cat([both, both], dim=1)


def _seg_dice(logits: torch.Tensor, labels: torch.Tensor, k: int, annotated: torch.Tensor | None = None
              ) -> torch.Tensor:
    return _masked(torch.softmax(logits.float(), dim=1), one_hot(labels, k + 1), seg_weights(annotated))


def _proxy_dice(logits: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor, k: int,
                annotated_a: torch.Tensor | None = None, annotated_b: torch.Tensor | None = None) -> torch.Tensor:
    return _masked(proxy_probabilities(logits.float(), k), proxy_targets_unchecked(label_a, label_b, k),
                   proxy_weights(annotated_a, annotated_b))


def _check_annotated(annotated: torch.Tensor | None, name: str, n: int, k: int) -> None:
    if annotated is None:
        return
    if not isinstance(annotated, torch.Tensor) or annotated.dtype != torch.bool or tuple(annotated.shape) != (n, k):
        got = tuple(annotated.shape) if isinstance(annotated, torch.Tensor) else type(annotated).__name__
        raise ValueError(f"{name} must be a bool tensor (N, K) = ({n}, {k}) of annotated (slice, class) "
                         f"positions, got {got}")


def multiclass_dice_loss(logits: torch.Tensor, labels: torch.Tensor, num_classes: int,
                         annotated: torch.Tensor | None = None) -> torch.Tensor:
    """Segmentation Dice (L_1, L_2 of Eq. 6): softmax over K + 1 logits vs one-hot labels,
    background included. ``annotated`` (N, K) bool: count only annotated (slice, class) positions
    (``seg_weights``); None: every position (fully annotated slices)."""
    k = _check_num_classes(num_classes)
    _check_logits(logits, k + 1, "segmentation logits")
    _check_labels(labels, "labels", logits, k)
    _check_annotated(annotated, "annotated", logits.shape[0], k)
    return _seg_dice(logits, labels, k, annotated)


def proxy_dice_loss(
    logits: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor, num_classes: int,
    annotated_a: torch.Tensor | None = None, annotated_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_proxy: Dice of the proxy prediction p_ij against y_ij = g_proxy(y_i, y_j); multi-class
    (softmax, 3 categories) for K == 1, multi-label (sigmoid, 2K maps) for K > 1. With
    ``annotated_a``/``annotated_b`` ((N, K) bool, both or neither), a class's AND/XOR maps count
    only where both slices are annotated for it (``proxy_weights``)."""
    k = _check_num_classes(num_classes)
    _check_logits(logits, proxy_channels(k), "proxy logits")
    _check_labels(label_a, "label_a", logits, k)
    _check_labels(label_b, "label_b", logits, k)
    _check_pair_annotated(annotated_a, annotated_b, logits.shape[0], k)
    return _proxy_dice(logits, label_a, label_b, k, annotated_a, annotated_b)


def _check_pair_annotated(annotated_a, annotated_b, n: int, k: int) -> None:
    if (annotated_a is None) != (annotated_b is None):
        raise ValueError("give the annotation of both pair members (annotated_a and annotated_b) or neither")
    _check_annotated(annotated_a, "annotated_a", n, k)
    _check_annotated(annotated_b, "annotated_b", n, k)


def _get(outputs: Outputs, key: str, form: str, channels: int) -> torch.Tensor:
    if not isinstance(outputs, Mapping) or key not in outputs:
        got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
        raise ValueError(f"'{form}' outputs must be a dict with key '{key}', got {got}")
    return _check_logits(outputs[key], channels, f"'{form}' output '{key}'")


def _pair_checked(
    outputs: Mapping[str, torch.Tensor], label_a: torch.Tensor, label_b: torch.Tensor, k: int, form: str
) -> tuple:
    seg_a = _get(outputs, "seg_a", form, k + 1)
    seg_b = _get(outputs, "seg_b", form, k + 1)
    _check_labels(label_a, "label_a", seg_a, k)
    _check_labels(label_b, "label_b", seg_b, k)
    return seg_a, seg_b


def conjugate_loss(
    outputs: Mapping[str, torch.Tensor],
    label_a: torch.Tensor,
    label_b: torch.Tensor,
    num_classes: int,
    proxy_weight: float = PROXY_WEIGHT,
    annotated_a: torch.Tensor | None = None,
    annotated_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """CFCN loss (Eq. 6): Dice(y_i, p_i) + Dice(y_j, p_j) + lambda * L_proxy(y_ij, p_ij), lambda = 2.
    ``outputs``: dict with seg_a, seg_b (N, K+1, H, W) and proxy (N, P, H, W) logits; the optional
    (N, K) annotation flags restrict every term to annotated positions."""
    k = _check_num_classes(num_classes)
    seg_a, seg_b = _pair_checked(outputs, label_a, label_b, k, "conjugate")
    proxy = _get(outputs, "proxy", "conjugate", proxy_channels(k))
    if proxy.shape[0] != seg_a.shape[0] or proxy.shape[2:] != seg_a.shape[2:]:
        raise ValueError(f"proxy logits {tuple(proxy.shape)} do not match seg_a {tuple(seg_a.shape)}")
    _check_pair_annotated(annotated_a, annotated_b, seg_a.shape[0], k)
    return (
        _seg_dice(seg_a, label_a, k, annotated_a)
        + _seg_dice(seg_b, label_b, k, annotated_b)
        + proxy_weight * _proxy_dice(proxy, label_a, label_b, k, annotated_a, annotated_b)
    )


def siamese_loss(
    outputs: Mapping[str, torch.Tensor], label_a: torch.Tensor, label_b: torch.Tensor, num_classes: int,
    annotated_a: torch.Tensor | None = None, annotated_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """SiamFCN loss: Dice(y_i, p_i) + Dice(y_j, p_j) (no proxy supervision).
    ``outputs``: dict with seg_a, seg_b (N, K+1, H, W) logits; optional (N, K) annotation flags."""
    k = _check_num_classes(num_classes)
    seg_a, seg_b = _pair_checked(outputs, label_a, label_b, k, "siamese")
    _check_pair_annotated(annotated_a, annotated_b, seg_a.shape[0], k)
    return _seg_dice(seg_a, label_a, k, annotated_a) + _seg_dice(seg_b, label_b, k, annotated_b)


class Criterion:
    """Training loss for one training form: ``criterion(outputs, label_a, label_b=None)``."""

    def __init__(self, training_form: str, num_classes: int, proxy_weight: float = PROXY_WEIGHT) -> None:
        if training_form not in TRAINING_FORMS:
            raise ValueError(f"unknown training_form {training_form!r}; expected one of {TRAINING_FORMS}")
        self.training_form = training_form
        self.num_classes = _check_num_classes(num_classes)
        self.proxy_weight = float(proxy_weight)
        self.pairwise = training_form != "single"

    def __call__(
        self, outputs: Outputs, label_a: torch.Tensor, label_b: Optional[torch.Tensor] = None, *,
        annotated: Optional[Sequence[Optional[torch.Tensor]]] = None,
    ) -> torch.Tensor:
        """``annotated``: None (fully annotated slices) or one (N, K) bool tensor per label given
        (partially annotated volumes, ``pairseg.annotation``): only annotated (slice, class)
        positions count."""
        form, k = self.training_form, self.num_classes
        marks = list(annotated) if annotated is not None else [None, None]
        if form == "single":
            if isinstance(outputs, Mapping):
                raise ValueError("'single' outputs must be a logits tensor (N, K+1, H, W), got a dict")
            return multiclass_dice_loss(outputs, label_a, k, marks[0])
        if label_b is None:
            raise ValueError(f"training form '{form}' is pairwise: label_b is required")
        if len(marks) != 2:
            raise ValueError(f"a pairwise loss takes the annotation of both pair members, got {len(marks)}")
        if form == "proxy":
            if isinstance(outputs, Mapping):
                raise ValueError("'proxy' outputs must be a proxy logits tensor (N, P, H, W), got a dict")
            return proxy_dice_loss(outputs, label_a, label_b, k, *marks)
        if form == "conjugate":
            return conjugate_loss(outputs, label_a, label_b, k, self.proxy_weight, *marks)
        return siamese_loss(outputs, label_a, label_b, k, *marks)

    def __repr__(self) -> str:
        return f"Criterion({self.training_form!r}, num_classes={self.num_classes})"


def criterion_for(model: object, *, proxy_weight: float = PROXY_WEIGHT) -> Callable[..., torch.Tensor]:
    """The training loss for a model, chosen by ``model.training_form`` ("single", "proxy",
    "conjugate", "siamese") and ``model.num_classes``; returns ``loss(outputs, label_a, label_b=None)``."""
    for attr in ("training_form", "num_classes"):
        if not hasattr(model, attr):
            raise ValueError(f"criterion_for needs a model with '{attr}', got {type(model).__name__}")
    return Criterion(model.training_form, model.num_classes, proxy_weight)
