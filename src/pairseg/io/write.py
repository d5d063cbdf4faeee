"""Writing label maps, probability maps, volumes, text and pictures.

Every write goes through :mod:`pairseg.atomic`: a temporary file in the destination folder, flushed
to the disk and read back whole (``_verify_written``) before it is renamed over the destination,
so a failed or silently truncated write leaves no partial file and replaces nothing.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import SimpleITK as sitk
import numpy as np

from pairseg import atomic
from pairseg.atomic import suffix_of
from pairseg.constants import default_colors, LABEL_SUFFIXES, WRITABLE_IMAGE_SUFFIXES
from pairseg.errors import PairSegInputError
from pairseg.io.nifti import _nifti_header, _open_data, _patch_nifti_forms, _scan_nifti
from pairseg.io.nrrd_mha import _metaimage_problem
from pairseg.io.segmentation import _write_segmentation
from pairseg.io.volume import _check_integral_labels, _CHUNK, _label_dtype, PathLike, Volume
from pairseg.paths import itk_path

__all__ = ["write_labels", "write_probabilities", "write_text", "write_png", "write_volume"]


def _atomic_write(path: PathLike, write: Callable[[str], None]) -> str:
    """``atomic.atomic_write`` with the completeness check of the written image's format."""
    return str(atomic.atomic_write(path, write, _verify_written))


def _verify_written(tmp: str) -> None:
    """Raise ``atomic.IncompleteWrite`` unless the image file ``tmp`` reads back whole: every voxel
    byte of a NIfTI (and its gzip CRC), the compressed data of a NRRD or MetaImage to its end, a
    PNG to its last chunk. A writer that ignored a failed write (ITK's NIfTI writer on a full
    disk) is caught here."""
    path = Path(tmp)
    suffix = suffix_of(path)
    try:
        if suffix in (".nii", ".nii.gz"):
            header = _nifti_header(path)
            if header is None:
                raise atomic.IncompleteWrite("the written file holds no NIfTI header")
            _scan_nifti(path, header)
        elif suffix in (".mha", ".mhd"):
            problem = _metaimage_problem(path)
            if problem:
                raise atomic.IncompleteWrite(f"the written MetaImage is {problem}")
        elif suffix in (".nrrd", ".seg.nrrd"):
            start = b""
            with open(path, "rb") as handle:
                while b"\n\n" not in start and len(start) < (1 << 20):
                    block = handle.read(1 << 16)
                    if not block:
                        break
                    start += block
            end = start.find(b"\n\n")
            if end < 0:
                raise atomic.IncompleteWrite(f"the written NRRD file ends inside its header ({len(start)} bytes)")
            encoding = re.search(rb"(?m)^encoding: *(\w+)", start[:end])
            if encoding and encoding.group(1) in (b"gzip", b"gz"):
                atomic.verify_gzip(path, end + 2, _CHUNK)
        elif suffix == ".png":
            with open(path, "rb") as handle:
                handle.seek(max(0, path.stat().st_size - 12))
                if handle.read(12)[4:8] != b"IEND":
                    raise atomic.IncompleteWrite("the written PNG ends before its last chunk")
    except PairSegInputError as exc:  # the readers' own truncation checks
        raise atomic.IncompleteWrite(str(exc).replace(f"{path}: ", "the written file: ", 1)) from None


def write_labels(
    path: PathLike,
    labels: np.ndarray,
    like: Volume,
    class_names: Optional[Sequence[str]] = None,
    colors: Optional[Sequence[Sequence[float]]] = None,
) -> str:
    """Write a (z, y, x) label map on ``like``'s grid; the format follows the extension.

    .nii / .nii.gz / .nrrd / .mha: a label image (uint8 when it fits). .seg.nrrd: a Slicer
    segmentation with one segment per class (named from ``class_names``, coloured from ``colors``,
    RGB 0..1, or :func:`default_colors`); label value i is class i. Returns the path written.
    """
    suffix = suffix_of(path)
    if suffix not in LABEL_SUFFIXES:
        raise ValueError(f"{path}: unsupported label file type {suffix!r}; use one of {LABEL_SUFFIXES}")
    labels = np.asarray(labels)
    if labels.shape != like.array.shape[:3]:
        raise ValueError(f"{path}: label shape {labels.shape} differs from the reference grid {like.shape}")
    labels = _check_integral_labels(labels, path)
    max_value = int(labels.max()) if labels.size else 0
    names = list(class_names) if class_names is not None else [f"label_{i}" for i in range(1, max_value + 1)]
    if max_value > len(names):
        raise ValueError(f"{path}: label value {max_value} exceeds the {len(names)} class names")
    labels = labels.astype(_label_dtype(max(max_value, len(names))), copy=False)

    if suffix == ".seg.nrrd":
        rgb = [tuple(float(c) for c in col) for col in colors] if colors is not None else default_colors(names)
        if len(rgb) < len(names):
            raise ValueError(f"{path}: {len(rgb)} colours for {len(names)} classes")
        return _atomic_write(path, lambda tmp: _write_segmentation(tmp, labels, like, names, rgb))

    volume = like.like(labels)
    return _atomic_write(path, lambda tmp: _write_image(tmp, volume))


