"""Post-processing of label maps: keep the largest connected component of each class.

Connectivity is 3D 26-connectivity by default (voxels touching by a face, an edge or a corner
are connected; ``connectivity=6`` for faces only). Voxels of removed components become
background (0). When two components tie for the largest, the one scipy numbers first (first in
C order) is kept.

Memory: each class is labelled inside its own bounding box, so beyond the output copy only an
int32 component map of that box and a boolean mask of it are held at once.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["keep_largest_component"]


def keep_largest_component(labels: np.ndarray, num_classes: int, connectivity: int = 26) -> np.ndarray:
    """Copy of ``labels`` (z, y, x) keeping, for each class 1..num_classes, its largest component.

    ``labels`` holds integers; values above ``num_classes`` are left untouched. ``connectivity``:
    26 (default), 18 or 6 in 3D; for a 2D array 26/18 mean 8-connectivity and 6 means
    4-connectivity.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"keep_largest_component needs a 2D or 3D label map, got shape {labels.shape}")
    rank = {6: 1, 18: 2, 26: 3}.get(connectivity)
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    structure = ndimage.generate_binary_structure(labels.ndim, min(rank, labels.ndim))
    out = labels.copy()
    boxes = ndimage.find_objects(labels, max_label=int(num_classes))  # None for an absent class
    for k, box in enumerate(boxes, start=1):
        if box is not None:
            _keep_largest_in_box(out[box], k, structure)
    return out


def _keep_largest_in_box(region: np.ndarray, k: int, structure: np.ndarray) -> None:
    """Zero, in place, all but the largest component of class ``k`` in ``region`` (a view of a
    label map holding every voxel of class ``k``)."""
    components, count = ndimage.label(region == k, structure=structure)
    if count <= 1:
        return
    sizes = np.zeros(count + 1, dtype=np.int64)
    for plane in components:  # plane by plane: bincount would copy the whole map to int64
        sizes += np.bincount(plane.ravel(), minlength=count + 1)
    sizes[0] = 0
    removed = np.ones(count + 1, dtype=bool)  # per component number: is it removed?
    removed[0] = False  # not class k
    removed[int(np.argmax(sizes))] = False
    region[removed[components]] = 0
