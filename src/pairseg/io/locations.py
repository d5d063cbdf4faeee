"""Checks of locations before any work: input folders and output files and folders.

Output checks (:func:`check_output`, :func:`check_distinct`) raise
:class:`pairseg.errors.PairSegOutputError` naming the path; :func:`refuse_dangling_links` raises
:class:`pairseg.errors.PairSegInputError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from pairseg import atomic
from pairseg.atomic import suffix_of
from pairseg.errors import PairSegInputError, PairSegOutputError
from pairseg.io.volume import PathLike

__all__ = ["refuse_dangling_links", "check_output", "check_distinct"]


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
    if not folder and suffixes is not None and suffix_of(target) not in suffixes:
        raise PairSegOutputError(f"{target}: unsupported {what} file type {suffix_of(target) or '(none)'!r}; "
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
