"""Reading images and label maps: the entry points, dispatching by format.

Formats: NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd), a DICOM series folder and
3D Slicer segmentations (.seg.nrrd). Bad inputs raise :class:`pairseg.errors.PairSegInputError`
naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import SimpleITK as sitk
import numpy as np

from pairseg.atomic import suffix_of
from pairseg.errors import PairSegInputError
from pairseg.io.dicom import _read_dicom_series
from pairseg.io.nifti import _check_nifti_forms, _nifti_header, _scan_nifti
from pairseg.io.problems import _read_failure
from pairseg.io.segmentation import _read_segmentation
from pairseg.io.volume import _check_integral_labels, _geometry_text, _label_dtype, PathLike, same_geometry, Volume
from pairseg.paths import itk_path

__all__ = ["read_volume", "read_label", "read_label_volume"]


def _read_image(path: PathLike, series_id: Optional[str] = None) -> tuple[sitk.Image, Optional[bytes]]:
    """Read a 3D scalar image (file or DICOM folder), raising PairSegInputError on any problem.

    Returns the image and, for a NIfTI whose qform and sform disagree, the forms to write back.
    """
    p = Path(path)
    if not p.exists():
        raise PairSegInputError(f"{p}: file not found")
    forms = None
    if p.is_dir():
        image = _read_dicom_series(p, series_id)
    else:
        header = _nifti_header(p) if suffix_of(p) in (".nii", ".nii.gz") else None
        nonfinite = _scan_nifti(p, header) if header is not None else None
        try:
            image = sitk.ReadImage(itk_path(p))
        except RuntimeError as exc:
            raise _read_failure(p, exc) from None
        if nonfinite is not None and image.GetNumberOfComponentsPerPixel() == 1:
            array = sitk.GetArrayFromImage(image)  # put back what the NIfTI library set to 0
            if np.issubdtype(array.dtype, np.floating):
                array.reshape(-1)[nonfinite[0]] = nonfinite[1]
                restored = sitk.GetImageFromArray(array)
                restored.CopyInformation(image)
                image = restored
        if header is not None and image.GetDimension() == 3:
            forms = _check_nifti_forms(p, header, image)
    dim = image.GetDimension()
    if dim != 3:
        raise PairSegInputError(f"{p}: image is {dim}D (size {image.GetSize()}); a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise PairSegInputError(
            f"{p}: image has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(4D, vector or colour image); a scalar 3D volume is needed"
        )
    return image, forms


def read_volume(path: PathLike, series_id: Optional[str] = None) -> Volume:
    """Read a 3D image (NIfTI, NRRD, MHA, or a folder holding one DICOM series) as float32.

    ``series_id`` picks one series when a DICOM folder holds several.
    """
    image, forms = _read_image(path, series_id)
    volume = Volume.from_sitk(image, path, dtype=np.float32)
    volume.nifti_forms = forms
    return volume


def read_label(
    path: PathLike,
    class_names: Optional[Sequence[str]] = None,
    reference: Optional[Volume] = None,
) -> tuple[np.ndarray, list[str]]:
    """Read a label map as (labels (z, y, x) uint8/uint16/int32, class names).

    The array of :func:`read_label_volume`, which documents the rules.
    """
    volume, names = read_label_volume(path, class_names, reference)
    return volume.array, names


def read_label_volume(
    path: PathLike,
    class_names: Optional[Sequence[str]] = None,
    reference: Optional[Volume] = None,
) -> tuple[Volume, list[str]]:
    """Read a label map with its geometry as (Volume of labels uint8/uint16/int32, class names).

    The Volume has ``reference``'s geometry when one is given, else the file's own.

    Plain label images (NIfTI, NRRD, MHA): voxel values are class ids 0..K. Without
    ``class_names`` the classes are named ``label_1 .. label_K`` (K = largest value); with them, a
    value above ``len(class_names)`` is an error.

    Slicer ``.seg.nrrd``: classes are matched to segments by name (case-insensitive, surrounding
    spaces ignored); without ``class_names`` the segment names in file order become the classes.
    A segment whose name matches no class is an error that lists them. Several segments with
    one class name are merged; where segments overlap (layers), the class later in
    ``class_names`` wins. A segmentation whose grid is a sub- (or super-) extent of
    ``reference``'s grid is placed into it.

    ``reference`` (the image the labels belong to): the result is on its grid, or
    PairSegInputError says how the geometries differ.
    """
    if suffix_of(path) == ".seg.nrrd":
        return _read_segmentation(path, class_names, reference)
    image, _ = _read_image(path)
    labels_volume = Volume.from_sitk(image, path)
    labels = _check_integral_labels(labels_volume.array, path)
    if reference is not None:
        if not same_geometry(labels_volume, reference):
            raise PairSegInputError(
                f"{path}: label geometry differs from its image {reference.path or ''}: "
                f"labels {_geometry_text(labels_volume)}; image {_geometry_text(reference)}"
            )
        labels_volume = Volume(labels, reference.spacing, reference.origin, reference.direction, str(path))
    max_value = int(labels.max()) if labels.size else 0
    if class_names is None:
        names = [f"label_{i}" for i in range(1, max_value + 1)]
    else:
        names = list(class_names)
        if max_value > len(names):
            raise PairSegInputError(
                f"{path}: label value {max_value} exceeds the {len(names)} classes {names}"
            )
    labels_volume.array = labels.astype(_label_dtype(max(max_value, len(names))), copy=False)
    return labels_volume, names
