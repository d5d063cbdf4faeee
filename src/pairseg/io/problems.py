"""How a damaged input is reported: "truncated or corrupt" errors naming the file.

:func:`_read_failure` turns a reader's exception into a :class:`pairseg.errors.PairSegInputError`,
"truncated" when the NRRD/MetaImage checks or the reader's own message say the data ends early.
"""

from __future__ import annotations

from pathlib import Path

from pairseg.atomic import suffix_of
from pairseg.errors import PairSegInputError
from pairseg.io.nrrd_mha import _metaimage_problem, _nrrd_problem
from pairseg.io.volume import PathLike


def _truncated(path: PathLike, detail: str) -> PairSegInputError:
    return PairSegInputError(f"{path}: file is truncated or corrupt ({detail})")


# Messages of ITK's NRRD and MetaImage readers (and pynrrd) for a file whose data ends early.
_SHORT_DATA = ("fread got only", "but received", "not read completely", "data not read",
               "Size of the data does not equal", "Compressed file ended", "unexpected end of file", "hit end of header")


def _read_failure(path: Path, exc: BaseException, what: str = "image") -> PairSegInputError:
    """The input error for a reader failure: "truncated" where the file's data ends early."""
    if suffix_of(path) in (".mha", ".mhd"):
        problem = _metaimage_problem(path)
        if problem:
            return PairSegInputError(f"{path}: MetaImage {problem}")
    if suffix_of(path) in (".nrrd", ".seg.nrrd"):
        problem = _nrrd_problem(path)
        if problem:
            return PairSegInputError(f"{path}: NRRD file {problem}")
    text = str(exc)
    if any(marker.lower() in text.lower() for marker in _SHORT_DATA):
        return _truncated(path, _first_line(exc))
    return PairSegInputError(f"{path}: cannot read {what} ({_first_line(exc)})")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # SimpleITK errors start with the source location; the useful text is usually last.
    return lines[-1] if lines else type(exc).__name__
