"""Where to look first: an uncertainty map from the model's own probabilities, and the slices
that most need a look.

The map is the binary entropy of each class's foreground probability of f(x, x) (Eq. 12),
summed over the classes, in bits: 0 where the network is certain of every class, up to K
(the number of classes) where it is undecided between foreground and background for all of
them. It is high on the boundaries the network is unsure of and on regions it half-recognises,
which is where its errors concentrate (benchmarks/RESULTS.md, "Where to look first").

Slices are ranked by their summed uncertainty: the first ones hold the most unsure voxels, so a
user who corrects a segmentation looks there first.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["uncertainty_map", "rank_slices", "SLAB"]

#: Slices processed at once (memory: one slab of float32 probabilities).
SLAB = 8


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float32), 1e-6, 1.0 - 1e-6)
    return -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))


def uncertainty_map(probabilities: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """Per-voxel uncertainty of a segmentation.

    Args:
        probabilities: (Z, K, H, W) per-class foreground probabilities in [0, 1] (any float
            type, e.g. the float16 maps ``Predictor.segment`` keeps).
        classes: the class indices (0-based, into K) to sum over; None: all K.

    Returns:
        (Z, H, W) float32, the sum over the K classes (or the chosen ones) of the binary entropy
        of p_k, in bits (range [0, K]). Computed a slab of ``SLAB`` slices at a time: no float32 copy of the
        probabilities is made.

    Raises:
        ValueError: ``probabilities`` is not 4-dimensional, or ``classes`` picks none or one
            outside 0..K-1.
    """
    if probabilities.ndim != 4:
        raise ValueError(f"probabilities must be (Z, K, H, W), got shape {probabilities.shape}")
    depth, count, height, width = probabilities.shape
    chosen = list(range(count)) if classes is None else sorted({int(k) for k in classes})
    if not chosen or not all(0 <= k < count for k in chosen):
        raise ValueError(f"classes {classes} must pick some of the {count} classes (0-based)")
    out = np.empty((depth, height, width), dtype=np.float32)
    for first in range(0, depth, SLAB):
        out[first:first + SLAB] = _entropy_bits(probabilities[first:first + SLAB, chosen]).sum(axis=1)
    return out


def rank_slices(uncertainty: np.ndarray, count: int = 5) -> list[dict]:
    """The ``count`` slices (first axis of a (Z, H, W) map) of highest summed uncertainty, most
    uncertain first: ``[{"slice": index, "uncertainty": sum in bits}, ...]``; slices whose sum is
    0 are left out (nothing to check there)."""
    if uncertainty.ndim != 3:
        raise ValueError(f"uncertainty must be (Z, H, W), got shape {uncertainty.shape}")
    totals = uncertainty.reshape(uncertainty.shape[0], -1).sum(axis=1, dtype=np.float64)
    order = np.argsort(-totals, kind="stable")[: max(int(count), 0)]
    return [{"slice": int(i), "uncertainty": round(float(totals[i]), 3)} for i in order if totals[i] > 0]
