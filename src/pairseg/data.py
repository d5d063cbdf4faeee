"""Slice preprocessing (checks, intensity normalisation, 2.5D stacks, resampling) and the in-memory
slice store. Datasets on disk (and the image check ``check_image``) live in ``pairseg.datasets``,
canonical orientation in ``pairseg.orientation``.

A training set is read from disk once: every volume is normalised (CT window or MR percentile
clip), cut into 2.5D stacks (slices z-1, z, z+1 as channels, edges replicated) and resampled to
the training size. Batches are then gathered from memory by index, so a training step never
touches the disk.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pairseg.constants import MODALITIES
from pairseg.errors import PairSegInputError
from pairseg.io.volume import Volume
from pairseg.orientation import canonical_arrays, in_plane_spacing

__all__ = [
    "CT_WINDOW",
    "MR_PERCENTILES",
    "normalize",
    "intensity_window",
    "apply_window",
    "stack_25d",
    "stacks_25d",
    "resize_slices",
    "resampled_shape",
    "crop_or_pad",
    "to_model_grid",
    "default_spacing",
    "widen_field_of_view",
    "MR_WINDOW_RULES",
    "SliceStore",
]

CT_WINDOW = (-200.0, 250.0)
MR_PERCENTILES = (2.0, 98.0)
MR_WINDOW_RULES = ("above-minimum", "volume")

# ---------------------------------------------------------------------------------------------
# Checks and normalisation
# ---------------------------------------------------------------------------------------------


def normalize(array: np.ndarray, modality: str, mr_rule: str = "above-minimum") -> np.ndarray:
    """Map a volume's intensities to [0, 1] (float32), as the paper preprocesses them.

    CT: clip Hounsfield units to [-200, 250]. MR: clip to the 2nd-98th percentile (of the voxels
    above the volume's minimum, see ``intensity_window``). Both are then scaled linearly to [0, 1].
    """
    return apply_window(array, intensity_window(array, modality, mr_rule))


def intensity_window(array: np.ndarray, modality: str, mr_rule: str = "above-minimum") -> tuple[float, float]:
    """The (low, high) intensities :func:`normalize` maps to 0 and 1: the CT window [-200, 250] HU,
    or the MR volume's 2nd and 98th percentiles.

    ``mr_rule`` says which MR voxels the percentiles are taken over: "above-minimum" (the default
    since engine 0.2: every voxel brighter than the volume's minimum, so zero-filled padding, as
    in a larger field of view or a reconstruction mask, does not change the contrast) or "volume"
    (every voxel; models written before 0.2 were trained that way and keep it). Where the voxels
    above the minimum have a single value, the window runs from the minimum to that value.
    """
    modality = modality.upper()
    if modality == "CT":
        low, high = CT_WINDOW
    elif modality == "MR":
        values = np.asarray(array, dtype=np.float32)
        if mr_rule == "above-minimum":
            minimum = float(values.min())
            above = values[values > minimum]
            low, high = (float(v) for v in np.percentile(above if above.size else values, MR_PERCENTILES))
            if high <= low:  # (nearly) two-valued image: from the minimum to the bright value
                low = minimum
        elif mr_rule == "volume":
            low, high = (float(v) for v in np.percentile(values, MR_PERCENTILES))
        else:
            raise ValueError(f"unknown MR window rule {mr_rule!r}; expected one of {MR_WINDOW_RULES}")
    else:
        raise PairSegInputError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    if high <= low:
        raise PairSegInputError("image intensities are constant inside the normalisation window")
    return low, high


def apply_window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip ``array`` to ``window`` = (low, high) and scale it linearly to [0, 1], as a new
    float32 array. Voxel by voxel, so a volume may be normalised piece by piece."""
    low, high = window
    out = np.clip(np.asarray(array, dtype=np.float32), low, high)
    out -= low
    out /= high - low
    return out


def stack_25d(array: np.ndarray, index: int) -> np.ndarray:
    """Three adjacent axial slices (z-1, z, z+1) as channels; edge slices are replicated."""
    depth = array.shape[0]
    if not 0 <= index < depth:
        raise IndexError(f"slice {index} outside a volume of {depth} slices")
    picks = [max(index - 1, 0), index, min(index + 1, depth - 1)]
    return np.stack([array[z] for z in picks], axis=0)


def stacks_25d(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """All 2.5D stacks of a volume at once: (Z, H, W) -> (Z, 3, H, W)."""
    volume = torch.as_tensor(array)
    depth = volume.shape[0]
    index = torch.arange(depth)
    below = (index - 1).clamp(min=0)
    above = (index + 1).clamp(max=depth - 1)
    return torch.stack([volume[below], volume, volume[above]], dim=1)


def resize_slices(batch: torch.Tensor, size: tuple[int, int] | int, *, labels: bool = False) -> torch.Tensor:
    """Resample (N, C, H, W) images bilinearly, or (N, H, W) label maps by nearest neighbour."""
    if isinstance(size, int):
        size = (size, size)
    if labels:
        if tuple(batch.shape[-2:]) == tuple(size):
            return batch
        resized = F.interpolate(batch[:, None].float(), size=size, mode="nearest-exact")
        return resized[:, 0].to(batch.dtype)
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=False)


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: float) -> tuple[int, int]:
    """In-plane (rows, columns) of a slice of ``shape`` pixels of ``spacing`` (row, column) mm once
    resampled to ``target`` mm pixels: each axis keeps its physical extent, rounded to whole pixels."""
    if target <= 0 or min(spacing) <= 0:
        raise PairSegInputError(f"pixel spacing must be positive, got {tuple(spacing)} -> {target} mm")
    return tuple(max(1, int(round(n * s / target))) for n, s in zip(shape, spacing))  # type: ignore[return-value]


