"""Post-processing of label maps: keep the largest connected component of each class.

Connectivity is 3D 26-connectivity by default (voxels touching by a face, an edge or a corner
are connected; ``connectivity=6`` for faces only). Voxels of removed components become
background (0). When two components tie for the largest, the one scipy numbers first (first in
C order) is kept.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["keep_largest_component"]


def keep_largest_component(labels: np.ndarray, num_classes: int, connectivity: int = 26) -> np.ndarray:
    """Copy of ``labels`` (z, y, x) keeping, for each class 1..num_classes, its largest component.

    Values above ``num_classes`` are left untouched. ``connectivity``: 26 (default), 18 or 6 in
    3D; for a 2D array 26/18 mean 8-connectivity and 6 means 4-connectivity.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"keep_largest_component needs a 2D or 3D label map, got shape {labels.shape}")
    rank = {6: 1, 18: 2, 26: 3}.get(connectivity)
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    structure = ndimage.generate_binary_structure(labels.ndim, min(rank, labels.ndim))
    out = labels.copy()
    for k in range(1, int(num_classes) + 1):
        mask = labels == k
        if not mask.any():
            continue
        components, count = ndimage.label(mask, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(np.argmax(sizes)))] = 0
    return out
