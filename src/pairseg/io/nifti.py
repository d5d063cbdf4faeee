"""NIfTI (.nii, .nii.gz) header checks.

ITK's NIfTI library zero-fills a short file and replaces NaN/Inf floats by 0, and it picks one of
the qform and sform when they disagree. Here the header is read directly (NIfTI-1 and NIfTI-2,
either byte order), the voxel data is scanned to its end (truncation, non-finite floats kept), and
disagreeing forms are reported (:class:`pairseg.io.volume.GeometryWarning`) and written back.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Optional, Sequence

import SimpleITK as sitk
import numpy as np

from pairseg.atomic import suffix_of
from pairseg.errors import PairSegInputError
from pairseg.io.problems import _truncated
from pairseg.io.volume import _CHUNK, GeometryWarning, Volume


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype code -> numpy kind of the stored floats


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
    if len(raw) < 348 and suffix_of(path) in (".nii", ".nii.gz"):
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
