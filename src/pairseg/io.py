"""Reading and writing volumes and label maps with their geometry.

Arrays are numpy in (z, y, x) order, as ``SimpleITK.GetArrayFromImage`` returns them. Geometry
travels beside them in ITK/LPS terms, exactly as SimpleITK holds it: ``spacing`` (x, y, z) in mm,
``origin`` (x, y, z) in mm and ``direction`` (9 floats, row-major; column j is the LPS direction
of index axis j). A label map written ``like`` an input volume therefore overlays that input with
no shift and no flip.

Formats: NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha), a DICOM series folder (read
only) and 3D Slicer segmentations (.seg.nrrd, through slicerio). In a .seg.nrrd the label values
are not class ids: classes are matched to segments by segment *name* (case-insensitive).

Every write goes through :mod:`pairseg.atomic`: a temporary file in the destination folder, flushed
to the disk and read back whole (``_verify_written``) before it is renamed over the destination,
so a failed or silently truncated write leaves no partial file and replaces nothing.

Bad inputs raise :class:`pairseg.errors.PairSegInputError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

from . import atomic
from .constants import LABEL_SUFFIXES, WRITABLE_IMAGE_SUFFIXES, class_key, default_colors
from .errors import PairSegInputError, PairSegOutputError, PairSegWarning
from .paths import itk_path

__all__ = [
    "Volume",
    "same_geometry",
    "read_volume",
    "read_label",
    "read_label_volume",
    "write_labels",
    "write_volume",
    "GeometryWarning",
    "OverlapWarning",
    "dicom_series",
    "check_output",
    "check_distinct",
    "remove_stale_temporaries",
    "write_together",
    "write_text",
    "write_probabilities",
    "write_png",
    "refuse_dangling_links",
]

PathLike = Union[str, os.PathLike]

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# --------------------------------------------------------------------------------------------
# Volume record
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


_suffix = atomic.suffix_of


class GeometryWarning(PairSegWarning):
    """A readable input whose geometry is ambiguous (a NIfTI whose qform and sform disagree)."""


class OverlapWarning(PairSegWarning):
    """A layered .seg.nrrd whose segments overlap: flattened to one class per voxel."""


def _truncated(path: PathLike, detail: str) -> PairSegInputError:
    return PairSegInputError(f"{path}: file is truncated or corrupt ({detail})")


# ---- NIfTI: ITK's NIfTI library zero-fills a short file and replaces NaN/Inf floats by 0 -------

_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype code -> numpy kind of the stored floats
_CHUNK = 1 << 24


def _open_data(path: Path):
    """The file's bytes as a stream, decompressed when the file is gzip-compressed."""
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


# (offset, struct format) of the header fields PairSeg reads, by header size (NIfTI-1: 348, NIfTI-2: 540).
_NIFTI_LAYOUTS = {
    348: {"dim": (40, "8h"), "type": (70, "2h"), "pixdim": (76, "8f"), "vox_offset": (108, "f"),
          "scaling": (112, "2f"), "codes": (252, "2h"), "quatern": (256, "6f"), "srow": (280, "12f")},
    540: {"dim": (16, "8q"), "type": (12, "2h"), "pixdim": (104, "8d"), "vox_offset": (168, "q"),
          "scaling": (176, "2d"), "codes": (344, "2i"), "quatern": (352, "6d"), "srow": (400, "12d")},
}


