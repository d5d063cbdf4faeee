"""3D Slicer segmentations (.seg.nrrd, through slicerio), read and written.

In a .seg.nrrd the label values are not class ids: classes are matched to segments by segment
*name* (:func:`pairseg.constants.class_key` rule). Overlapping segments of a layered file are
flattened to one class per voxel (:class:`OverlapWarning`); a segmentation on another grid than
the reference image is placed into the image's grid when the two grids are aligned.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pairseg.constants import class_key
from pairseg.errors import PairSegInputError, PairSegWarning
from pairseg.io.problems import _read_failure
from pairseg.io.volume import _close, _geometry_text, _label_dtype, PathLike, same_geometry, Volume

__all__ = ["OverlapWarning"]


class OverlapWarning(PairSegWarning):
    """A layered .seg.nrrd whose segments overlap: flattened to one class per voxel."""


def _geometry_from_matrix(ijk_to_lps: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    matrix = np.asarray(ijk_to_lps, float)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("degenerate voxel axes")
    direction = matrix / spacing
    return tuple(spacing), tuple(np.asarray(ijk_to_lps, float)[:3, 3]), tuple(direction.ravel())


def _key(name) -> str:
    """``class_key`` of a segment or class name given as any object (slicerio's names are str)."""
    return class_key(str(name))


def _read_segmentation(
    path: PathLike, class_names: Optional[Sequence[str]], reference: Optional[Volume]
) -> tuple[Volume, list[str]]:
    import slicerio

    p = Path(path)
    if not p.exists():
        raise PairSegInputError(f"{p}: file not found")
    try:
        seg = slicerio.read_segmentation(str(p))
    except Exception as exc:  # slicerio / pynrrd raise assorted types
        raise _read_failure(p, exc, "Slicer segmentation") from None
    voxels = seg.get("voxels")
    if voxels is None or voxels.ndim not in (3, 4):
        shape = None if voxels is None else voxels.shape
        raise PairSegInputError(f"{p}: segmentation voxels have shape {shape}; 3D (or layered 4D) expected")
    segments = list(seg.get("segments", []))
    seg_names = [str(s.get("name", s.get("id", f"segment {i}"))) for i, s in enumerate(segments)]

    if class_names is None:
        names: list[str] = []
        for name in seg_names:
            if _key(name) not in {_key(n) for n in names}:
                names.append(name)
    else:
        names = list(class_names)
    index_of = {_key(n): i + 1 for i, n in enumerate(names)}
    unknown = [n for n in seg_names if _key(n) not in index_of]
    if unknown:
        raise PairSegInputError(
            f"{p}: segment(s) {unknown} match no class; expected segment names among {names} "
            "(case-insensitive). Rename the segments or pass the matching class names."
        )

    spatial = voxels.shape[-3:]
    labels_ijk = np.zeros(spatial, dtype=_label_dtype(len(names)))
    order = sorted(range(len(segments)), key=lambda i: index_of[_key(seg_names[i])])
    overlaps: dict[tuple[str, str], int] = {}
    for i in order:  # later classes overwrite earlier ones where segments overlap
        segment = segments[i]
        value = int(segment.get("labelValue", 1))
        if value == 0:
            continue
        if voxels.ndim == 4:
            layer = int(segment.get("layer", i if "labelValue" not in segment else 0))
            if not 0 <= layer < voxels.shape[0]:
                raise PairSegInputError(f"{p}: segment {seg_names[i]!r} refers to missing layer {layer}")
            mask = voxels[layer] == value
        else:
            mask = voxels == value
        klass = index_of[_key(seg_names[i])]
        taken = mask & (labels_ijk != 0) & (labels_ijk != klass)
        if taken.any():  # only layered (4D) files can hold overlapping segments
            for other in np.unique(labels_ijk[taken]):
                key = (names[int(other) - 1], names[klass - 1])
                overlaps[key] = overlaps.get(key, 0) + int(np.count_nonzero(labels_ijk[taken] == other))
        labels_ijk[mask] = klass
    if overlaps:
        pairs = "; ".join(f"{a!r} and {b!r} in {n} voxel(s)" for (a, b), n in overlaps.items())
        warnings.warn(f"{p}: segments overlap ({pairs}); PairSeg keeps one class per voxel, the later class "
                      "of each pair there (class order), so those voxels count for one class only",
                      OverlapWarning, stacklevel=3)

    try:
        spacing, origin, direction = _geometry_from_matrix(seg["ijkToLPS"])
    except ValueError:
        raise PairSegInputError(f"{p}: segmentation has degenerate voxel axes") from None
    seg_volume = Volume(np.ascontiguousarray(labels_ijk.transpose(2, 1, 0)), spacing, origin, direction, str(p))
    if reference is None:
        return seg_volume, names
    placed = _place_into(seg_volume, reference)
    return Volume(placed, reference.spacing, reference.origin, reference.direction, str(p)), names


def _place_into(labels: Volume, reference: Volume, tol: float = 1e-4) -> np.ndarray:
    """Paste a label map whose grid is a shifted sub/super-extent of ``reference``'s grid."""
    if same_geometry(labels, reference, tol):
        return labels.array
    where = labels.path or "labels"
    if not (_close(labels.spacing, reference.spacing, tol) and _close(labels.direction, reference.direction, tol)):
        raise PairSegInputError(
            f"{where}: label geometry differs from its image {reference.path or ''} (not a crop of the same grid): "
            f"labels {_geometry_text(labels)}; image {_geometry_text(reference)}"
        )
    ref_matrix = reference.ijk_to_lps()
    offset_xyz = np.linalg.solve(ref_matrix[:3, :3], np.asarray(labels.origin) - np.asarray(reference.origin))
    rounded = np.rint(offset_xyz)
    if np.any(np.abs(offset_xyz - rounded) > 1e-2):
        raise PairSegInputError(
            f"{where}: label grid is shifted by a fraction of a voxel {tuple(np.round(offset_xyz, 3))} "
            f"from its image {reference.path or ''}"
        )
    off = rounded.astype(int)[::-1]  # z, y, x
    src = labels.array
    out = np.zeros(reference.array.shape[:3], dtype=src.dtype)
    src_sl, dst_sl = [], []
    for axis in range(3):
        lo = max(0, off[axis])
        hi = min(out.shape[axis], off[axis] + src.shape[axis])
        if hi <= lo:
            lo = hi = 0
        dst_sl.append(slice(lo, hi))
        src_sl.append(slice(lo - off[axis], hi - off[axis]) if hi > lo else slice(0, 0))
    inside = src[tuple(src_sl)]
    if int(np.count_nonzero(src)) != int(np.count_nonzero(inside)):
        raise PairSegInputError(
            f"{where}: {int(np.count_nonzero(src)) - int(np.count_nonzero(inside))} labelled voxels lie outside "
            f"its image {reference.path or ''}"
        )
    out[tuple(dst_sl)] = inside
    return out


def _write_segmentation(
    tmp: str, labels: np.ndarray, like: Volume, names: list[str], colors: Sequence[Sequence[float]]
) -> None:
    import slicerio

    voxels = np.ascontiguousarray(labels.transpose(2, 1, 0))  # i, j, k
    nx, ny, nz = voxels.shape
    segments = []
    for i, name in enumerate(names, start=1):
        segments.append(
            {
                "id": f"Segment_{i}",
                "name": str(name),
                "nameAutoGenerated": False,
                "color": [float(c) for c in colors[i - 1]][:3],
                "colorAutoGenerated": False,
                "labelValue": i,
                "layer": 0,
                # Full extent for every segment: older Slicer versions crop a shared layer to
                # the first segment's extent.
                "extent": [0, nx - 1, 0, ny - 1, 0, nz - 1],
            }
        )
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": like.ijk_to_lps(),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": segments,
    }
    slicerio.write_segmentation(tmp, segmentation)
