"""The volume record: a voxel array with its geometry, and the geometry rules.

Arrays are numpy in (z, y, x) order, as ``SimpleITK.GetArrayFromImage`` returns them. Geometry
travels beside them in ITK/LPS terms, exactly as SimpleITK holds it: ``spacing`` (x, y, z) in mm,
``origin`` (x, y, z) in mm and ``direction`` (9 floats, row-major; column j is the LPS direction
of index axis j). A label map written ``like`` an input volume therefore overlays that input with
no shift and no flip. Label arrays take the smallest unsigned type that holds their classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import SimpleITK as sitk
import numpy as np

from pairseg.errors import PairSegInputError, PairSegWarning

__all__ = ["IDENTITY_DIRECTION", "Volume", "same_geometry", "GeometryWarning"]

PathLike = Union[str, os.PathLike]

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class Volume:
    """An image or label array in (z, y, x) order with its ITK/LPS geometry."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION
    path: Optional[str] = field(default=None)
    #: A NIfTI-1 input's own qform/sform header fields, kept only where the two forms disagree,
    #: so that NIfTI outputs written ``like`` it carry the same forms (see ``write_labels``).
    nifti_forms: Optional[bytes] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.spacing = tuple(float(v) for v in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(v) for v in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(v) for v in np.asarray(self.direction).ravel())
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("Volume geometry needs 3 spacings, 3 origin values and 9 direction values")
        if min(self.spacing) <= 0:
            raise ValueError(f"Volume spacing must be positive, got {self.spacing}")
        if self.path is not None:
            self.path = str(self.path)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the array, (z, y, x)."""
        return tuple(self.array.shape)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array order (z, y, x), as metrics and distance transforms want it."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    def like(self, array: np.ndarray) -> "Volume":
        """A new Volume holding ``array`` with this volume's geometry (``path`` is not copied).

        ``array`` is (z, y, x) like this volume, or (z, y, x, C) for a multi-component image
        (components last, as SimpleITK's ``GetArrayFromImage`` gives a vector image).
        """
        array = np.asarray(array)
        if array.shape[:3] != self.array.shape[:3] or array.ndim not in (3, 4):
            raise ValueError(
                f"Volume.like: array shape {array.shape} does not fit volume shape {self.shape} "
                "((z, y, x) or (z, y, x, C) expected)"
            )
        return Volume(array, self.spacing, self.origin, self.direction, None, self.nifti_forms)

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix taking a voxel index (i, j, k) = (x, y, z) to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(self.direction).reshape(3, 3) @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def to_sitk(self) -> sitk.Image:
        """SimpleITK image with this geometry (a 4D array (z, y, x, C) becomes a vector image)."""
        array = self.array
        if array.dtype == bool:
            array = array.astype(np.uint8)
        if array.ndim == 3:
            image = sitk.GetImageFromArray(array)
        elif array.ndim == 4:
            image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=True)
        else:
            raise ValueError(f"Volume.to_sitk needs a 3D (or 4D components-last) array, got shape {array.shape}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, path: Optional[PathLike] = None, dtype: Optional[type] = None) -> "Volume":
        """Volume from a 3D scalar SimpleITK image: its array as stored, or converted to ``dtype``
        straight from the image's buffer (one copy)."""
        if image.GetDimension() != 3:
            raise ValueError(f"Volume.from_sitk needs a 3D image, got {image.GetDimension()}D")
        return cls(
            sitk.GetArrayFromImage(image) if dtype is None else sitk.GetArrayViewFromImage(image).astype(dtype),
            image.GetSpacing(),
            image.GetOrigin(),
            image.GetDirection(),
            None if path is None else str(path),
        )


def _close(a: Sequence[float], b: Sequence[float], tol: float) -> bool:
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    return bool(np.all(np.abs(a_ - b_) <= tol * np.maximum(1.0, np.maximum(np.abs(a_), np.abs(b_)))))


def same_geometry(a: Volume, b: Volume, tol: float = 1e-4) -> bool:
    """True when both volumes have the same grid: shape, spacing, origin and direction.

    Values are compared with ``tol`` absolute below magnitude 1 and relative above (mm for spacing
    and origin), which absorbs the float32 rounding of NIfTI headers.
    """
    return (
        a.array.shape[:3] == b.array.shape[:3]
        and _close(a.spacing, b.spacing, tol)
        and _close(a.origin, b.origin, tol)
        and _close(a.direction, b.direction, tol)
    )


def _geometry_text(v: Volume) -> str:
    def fmt(values: Sequence[float]) -> str:
        return "(" + ", ".join(f"{x:.6g}" for x in values) + ")"

    return f"shape {v.shape[:3]}, spacing {fmt(v.spacing)}, origin {fmt(v.origin)}, direction {fmt(v.direction)}"


class GeometryWarning(PairSegWarning):
    """A readable input whose geometry is ambiguous (a NIfTI whose qform and sform disagree)."""


#: Bytes per block when a file's voxel data is streamed (NIfTI scans, gzip checks, probability maps).
_CHUNK = 1 << 24


def _label_dtype(max_value: int) -> type:
    if max_value < 256:
        return np.uint8
    if max_value < 65536:
        return np.uint16
    return np.int32


def _check_integral_labels(array: np.ndarray, path: PathLike) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)):
            raise PairSegInputError(f"{path}: label map holds NaN or infinite values")
        rounded = np.rint(array)
        if np.any(np.abs(array - rounded) > 1e-3):
            raise PairSegInputError(f"{path}: label map holds non-integer values (is it an image, not labels?)")
        array = rounded.astype(np.int64)
    if array.size and array.min() < 0:
        raise PairSegInputError(f"{path}: label map holds negative values (min {array.min()})")
    return array