def write_probabilities(path: PathLike, probabilities: np.ndarray, like: Volume) -> str:
    """Write per-class probabilities (Z, K, H, W) on ``like``'s grid as a float32 vector image with
    K components (.nii/.nii.gz, .nrrd or .mha), atomically.

    The file is the one ``write_volume(path, like.like(probabilities moved to (Z, H, W, K), as
    float32))`` writes, but it is streamed a slab of slices at a time from ``probabilities`` as it
    is (float16, any strides), so no full float32 copy is ever held: the memory beyond the array
    itself is one slab (about 16 MB). Compressed at zlib level 1: Python's zlib at level 6 took
    4x longer than ITK's writer on a 512x512x300 CT's maps, level 1 is faster than ITK's, for a
    file 1.5x the size of ITK's (447 vs 291 MB for an untrained model's maps of 4 classes).
    Raises PairSegOutputError naming ``path`` when it cannot be written.
    """
    suffix = suffix_of(path)
    if suffix not in WRITABLE_IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported image file type {suffix!r}; use one of {WRITABLE_IMAGE_SUFFIXES}")
    if probabilities.ndim != 4 or (probabilities.shape[0],) + probabilities.shape[2:] != like.array.shape[:3]:
        raise ValueError(f"{path}: probabilities {probabilities.shape} do not fit the grid {like.shape} as (Z, K, H, W)")
    return _atomic_write(path, lambda tmp: _stream_vector_image(tmp, probabilities, like))


def _stream_vector_image(tmp: str, probabilities: np.ndarray, like: Volume) -> None:
    depth, classes, height, width = probabilities.shape
    # The header as SimpleITK writes it for this geometry and component count; only sizes change.
    tiny = Volume(np.zeros((1, 1, 1, classes), np.float32), like.spacing, like.origin, like.direction,
                  nifti_forms=like.nifti_forms)
    _write_image(tmp, tiny)
    with _open_data(Path(tmp)) as stream:
        template = stream.read()
    step = max(1, _CHUNK // (classes * height * width * 4))
    suffix = suffix_of(tmp)

    def slabs(component_last: bool) -> Iterator[bytes]:
        if component_last:  # NRRD, MetaImage: components vary fastest
            for z in range(0, depth, step):
                yield np.ascontiguousarray(np.moveaxis(probabilities[z:z + step], 1, -1), dtype="<f4").tobytes()
        else:  # NIfTI (ITK's layout): one whole volume per component
            for k in range(classes):
                for z in range(0, depth, step):
                    yield np.ascontiguousarray(probabilities[z:z + step, k], dtype="<f4").tobytes()

    if suffix in (".nii", ".nii.gz"):
        header = bytearray(template[:int(struct.unpack_from("<f", template, 108)[0])])
        struct.pack_into("<3h", header, 42, width, height, depth)
        with (gzip.open(tmp, "wb", compresslevel=1) if suffix == ".nii.gz" else open(tmp, "wb")) as out:
            out.write(bytes(header))
            for block in slabs(False):
                out.write(block)
    elif suffix == ".nrrd":
        text = template[:template.index(b"\n\n") + 2].decode("latin-1")
        text = re.sub(r"(?m)^sizes: .*$", f"sizes: {classes} {width} {height} {depth}", text)
        with open(tmp, "wb") as out:
            out.write(text.encode("latin-1"))
            with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as packed:
                for block in slabs(True):
                    packed.write(block)
    else:  # MetaImage: the header gives the compressed size, so the data goes to a side file first
        with open(tmp, "rb") as handle:
            lines = handle.read().split(b"ElementDataFile = LOCAL\n")[0].decode("latin-1")
        data = tmp + ".data"
        try:
            deflate, size = zlib.compressobj(1), 0
            with open(data, "wb") as side:
                for block in slabs(True):
                    chunk = deflate.compress(block)
                    size += len(chunk)
                    side.write(chunk)
                chunk = deflate.flush()
                size += len(chunk)
                side.write(chunk)
            lines = re.sub(r"(?m)^DimSize = .*$", f"DimSize = {width} {height} {depth}", lines)
            lines = re.sub(r"(?m)^CompressedDataSize = .*$", f"CompressedDataSize = {size}", lines)
            with open(tmp, "wb") as out, open(data, "rb") as side:
                out.write((lines + "ElementDataFile = LOCAL\n").encode("latin-1"))
                for chunk in iter(lambda: side.read(_CHUNK), b""):
                    out.write(chunk)
        finally:
            atomic._remove_quietly(data)


def write_text(path: PathLike, text: str) -> str:
    """Write a UTF-8 text file (a JSON report ...) atomically, like the image writers."""
    return str(atomic.write_text(path, text))


def write_png(path: PathLike, picture: sitk.Image) -> Path:
    """Write a 2D SimpleITK picture (RGB or grey) as a PNG, atomically and checked whole."""
    return Path(_atomic_write(path, lambda tmp: sitk.WriteImage(picture, itk_path(tmp))))


def write_volume(path: PathLike, volume: Volume) -> str:
    """Write an image (float or integer; a 4D (z, y, x, C) array as a vector image) atomically."""
    suffix = suffix_of(path)
    if suffix not in WRITABLE_IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported image file type {suffix!r}; use one of {WRITABLE_IMAGE_SUFFIXES}")
    return _atomic_write(path, lambda tmp: _write_image(tmp, volume))


def _write_image(tmp: str, volume: Volume) -> None:
    """Write ``volume`` compressed; a NIfTI gets the forms of the NIfTI it was read ``like``."""
    sitk.WriteImage(volume.to_sitk(), itk_path(tmp), True)
    if volume.nifti_forms is not None and suffix_of(tmp) in (".nii", ".nii.gz"):
        _patch_nifti_forms(tmp, volume.nifti_forms)