def _nifti_header(path: Path) -> Optional[dict]:
    """The fields of a NIfTI-1/2 header PairSeg checks, or None when ``path`` holds no NIfTI header."""
    try:
        with _open_data(path) as stream:
            raw = stream.read(540)
    except (EOFError, OSError, zlib.error) as exc:
        raise _truncated(path, f"header unreadable: {exc}") from None
    for endian in "<>":
        size = struct.unpack_from(endian + "i", raw, 0)[0] if len(raw) >= 4 else 0
        if size not in _NIFTI_LAYOUTS or len(raw) < size:
            continue
        field = {name: struct.unpack_from(endian + form, raw, offset)
                 for name, (offset, form) in _NIFTI_LAYOUTS[size].items()}
        dim, (datatype, bitpix), pixdim = field["dim"], field["type"], field["pixdim"]
        vox_offset, (slope, inter), codes = int(field["vox_offset"][0]), field["scaling"], field["codes"]
        quatern, srow, version = field["quatern"], field["srow"], 1 if size == 348 else 2
        ndim = min(max(int(dim[0]), 0), 7)
        count = int(np.prod([max(int(d), 1) for d in dim[1:1 + ndim]], dtype=np.int64))
        return {"version": version, "endian": endian, "datatype": int(datatype), "vox_offset": vox_offset,
                "nbytes": count * max(int(bitpix), 8) // 8, "pixdim": pixdim, "slope": slope, "inter": inter,
                "qform_code": int(codes[0]), "sform_code": int(codes[1]), "quatern": quatern, "srow": srow}
    if len(raw) < 348 and _suffix(path) in (".nii", ".nii.gz"):
        raise _truncated(path, f"{len(raw)} bytes, shorter than a NIfTI header")
    return None


def _scan_nifti(path: Path, header: dict) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Check that every voxel byte is present; return (flat indices, values) of the non-finite
    floats ITK's reader turns into 0 (values scaled as the header says), or None when there are none."""
    kind = _NIFTI_FLOATS.get(header["datatype"])
    dtype = np.dtype(header["endian"] + kind) if kind else None
    need, got, position, carry = header["nbytes"], 0, 0, b""
    indices, values = [], []
    try:
        with _open_data(path) as stream:
            if len(stream.read(header["vox_offset"])) < header["vox_offset"]:
                raise _truncated(path, "no voxel data after the header")
            while got < need:
                chunk = stream.read(min(_CHUNK, need - got))
                if not chunk:
                    break
                got += len(chunk)
                if dtype is not None:
                    buffer = carry + chunk
                    usable = len(buffer) - len(buffer) % dtype.itemsize
                    block = np.frombuffer(buffer, dtype, count=usable // dtype.itemsize)
                    bad = np.flatnonzero(~np.isfinite(block))
                    if bad.size:
                        indices.append(bad + position)
                        values.append(block[bad].astype(np.float64))
                    position += block.size
                    carry = buffer[usable:]
            stream.read(1)  # reaches the end of a gzip stream, where its length and CRC are checked
    except (EOFError, OSError, zlib.error) as exc:
        raise _truncated(path, str(exc)) from None
    if got < need:
        raise PairSegInputError(f"{path}: file is truncated: it holds {got} of the {need} bytes of voxel data "
                                f"its header announces ({100.0 * got / need:.1f} %)")
    if not indices:
        return None
    found = np.concatenate(values)
    slope, inter = header["slope"], header["inter"]
    if np.isfinite(slope) and slope != 0:
        found = found * slope + inter
    return np.concatenate(indices), found


def _nifti_affine_ras(header: dict, form: str) -> np.ndarray:
    """The 4x4 voxel-to-RAS matrix of the header's qform or sform."""
    if form == "sform":
        return np.vstack([np.asarray(header["srow"], float).reshape(3, 4), [0, 0, 0, 1]])
    b, c, d, *offset = (float(v) for v in header["quatern"])
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                         [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                         [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - b * b - c * c]])
    qfac = -1.0 if header["pixdim"][0] < 0 else 1.0
    # pixdim as stored, sign included: a negative voxel size flips its axis in ITK's and nibabel's view
    spacing = np.asarray(header["pixdim"][1:4], float) * np.array([1.0, 1.0, qfac])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag(spacing)
    matrix[:3, 3] = offset
    return matrix


def _corners(size: Sequence[int]) -> np.ndarray:
    grid = np.array(np.meshgrid(*[[0, max(int(n) - 1, 0)] for n in size], indexing="ij")).reshape(3, -1)
    return np.vstack([grid, np.ones(grid.shape[1])])


