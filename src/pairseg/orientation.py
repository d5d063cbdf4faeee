"""Canonical orientation: the axis order and flips that bring any volume into the layout the
networks see (inferior-to-superior slices, rows towards posterior, columns towards the left).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pairseg.io.volume import Volume

__all__ = ["Orientation", "in_plane_spacing", "canonical_arrays"]



@dataclass(frozen=True)
class Orientation:
    """How a (z, y, x) array is laid out relative to the canonical one the networks see.

    Canonical means ITK "LPS": slices ordered from inferior to superior, rows towards posterior,
    columns towards the patient's left. Networks are trained and applied on canonical arrays, so
    a volume stored with reversed slices or flipped in-plane axes (as Slicer writes left-handed
    NIfTI files, for example) gets the same 2.5D neighbours and the same left/right layout. Only
    axes are permuted and flipped: no resampling, so the mapping back is exact.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @classmethod
    def of(cls, direction: Sequence[float]) -> "Orientation":
        cosines = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))
        signs = np.sign(np.asarray(direction, dtype=float).reshape(3, 3))
        index_of_world: dict[int, int] = {}
        free_world, free_index = [0, 1, 2], [0, 1, 2]
        for _ in range(3):  # greedy: the best-aligned (world axis, index axis) pair first
            w, i = max(((w, i) for w in free_world for i in free_index), key=lambda wi: cosines[wi])
            index_of_world[w] = i
            free_world.remove(w)
            free_index.remove(i)
        # canonical array axes are (S, P, L); array axis of index axis i (x=0, y=1, z=2) is 2 - i
        axes = tuple(2 - index_of_world[w] for w in (2, 1, 0))
        flips = tuple(bool(signs[w, index_of_world[w]] < 0) for w in (2, 1, 0))
        return cls(axes, flips)  # type: ignore[arg-type]

    @property
    def identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Native (z, y, x, ...) -> canonical layout (a view where possible)."""
        out = np.transpose(array, self.axes + tuple(range(3, array.ndim)))
        flipped = [axis for axis, flip in enumerate(self.flips) if flip]
        return np.flip(out, flipped) if flipped else out

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Canonical (z, y, x, ...) -> native layout."""
        flipped = [axis for axis, flip in enumerate(self.flips) if flip]
        out = np.flip(array, flipped) if flipped else array
        return np.transpose(out, tuple(int(a) for a in np.argsort(self.axes)) + tuple(range(3, array.ndim)))

    def spacing_zyx(self, spacing_xyz: Sequence[float]) -> tuple[float, float, float]:
        """Voxel spacing of the canonical array, in its (z, y, x) order."""
        native = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
        return tuple(float(native[a]) for a in self.axes)  # type: ignore[return-value]


def in_plane_spacing(volume: Volume) -> tuple[float, float]:
    """(row, column) pixel spacing in mm of ``volume``'s slices in canonical layout."""
    return Orientation.of(volume.direction).spacing_zyx(volume.spacing)[1:]  # type: ignore[return-value]


def canonical_arrays(volume: Volume, *others: np.ndarray) -> list[np.ndarray]:
    """``volume.array`` and any arrays on its grid (labels), in canonical layout, contiguous."""
    orientation = Orientation.of(volume.direction)
    return [np.ascontiguousarray(orientation.apply(a)) for a in (volume.array, *others)]