def crop_or_pad(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Centre (N, C, H, W) images or (N, H, W) label maps on a size x size grid: crop what lies
    outside, pad with zeros (background after normalisation) what is missing."""
    height, width = batch.shape[-2:]
    if (height, width) == (size, size):
        return batch
    out = batch.new_zeros(batch.shape[:-2] + (size, size))

    def spans(length: int) -> tuple[slice, slice]:  # (source, destination) along one axis
        if length >= size:
            first = (length - size) // 2
            return slice(first, first + size), slice(0, size)
        first = (size - length) // 2
        return slice(0, length), slice(first, first + length)

    (src_r, dst_r), (src_c, dst_c) = spans(height), spans(width)
    out[..., dst_r, dst_c] = batch[..., src_r, src_c]
    return out


def to_model_grid(batch: torch.Tensor, spacing: Sequence[float] | None, model_spacing: float | None,
                  size: int, *, labels: bool = False) -> torch.Tensor:
    """Training slices on the model's grid: resampled to ``model_spacing`` mm pixels (``spacing``:
    the slices' own (row, column) mm) and centred on ``size`` x ``size`` (``crop_or_pad``); with no
    ``model_spacing`` (models written before in-plane resampling) resized to ``size`` x ``size``."""
    if model_spacing is None or spacing is None:
        return resize_slices(batch, size, labels=labels)
    shape = resampled_shape(batch.shape[-2:], spacing, model_spacing)
    return crop_or_pad(resize_slices(batch, shape, labels=labels), size)


def widen_field_of_view(volume: Volume, factor: float) -> tuple[Volume, tuple[int, int]]:
    """The same voxels in an in-plane field of view ``factor`` times wider, padded with zeros (the
    image's background), the origin moved so every voxel keeps its physical place; returns the new
    volume and the (row, column) offset of the original voxels in it. For measuring how a model
    copes with scans wider than its training ones (issue 12, tests and benchmarks)."""
    depth, rows, cols = volume.array.shape[:3]
    top, left = (int(round(rows * factor)) - rows) // 2, (int(round(cols * factor)) - cols) // 2
    array = np.zeros((depth, rows + 2 * top, cols + 2 * left) + volume.array.shape[3:], volume.array.dtype)
    array[:, top:top + rows, left:left + cols] = volume.array
    shift = np.asarray(volume.direction, dtype=float).reshape(3, 3) @ (np.array([left, top, 0.0]) * np.asarray(volume.spacing))
    return Volume(array, volume.spacing, tuple(np.asarray(volume.origin) - shift), volume.direction), (top, left)


def default_spacing(volumes: Sequence[tuple[Sequence[int], Sequence[float]]], size: int) -> float:
    """The training pixel spacing (mm) at which the training set's typical (median) in-plane field
    of view, its larger side, fills ``size`` pixels. ``volumes``: ((rows, cols), (row mm, col mm))."""
    extents = [max(n * s for n, s in zip(shape, spacing)) for shape, spacing in volumes]
    if not extents:
        raise PairSegInputError("no training volume to choose a pixel spacing from")
    return float(np.median(extents)) / size


# ---------------------------------------------------------------------------------------------
# In-memory slice store
# ---------------------------------------------------------------------------------------------


class SliceStore:
    """Every 2.5D stack and label slice of a set of volumes, at the training size, in memory.

    ``images[v]`` is a (Z, 3, S, S) float32 tensor, ``labels[v]`` a (Z, S, S) uint8 tensor.
    ``annotated[v]`` (partially annotated volumes, ``pairseg.annotation``) is a (Z, K) bool tensor
    saying which (slice, class) positions were drawn, or None for a fully annotated volume;
    ``annotated`` itself is None when every volume is fully annotated.
    """

    def __init__(self, images: list[torch.Tensor], labels: list[torch.Tensor], names: list[str],
                 annotated: list[torch.Tensor | None] | None = None):
        self.images = images
        self.labels = labels
        self.names = names
        if annotated is not None and all(a is None for a in annotated):
            annotated = None
        if annotated is not None and len(annotated) != len(images):
            raise ValueError(f"annotated has {len(annotated)} entries for {len(images)} volumes")
        self.annotated = None if annotated is None else [
            None if a is None else torch.as_tensor(np.asarray(a, dtype=bool)) for a in annotated]

    @classmethod
    def from_arrays(cls, volumes: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                    modality: str, size: int, names: Sequence[str] | None = None, *,
                    spacings: Sequence[Sequence[float]] | None = None, model_spacing: float | None = None,
                    mr_rule: str = "above-minimum", annotated: Sequence[np.ndarray | None] | None = None
                    ) -> "SliceStore":
        """Normalise, stack (2.5D) and put every slice on the model's grid (``to_model_grid``):
        resampled to ``model_spacing`` mm given each volume's in-plane ``spacings`` (row, column
        mm), else resized to ``size`` x ``size``. ``annotated``: per volume a (Z, K) bool map of
        annotated (slice, class) positions or None (fully annotated); see ``pairseg.annotation``."""
        stacks, maps = [], []
        for index, (array, label) in enumerate(zip(volumes, labels)):
            spacing = spacings[index] if spacings is not None else None
            norm = torch.from_numpy(normalize(array, modality, mr_rule))
            stacks.append(to_model_grid(stacks_25d(norm), spacing, model_spacing, size).contiguous())
            maps.append(to_model_grid(torch.from_numpy(np.asarray(label, dtype=np.uint8)), spacing, model_spacing,
                                      size, labels=True).contiguous())
        return cls(stacks, maps, list(names or [f"case{i}" for i in range(len(stacks))]), annotated)

    @classmethod
    def from_volumes(cls, volumes: Sequence[Volume], labels: Sequence[np.ndarray], modality: str, size: int,
                     names: Sequence[str] | None = None, *, model_spacing: float | None = None,
                     mr_rule: str = "above-minimum", annotated: Sequence[np.ndarray | None] | None = None
                     ) -> "SliceStore":
        """Like ``from_arrays``, for volumes with geometry: each is first laid out canonically,
        and its canonical in-plane spacing is used for ``model_spacing``. ``annotated`` maps are
        in canonical slice order already (``pairseg.annotation.canonical_annotation``)."""
        canonical = [canonical_arrays(volume, label) for volume, label in zip(volumes, labels)]
        spacings = [in_plane_spacing(volume) for volume in volumes]
        return cls.from_arrays([image for image, _ in canonical], [label for _, label in canonical],
                               modality, size, names, spacings=spacings, model_spacing=model_spacing,
                               mr_rule=mr_rule, annotated=annotated)

    @property
    def slice_counts(self) -> list[int]:
        return [int(x.shape[0]) for x in self.images]

    def labelled_ranges(self) -> list[tuple[int, int] | None]:
        """First and last slice holding any foreground label, per volume."""
        ranges: list[tuple[int, int] | None] = []
        for label in self.labels:
            rows = torch.nonzero(label.flatten(1).amax(dim=1) > 0).flatten()
            ranges.append((int(rows[0]), int(rows[-1])) if rows.numel() else None)
        return ranges

    def class_presence(self, num_classes: int) -> np.ndarray:
        """(K,) number of volumes in which each class occurs."""
        present = np.zeros(num_classes, dtype=int)
        for label in self.labels:
            values = torch.unique(label).tolist()
            for value in values:
                if 1 <= value <= num_classes:
                    present[value - 1] += 1
        return present

    @property
    def sparse(self) -> bool:
        """Whether some volume is partially annotated."""
        return self.annotated is not None

    def annotated_slices(self) -> list[np.ndarray]:
        """Per volume, the slice indices annotated for at least one class (every slice of a fully
        annotated volume)."""
        out = []
        for v, count in enumerate(self.slice_counts):
            mask = self.annotated[v] if self.annotated is not None else None
            out.append(np.arange(count, dtype=np.int64) if mask is None
                       else torch.nonzero(mask.any(dim=1)).flatten().numpy().astype(np.int64))
        return out

    def gather_annotated(self, volume_index: np.ndarray, slice_index: np.ndarray,
                         num_classes: int) -> torch.Tensor | None:
        """(N, K) bool annotation of the given rows (all True on fully annotated volumes), or None
        when the store is fully annotated."""
        if self.annotated is None:
            return None
        rows = []
        for v, s in zip(volume_index.tolist(), slice_index.tolist()):
            mask = self.annotated[v]
            rows.append(torch.ones(num_classes, dtype=torch.bool) if mask is None else mask[s])
        return torch.stack(rows)

    def gather(self, volume_index: np.ndarray, slice_index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacks and labels of the given (volume, slice) rows, as new tensors."""
        images = torch.stack([self.images[v][s] for v, s in zip(volume_index.tolist(), slice_index.tolist())])
        labels = torch.stack([self.labels[v][s] for v, s in zip(volume_index.tolist(), slice_index.tolist())])
        return images, labels.long()

    @property
    def num_slices(self) -> int:
        return sum(self.slice_counts)
