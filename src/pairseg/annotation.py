"""Partially annotated volumes: which (slice, class) positions of a label map were drawn.

A user who annotates a new structure draws it on a few slices only. Taking every slice of such a
label as fully annotated teaches a network that the structure is absent everywhere else, so the
engine keeps, per training volume, a (Z, K) boolean map ``annotated[z, k - 1]``: slice z is
annotated for class k when

- class k is drawn on slice z (then all of k on that slice is drawn and the rest of the slice is
  not k), or
- slice z is listed as fully annotated (``annotated_slices``: every class absent there is
  background).

Losses and the AND/XOR proxy targets count only annotated (slice, class) positions
(``pairseg.losses``), pairs are drawn among annotated slices at the offsets that occur between
them (``annotated_offsets``), and 2.5D inputs still use the neighbouring image slices.

A fully annotated volume has no map (``None``): it trains exactly as before. Slices are indices
along the canonical z axis (``pairseg.orientation``), as the engine cuts 2.5D stacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from pairseg.errors import PairSegInputError

__all__ = ["annotated_mask", "canonical_annotation", "class_extents", "gaps", "empty_slices_inside", "SparseSummary", "summarize_annotation",
           "annotated_offsets", "parse_annotated_slices"]


def annotated_mask(label: np.ndarray, num_classes: int, annotated_slices: Iterable[int] | None = None,
                   name: str = "label") -> np.ndarray:
    """(Z, K) bool: slice z annotated for class k (column k - 1), by the rule of this module.

    ``label``: (Z, H, W) integer map with values 0..K; ``annotated_slices``: slice indices that are
    fully annotated (every class). Raises ``PairSegInputError`` naming ``name`` for a listed slice
    outside 0..Z-1."""
    label = np.asarray(label)
    depth = label.shape[0]
    flat = label.reshape(depth, -1)
    mask = np.stack([(flat == k).any(axis=1) for k in range(1, num_classes + 1)], axis=1)
    for z in annotated_slices or ():
        if not 0 <= int(z) < depth:
            raise PairSegInputError(f"{name}: annotated slice {z} outside the volume's slices 0..{depth - 1}")
        mask[int(z)] = True
    return mask


def canonical_annotation(volume, label: np.ndarray, num_classes: int,
                         annotated_slices: Iterable[int] | None = None, name: str = "label") -> np.ndarray:
    """``annotated_mask`` of ``label`` (on ``volume``'s grid, native layout) in the canonical slice
    order the engine trains on (``pairseg.orientation``). ``annotated_slices`` are indices of the
    file's own slices (its third array axis); raises ``PairSegInputError`` naming ``name`` when
    those are not the canonical axial slices (a sagittal or coronal acquisition)."""
    from pairseg.orientation import Orientation

    orientation = Orientation.of(volume.direction)
    listed = None
    if annotated_slices:
        depth = label.shape[0]
        marker = np.zeros(label.shape, dtype=bool)
        for z in annotated_slices:
            if not 0 <= int(z) < depth:
                raise PairSegInputError(f"{name}: annotated slice {z} outside the volume's slices 0..{depth - 1}")
            marker[int(z)] = True
        rows = orientation.apply(marker).reshape(orientation.apply(marker).shape[0], -1)
        full = rows.all(axis=1)
        if (rows.any(axis=1) & ~full).any():
            raise PairSegInputError(f"{name}: the file's slices are not axial in the canonical layout, so "
                                    "annotated slice numbers cannot be used; annotate by drawing instead")
        listed = np.flatnonzero(full).tolist()
    return annotated_mask(orientation.apply(np.asarray(label)), num_classes, listed, name)


def class_extents(mask: np.ndarray) -> list[tuple[int, int] | None]:
    """Per class, (first, last) slice annotated for it, or None when it is annotated nowhere."""
    out: list[tuple[int, int] | None] = []
    for k in range(mask.shape[1]):
        rows = np.flatnonzero(mask[:, k])
        out.append((int(rows[0]), int(rows[-1])) if rows.size else None)
    return out


def empty_slices_inside(mask: np.ndarray) -> int:
    """Number of slices between the first and last annotated slice (any class) annotated for no
    class: the sign of a sparsely drawn label (a full expert label has none)."""
    rows = np.flatnonzero(mask.any(axis=1))
    return 0 if rows.size == 0 else int((~mask[rows[0]:rows[-1] + 1].any(axis=1)).sum())


def gaps(mask: np.ndarray) -> np.ndarray:
    """(K,) number of slices inside each class's extent that are not annotated for it."""
    counts = np.zeros(mask.shape[1], dtype=int)
    for k, extent in enumerate(class_extents(mask)):
        if extent is not None:
            first, last = extent
            counts[k] = int((~mask[first:last + 1, k]).sum())
    return counts


@dataclass
class SparseSummary:
    """How a volume is annotated: per class the annotated slices in its extent and the extent's length."""

    name: str
    class_names: list[str]
    annotated: list[int]
    extent: list[int]

    @property
    def sparse(self) -> bool:
        return any(a < e for a, e in zip(self.annotated, self.extent))

    def message(self) -> str:
        """e.g. ``case_007: liver drawn on 6 of 41 slices in its extent; training on those slices only``."""
        parts = [f"{n} drawn on {a} of {e} slices in its extent"
                 for n, a, e in zip(self.class_names, self.annotated, self.extent) if a < e]
        return f"{self.name}: {', '.join(parts)}; training on those slices only"


def summarize_annotation(name: str, class_names: Sequence[str], mask: np.ndarray) -> SparseSummary:
    """The ``SparseSummary`` of one volume's (Z, K) annotation map."""
    extents = class_extents(mask)
    annotated = [int(mask[:, k].sum()) for k in range(mask.shape[1])]
    lengths = [0 if e is None else e[1] - e[0] + 1 for e in extents]
    return SparseSummary(name, list(class_names), annotated, lengths)


def annotated_offsets(slices: Sequence[np.ndarray]) -> tuple[int, ...]:
    """The axial offsets that occur between consecutive annotated slices of the given volumes
    (each a sorted 1-D array of annotated slice indices); sorted, unique, >= 1."""
    found: set[int] = set()
    for s in slices:
        found.update(int(d) for d in np.diff(np.unique(np.asarray(s))) if d >= 1)
    return tuple(sorted(found))


def parse_annotated_slices(text: str) -> dict[str, list[int]]:
    """``case_002:3,7,12;case_005:4,9`` -> {"case_002": [3, 7, 12], "case_005": [4, 9]}.
    Raises ``PairSegInputError`` for an entry without ``case:`` or with a non-integer slice."""
    out: dict[str, list[int]] = {}
    for entry in (e.strip() for e in str(text).split(";")):
        if not entry:
            continue
        case, sep, rest = entry.partition(":")
        if not sep or not case.strip():
            raise PairSegInputError(f"--annotated-slices: {entry!r} is not CASE:SLICE,SLICE,...")
        try:
            values = [int(v) for v in rest.split(",") if v.strip()]
        except ValueError:
            raise PairSegInputError(f"--annotated-slices: {entry!r}: slices must be integers") from None
        if any(v < 0 for v in values):
            raise PairSegInputError(f"--annotated-slices: {entry!r}: slices must be >= 0")
        out.setdefault(case.strip(), []).extend(values)
    return out
