"""NRRD and MetaImage (.nrrd, .mha, .mhd) header checks: whether a file's voxel data is all there.

ITK's readers zero-fill or half-read a file whose data ends early; these checks read the header and
measure the data (the compressed stream inflated to its end) so that a truncated file is refused.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from pairseg.io.volume import _CHUNK


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