def _check_nifti_forms(path: Path, header: dict, image: sitk.Image) -> Optional[bytes]:
    """Warn when tools place this NIfTI differently: its qform and sform disagree, or ITK's
    placement is not the one its forms give as read from the header (signed pixdim, qfac: the way
    nibabel reads them, e.g. with a negative voxel size). Returns the header geometry (qfac, pixdim,
    codes, quaternion, sform) to put into NIfTI-1 outputs then, so that every tool places an
    output exactly where it places this file; None when all agree."""
    corners = _corners(image.GetSize())
    forms = {f: _nifti_affine_ras(header, f) @ corners for f in ("qform", "sform") if header[f"{f}_code"] > 0}
    itk = Volume(np.zeros((1, 1, 1)), image.GetSpacing(), image.GetOrigin(), image.GetDirection()).ijk_to_lps()
    itk = np.diag([-1.0, -1.0, 1.0, 1.0]) @ itk @ corners  # LPS -> RAS

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.max(np.linalg.norm((a - b)[:3], axis=0)))

    between = gap(forms["qform"], forms["sform"]) if len(forms) == 2 else 0.0
    from_itk = {f: gap(itk, m) for f, m in forms.items()}
    if between <= 0.1 and all(g <= 0.1 for g in from_itk.values()):
        return None
    used = min(from_itk, key=from_itk.get) if from_itk else "header"
    kept = ("NIfTI-1 outputs carry this file's own header geometry (each tool then places them as it places "
            f"this file); other outputs (.nrrd, .seg.nrrd, .mha) carry ITK's placement alone"
            if header["version"] == 1 else "outputs carry ITK's placement alone")
    if between > 0.1:
        other = "sform" if used == "qform" else "qform"
        problem = (f"the NIfTI qform and sform disagree by up to {between:.3g} mm; PairSeg places the image by "
                   f"its {used} (as ITK does), tools that prefer the {other} show it elsewhere")
    else:
        problem = (f"ITK places the image up to {from_itk[used]:.3g} mm away from where its {' and '.join(forms)} "
                   f"put it as other tools (nibabel) read them (pixdim {tuple(round(v, 4) for v in header['pixdim'][:4])}:"
                   " a negative voxel size?); PairSeg follows ITK, so other tools show its results elsewhere")
    warnings.warn(f"{path}: {problem}; {kept}", GeometryWarning, stacklevel=3)
    if header["version"] != 1:
        return None
    return struct.pack("<4f2h6f12f", -1.0 if header["pixdim"][0] < 0 else 1.0, *header["pixdim"][1:4],
                       header["qform_code"], header["sform_code"], *header["quatern"], *header["srow"])


def _patch_nifti_forms(path: str, forms: bytes) -> None:
    """Put a NIfTI-1 input's own qform/sform (see ``_check_nifti_forms``) into a file ITK just wrote."""
    source = Path(path)
    header = _nifti_header(source)
    if header is None or header["version"] != 1 or header["endian"] != "<":
        return
    with _open_data(source) as stream:
        first = bytearray(stream.read(348))
        first[76:92], first[252:328] = forms[:16], forms[16:]  # qfac and voxel sizes (signed), the forms
        if not path.endswith(".gz"):
            with open(source, "r+b") as out:
                out.write(bytes(first))
            return
        patched = source.with_name(source.name + ".forms")
        try:
            with gzip.open(patched, "wb", compresslevel=6) as out:
                out.write(bytes(first))
                for chunk in iter(lambda: stream.read(_CHUNK), b""):
                    out.write(chunk)
        except BaseException:
            patched.unlink(missing_ok=True)
            raise
    os.replace(patched, source)


# ---- MetaImage: ITK's reader fails on a short file with an unrelated errno text ---------------

_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def _metaimage_problem(path: Path) -> Optional[str]:
    """Why a MetaImage (.mha/.mhd) cannot be read whole (missing or short data), or None."""
    fields: dict[str, str] = {}
    with open(path, "rb") as handle:
        for line in iter(handle.readline, b""):
            key, _, value = line.decode("latin-1").partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                data_start = handle.tell()
                break
        else:
            return "truncated or malformed: the file ends inside its header (no ElementDataFile line)"
    try:
        count = int(np.prod([int(v) for v in fields.get("DimSize", "").split()], dtype=np.int64))
        count *= int(fields.get("ElementNumberOfChannels", "1")) * _MET_SIZES[fields.get("ElementType", "")]
    except (KeyError, ValueError):
        return None
    name = fields["ElementDataFile"]
    if name == "LOCAL":
        data, offset = path, data_start
    elif " " in name or name.upper() == "LIST":
        return None
    else:
        data, offset = path.parent / name, 0
        if not data.is_file():
            return f"its data file {data} does not exist"
    if fields.get("CompressedData", "False").lower() == "true":
        inflate, produced = zlib.decompressobj(), 0
        with open(data, "rb") as handle:
            handle.seek(offset)
            try:
                for chunk in iter(lambda: handle.read(_CHUNK), b""):
                    produced += len(inflate.decompress(chunk))
            except zlib.error as exc:
                return f"truncated or corrupt: {exc}"
        if not inflate.eof or produced < count:
            return f"truncated: the compressed voxel data ends after {produced} of {count} bytes"
        return None
    present = data.stat().st_size - offset
    if present < count:
        return f"truncated: it holds {present} of the {count} bytes of voxel data its header announces"
    return None


