"""DICOM series folders (read only): the series in a folder, one series read as a 3D volume.

Slice positions are checked (missing or unevenly spaced slices are refused, as are files of the
folder that belong to no series) before the series is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import SimpleITK as sitk
import numpy as np

from pairseg.errors import PairSegInputError
from pairseg.io.locations import refuse_dangling_links
from pairseg.io.problems import _first_line, _read_failure
from pairseg.io.volume import PathLike
from pairseg.paths import itk_path

__all__ = ["dicom_series"]


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
