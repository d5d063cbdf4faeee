"""File paths handed to ITK (SimpleITK), safe on Windows with non-ASCII folders (standard library only).

On Windows, ITK's file readers and writers open files through the C runtime's narrow (ANSI code
page) API: a path with characters outside that code page, e.g. a user profile ``C:\\Users\\José``
or a data folder ``Données`` on a system whose code page lacks them, or any non-ASCII path under
Python's UTF-8 mode, fails to open (SimpleITK issues #651 and #795, ITK #4388, Slicer #8229).
``itk_path`` gives ITK a path that it can open: the path itself when it is ASCII or when not on
Windows (POSIX file names are bytes, UTF-8 here); on Windows the 8.3 short form of the path
(``GetShortPathNameW``, ASCII on volumes that keep short names, the default for the system drive).
Where no ASCII form exists (short names disabled on that volume), ``NonAsciiPathError`` names the
file and the workaround: move the data, or the work folder (``PAIRSEG_WORK_DIR``), to a folder with
an ASCII-only path.

The PairSeg engine passes every path it gives ITK through ``itk_path``; the Slicer modules use
``ascii_work_folder`` for the folders of their engine runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Union

from .errors import PairSegInputError

PathLike = Union[str, "os.PathLike[str]"]

#: environment variable: a folder for engine work files (its path should be ASCII on Windows)
WORK_FOLDER_VARIABLE = "PAIRSEG_WORK_DIR"


class NonAsciiPathError(PairSegInputError):
    """ITK cannot open this path on this system; the message names it and the workaround (exit 2)."""


def is_ascii(text: str) -> bool:
    try:
        str(text).encode("ascii")
    except UnicodeEncodeError:
        return False
    return True


def windows_short_path(path: str) -> str:
    """The 8.3 short form of an EXISTING path (Windows ``GetShortPathNameW``); the path as it is
    when the call fails or has no short form."""
    import ctypes
    from ctypes import wintypes

    function = ctypes.windll.kernel32.GetShortPathNameW
    function.argtypes = [wintypes.LPCWSTR, wintypes.LPWSTR, wintypes.DWORD]
    function.restype = wintypes.DWORD
    size = function(path, None, 0)
    if size == 0:
        return path
    buffer = ctypes.create_unicode_buffer(size)
    return buffer.value if function(path, buffer, size) else path


def itk_path(path: PathLike, os_name: Optional[str] = None,
             short_path: Optional[Callable[[str], str]] = None) -> str:
    """``path`` as a string ITK can open (see the module docstring).

    ``path`` may name a file that does not exist yet (a file to write): then its folder is
    shortened and its name must be ASCII. ``os_name`` (default ``os.name``) and ``short_path``
    (default ``windows_short_path``) are for tests. Raises NonAsciiPathError when, on Windows, no
    ASCII form exists."""
    text = os.fspath(path)
    if (os_name or os.name) != "nt" or is_ascii(text):
        return text
    shorten = short_path or windows_short_path
    target = Path(text)
    if target.exists():
        candidate = shorten(str(target))
    else:
        candidate = str(Path(shorten(str(target.parent))) / target.name)
    if is_ascii(candidate):
        return candidate
    raise NonAsciiPathError(
        f"{text}: ITK (SimpleITK) cannot open a path with non-ASCII characters on Windows, and this "
        "folder has no ASCII short name; move the file to a folder whose path is ASCII only "
        f"(for work files set {WORK_FOLDER_VARIABLE} to such a folder)")


def ascii_work_folder(folder: PathLike, os_name: Optional[str] = None,
                      short_path: Optional[Callable[[str], str]] = None) -> str:
    """A folder for engine work files: ``$PAIRSEG_WORK_DIR`` when set, else ``folder`` in a form
    ITK can open (``itk_path``; on Windows the short form of a non-ASCII folder). When no such
    form exists, ``folder`` as it is: the engine then names the file it cannot open."""
    override = os.environ.get(WORK_FOLDER_VARIABLE)
    if override:
        os.makedirs(override, exist_ok=True)
        return override
    try:
        return itk_path(folder, os_name=os_name, short_path=short_path)
    except NonAsciiPathError:
        return os.fspath(folder)