def _nrrd_problem(path: Path) -> Optional[str]:
    """"truncated" when a NRRD file ends inside its header (before the blank line that ends it)."""
    with open(path, "rb") as handle:
        start = handle.read(1 << 20)
    if start.startswith(b"NRRD") and b"\n\n" not in start and b"\r\n\r\n" not in start \
            and b"data file:" not in start and b"datafile:" not in start:
        return f"truncated: the file ends inside its header, after {len(start)} bytes"
    return None


# Messages of ITK's NRRD and MetaImage readers (and pynrrd) for a file whose data ends early.
_SHORT_DATA = ("fread got only", "but received", "not read completely", "data not read",
               "Size of the data does not equal", "Compressed file ended", "unexpected end of file", "hit end of header")


def _read_failure(path: Path, exc: BaseException, what: str = "image") -> PairSegInputError:
    """The input error for a reader failure: "truncated" where the file's data ends early."""
    if _suffix(path) in (".mha", ".mhd"):
        problem = _metaimage_problem(path)
        if problem:
            return PairSegInputError(f"{path}: MetaImage {problem}")
    if _suffix(path) in (".nrrd", ".seg.nrrd"):
        problem = _nrrd_problem(path)
        if problem:
            return PairSegInputError(f"{path}: NRRD file {problem}")
    text = str(exc)
    if any(marker.lower() in text.lower() for marker in _SHORT_DATA):
        return _truncated(path, _first_line(exc))
    return PairSegInputError(f"{path}: cannot read {what} ({_first_line(exc)})")


# ---- input folders --------------------------------------------------------------------------


def refuse_dangling_links(folder: PathLike, counts: Optional[Callable[[str], bool]] = None,
                          what: str = "input folder") -> None:
    """Raise PairSegInputError naming the symbolic links in ``folder`` whose target does not exist
    (listing them would skip them without a word). ``counts(name)`` limits the check to the
    names that would be inputs (default: every entry, as in a DICOM folder)."""
    folder = Path(folder)
    broken = [p for p in sorted(folder.iterdir()) if p.is_symlink() and not p.exists()
              and (counts is None or counts(p.name))]
    if broken:
        names = ", ".join(f"{p.name} -> {os.readlink(p)}" for p in broken[:3]) + (" ..." if len(broken) > 3 else "")
        raise PairSegInputError(f"{folder}: {len(broken)} broken symbolic link(s) in the {what}, whose target does "
                                f"not exist: {names}; restore the targets or remove the links")


# ---- DICOM ----------------------------------------------------------------------------------


def dicom_series(folder: PathLike) -> list[dict]:
    """The DICOM series in ``folder``: one dict per series with ``uid``, ``description`` (tag
    0008|103E, may be empty) and ``files`` (sorted by slice position, as GDCM orders them).

    Raises PairSegInputError when the folder cannot be scanned.
    """
    refuse_dangling_links(folder, what="DICOM folder")
    reader = sitk.ImageSeriesReader()
    try:
        ids = list(reader.GetGDCMSeriesIDs(itk_path(folder)))
    except RuntimeError as exc:
        raise PairSegInputError(f"{folder}: cannot scan folder for DICOM series ({_first_line(exc)})") from None
    series = []
    for uid in ids:
        files = list(reader.GetGDCMSeriesFileNames(itk_path(folder), uid))
        description = ""
        info = sitk.ImageFileReader()
        info.SetFileName(files[0])
        try:
            info.ReadImageInformation()
            if info.HasMetaDataKey("0008|103e"):
                description = info.GetMetaData("0008|103e").strip()
        except RuntimeError:
            pass
        series.append({"uid": uid, "description": description, "files": files})
    return series


def _series_table(series: Sequence[dict]) -> str:
    return "; ".join(f"{s['uid'] or '(no UID)'} {s['description']!r} ({len(s['files'])} slices)" for s in series)


def _unlisted_dicom_files(folder: Path, series: Sequence[dict]) -> list[Path]:
    """Files that start like DICOM (the "DICM" mark) yet belong to no series: GDCM drops a truncated
    or corrupt slice from its series without a word."""
    listed = {os.path.normcase(os.path.abspath(f)) for s in series for f in s["files"]}
    found = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.upper() == "DICOMDIR" or os.path.normcase(str(path.absolute())) in listed:
            continue
        with open(path, "rb") as handle:
            if handle.read(132)[128:132] == b"DICM":
                found.append(path)
    return found


def _check_slice_positions(folder: Path, series_id: str, files: Sequence[str], reader: sitk.ImageSeriesReader,
                           image: sitk.Image) -> None:
    """Refuse a series whose slices are not evenly spaced: ITK would lay them on a uniform grid.

    Each slice's position is its Image Position (Patient) (0020,0032) where the file has it at the
    top level, else where GDCM finds it (the per-frame functional groups of enhanced MR/CT files,
    which ITK's dictionary does not show): the file's own origin. A series of multi-frame files,
    or one without positions (all at the origin), has nothing to compare."""
    positions = []
    for i, name in enumerate(files):
        if reader.HasMetaDataKey(i, "0020|0032"):
            try:
                positions.append([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")])
                continue
            except ValueError:
                pass
        info = sitk.ImageFileReader()
        info.SetFileName(name)
        try:
            info.ReadImageInformation()
        except RuntimeError:
            return
        if info.GetDimension() > 2 and info.GetSize()[2] > 1:
            return  # a multi-frame file: its frames' positions are not per file
        positions.append(list(info.GetOrigin())[:3] + [0.0] * (3 - info.GetDimension()))
    if len(positions) < 3:
        return
    normal = np.asarray(image.GetDirection(), float).reshape(3, 3)[:, 2]
    steps = np.diff(np.asarray(positions) @ normal)
    typical = float(np.median(np.abs(steps)))
    worst = int(np.argmax(np.abs(np.abs(steps) - typical)))
    if typical > 0 and abs(abs(steps[worst]) - typical) <= max(0.01 * typical, 1e-3):
        return
    name = series_id or "(no UID)"
    raise PairSegInputError(
        f"{folder}: DICOM series {name} has non-uniform slice spacing: slices {worst} and {worst + 1} "
        f"({Path(files[worst]).name}, {Path(files[worst + 1]).name}) are {abs(steps[worst]):.4g} mm apart "
        f"where the others are {typical:.4g} mm (a missing or duplicated slice?); PairSeg does not "
        "place slices on a uniform grid they do not lie on")


def _read_dicom_series(folder: Path, series_id: Optional[str]) -> sitk.Image:
    series = dicom_series(folder)
    if not series:
        raise PairSegInputError(f"{folder}: folder holds no DICOM series (and is not an image file)")
    if series_id is None:
        if len(series) > 1:
            raise PairSegInputError(
                f"{folder}: folder holds {len(series)} DICOM series; choose one with --series UID "
                f"(series_id in the engine): {_series_table(series)}")
        chosen = series[0]
    else:
        matches = [s for s in series if s["uid"] == series_id]
        if not matches:
            raise PairSegInputError(f"{folder}: no DICOM series {series_id}; found {_series_table(series)}")
        chosen = matches[0]
    unlisted = _unlisted_dicom_files(folder, series)
    if unlisted:
        names = ", ".join(p.name for p in unlisted[:3]) + (" ..." if len(unlisted) > 3 else "")
        raise PairSegInputError(f"{folder}: {len(unlisted)} DICOM file(s) belong to no readable series, "
                                f"truncated or corrupt: {names}")
    series_id, files = chosen["uid"], chosen["files"]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _read_failure(folder, exc, f"DICOM series {series_id}") from None
    if image.GetDimension() == 2 or (image.GetDimension() == 3 and len(files) == 1 and image.GetSize()[2] == 1):
        raise PairSegInputError(f"{folder}: DICOM series {series_id} has a single slice; a 3D volume is needed")
    _check_slice_positions(folder, series_id, files, reader, image)
    return image


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # SimpleITK errors start with the source location; the useful text is usually last.
    return lines[-1] if lines else type(exc).__name__


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
        header = _nifti_header(p) if _suffix(p) in (".nii", ".nii.gz") else None
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
    if _suffix(path) == ".seg.nrrd":
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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


remove_stale_temporaries = atomic.remove_stale_temporaries
write_together = atomic.write_together


def check_output(path: PathLike, suffixes: Optional[Sequence[str]] = None, what: str = "output",
                 folder: bool = False) -> Path:
    """Refuse an output location before any work is done; return it as a Path.

    ``suffixes``: the accepted file types (``_suffix`` rules: ".nii.gz", ".seg.nrrd" are one
    suffix). A file output must not be an existing folder; a ``folder`` output must not be an
    existing file. The nearest existing ancestor must be a folder in which a file can be
    created (tried for real, so read-only mounts, permissions and ACLs all count); missing
    folders below it are created by the write. Raises PairSegOutputError naming ``path``.
    """
    target = Path(path)
    if not folder and suffixes is not None and _suffix(target) not in suffixes:
        raise PairSegOutputError(f"{target}: unsupported {what} file type {_suffix(target) or '(none)'!r}; "
                                 f"use one of {', '.join(suffixes)}")
    if folder and target.exists() and not target.is_dir():
        raise PairSegOutputError(f"{target}: {what} folder is an existing file")
    if not folder and target.is_dir():
        raise PairSegOutputError(f"{target}: {what} is an existing folder; give a file name")
    return atomic.check_writable(target, what, folder)


def check_distinct(inputs: Sequence[Optional[PathLike]], outputs: Sequence[tuple[str, Optional[PathLike]]]) -> None:
    """Refuse an output that is (or resolves to, through links or ``..``) an input or another output.

    ``outputs`` are (option name, path) pairs, for the message; None entries are skipped.
    """
    def key(p: PathLike) -> str:
        return os.path.normcase(os.path.realpath(p))

    seen: dict[str, str] = {}
    input_keys = {key(p): str(p) for p in inputs if p is not None}
    for option, path in outputs:
        if path is None:
            continue
        k = key(path)
        if k in input_keys:
            raise PairSegOutputError(f"{path}: {option} is the input {input_keys[k]}; it would be overwritten")
        if k in seen:
            raise PairSegOutputError(f"{path}: {option} is the same file as {seen[k]}")
        seen[k] = option


def _atomic_write(path: PathLike, write: Callable[[str], None]) -> str:
    """``atomic.atomic_write`` with the completeness check of the written image's format."""
    return str(atomic.atomic_write(path, write, _verify_written))


def _verify_written(tmp: str) -> None:
    """Raise ``atomic.IncompleteWrite`` unless the image file ``tmp`` reads back whole: every voxel
    byte of a NIfTI (and its gzip CRC), the compressed data of a NRRD or MetaImage to its end, a
    PNG to its last chunk. A writer that ignored a failed write (ITK's NIfTI writer on a full
    disk) is caught here."""
    path = Path(tmp)
    suffix = _suffix(path)
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
    suffix = _suffix(path)
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
    suffix = _suffix(path)
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
    suffix = _suffix(tmp)

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
    suffix = _suffix(path)
    if suffix not in WRITABLE_IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported image file type {suffix!r}; use one of {WRITABLE_IMAGE_SUFFIXES}")
    return _atomic_write(path, lambda tmp: _write_image(tmp, volume))


def _write_image(tmp: str, volume: Volume) -> None:
    """Write ``volume`` compressed; a NIfTI gets the forms of the NIfTI it was read ``like``."""
    sitk.WriteImage(volume.to_sitk(), itk_path(tmp), True)
    if volume.nifti_forms is not None and _suffix(tmp) in (".nii", ".nii.gz"):
        _patch_nifti_forms(tmp, volume.nifti_forms)
