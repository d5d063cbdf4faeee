"""The PairSeg model file format, read with the Python standard library alone (no torch).

This module is the one definition of what a ``.pairseg`` file holds: its layout, its checksum,
its metadata fields and their validation, and the migrations from earlier format versions. The
engine (:mod:`pairseg.modelfiles.weights`, which adds the weights through torch and safetensors) and the
Slicer modules (which describe a model before torch is installed) both read metadata through it.

Format 2 (current) is a `safetensors <https://github.com/huggingface/safetensors>`_ file::

    8 bytes     N, little-endian unsigned 64-bit
    N bytes     JSON header: {"__metadata__": {"format": "pairseg-model", "format_version": "2",
                                               "metadata": "<metadata JSON>"},
                              "<tensor name>": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}
    the rest    tensor bytes (little-endian, C order); tensor t is bytes b..e of this part

The metadata (see :func:`validate_metadata` for its fields) holds ``sha256``, the
:func:`content_sha256` of the file: a SHA-256 over the format name and version, the metadata
without ``sha256`` and every tensor's name, dtype, shape and bytes. Editing any of them (a class
name, the modality, one weight) makes the file refused.

Format 1 (PairSeg 0.1 until format 2) was a PyTorch zip archive of one pickled dict
``{"format": "pairseg-model", "format_version": 1, "metadata": "<json>", "state_dict": {...}}``
whose ``sha256`` covered the weights only. Here its metadata string is taken from the pickle's
opcodes (:mod:`pickletools`), which builds no object and runs nothing; the engine reads its
weights with ``torch.load(weights_only=True)`` and checks their checksum. Format-1 files come in
two generations: those written before the C2FCN read-out option have no ``readout`` in their
options, and the engine that wrote them read out the AND channels.

:data:`MIGRATIONS` turns the metadata of version v into that of v + 1; :func:`upgrade` applies
them up to :data:`FORMAT_VERSION` and validates the result.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickletools
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Union

from pairseg.architectures import architecture
from pairseg.constants import ARCHITECTURES, MODALITIES, MODEL_FORMAT, class_key
from pairseg.errors import PairSegInputError

FORMAT_VERSION = 2
#: How the floating-point weights may be stored (``weights_dtype``); they load as float32.
WEIGHTS_DTYPES = ("float32", "float16", "bfloat16")

__all__ = ["FORMAT_VERSION", "WEIGHTS_DTYPES", "MIGRATIONS",
           "read_metadata", "read_model_bytes", "stored_format_version", "verified_metadata",
           "header_metadata", "content_sha256", "format1_metadata", "upgrade", "validate_metadata",
           "inplane_spacing", "plain_json", "not_a_model"]

PathLike = Union[str, "os.PathLike[str]"]
_ZIP_MAGIC = b"PK\x03\x04"
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def not_a_model(path: PathLike, reason: str) -> PairSegInputError:
    """The one refusal for a file that is not a PairSeg model (never suggests loading it anyway)."""
    return PairSegInputError(f"{path}: not a PairSeg model file ({reason}); refused without loading it")


def read_model_bytes(path: PathLike) -> bytes:
    """The whole file; PairSegInputError naming it when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise PairSegInputError(f"{path}: model file does not exist")
    try:
        return path.read_bytes()
    except OSError as error:
        raise PairSegInputError(f"{path}: model file cannot be read ({error.strerror or error})") from error


def _is_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    (length,) = struct.unpack("<Q", data[:8])
    return 2 <= length <= _HEADER_LIMIT and data[8:9] == b"{"


# -------------------------------------------------------------------------------------------
# Format 2: safetensors header, checksum
# -------------------------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _header(data: bytes, path: PathLike) -> tuple[dict, int]:
    """The JSON header of a format-2 file and where its tensor bytes start."""
    (length,) = struct.unpack("<Q", data[:8])
    if 8 + length > len(data):
        raise PairSegInputError(f"{path}: model file is truncated ({len(data)} bytes, its header alone "
                                f"needs {8 + length})")
    try:
        header = json.loads(data[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise not_a_model(path, "no readable header") from error
    if not isinstance(header, dict):
        raise not_a_model(path, "no readable header")
    return header, 8 + length


def _record(header: dict, path: PathLike) -> tuple[int, dict]:
    """(format version, metadata as stored) of a format-2 header."""
    record = header.get("__metadata__")
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise not_a_model(path, "a safetensors file without PairSeg metadata")
    version = _check_version(record.get("format_version"), path)
    if version < 2:  # format 1 was a PyTorch archive
        raise not_a_model(path, f"format version {version} in a safetensors file")
    return version, _parse_metadata(record.get("metadata"), path)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_metadata(text: Any, path: PathLike) -> dict:
    try:
        metadata = json.loads(text, parse_constant=_refuse_constant)  # NaN, Infinity: not JSON
    except (TypeError, ValueError) as error:
        raise PairSegInputError(f"{path}: model metadata is missing or corrupt") from error
    if not isinstance(metadata, dict):
        raise PairSegInputError(f"{path}: model metadata is missing or corrupt")
    return metadata


def _check_version(value: Any, path: PathLike) -> int:
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise not_a_model(path, f"format version {value!r}") from None
    if version > FORMAT_VERSION:
        raise PairSegInputError(f"{path}: model file format {version} is newer than this engine's "
                                f"({FORMAT_VERSION}); update PairSeg to read it")
    if version < 1:
        raise not_a_model(path, f"format version {value!r}")
    return version


def _tensors(header: dict, body: memoryview, path: PathLike) -> list[tuple[str, str, list, memoryview]]:
    """(name, dtype, shape, bytes) of every tensor, in name order."""
    tensors = []
    for name in sorted(key for key in header if key != "__metadata__"):
        entry = header[name]
        try:
            dtype, shape, (begin, end) = str(entry["dtype"]), [int(n) for n in entry["shape"]], entry["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as error:
            raise not_a_model(path, f"tensor {name!r} is not described") from error
        if not 0 <= begin <= end:
            raise not_a_model(path, f"tensor {name!r} has offsets {begin}..{end}")
        if end > len(body):
            raise PairSegInputError(f"{path}: model file is truncated (tensor {name!r} ends at byte {end} of "
                                    f"the weights, the file holds {len(body)})")
        tensors.append((name, dtype, shape, body[begin:end]))
    return tensors


def content_sha256(data: bytes, path: PathLike = "model file") -> str:
    """SHA-256 (hex) of a format-2 file's content: format, version, metadata without ``sha256``,
    and each tensor's name, dtype, shape and bytes, in name order. Independent of the order and
    alignment in which the tensors were laid out."""
    header, start = _header(data, path)
    return _content_sha256(data, header, start, path)


def _content_sha256(data: bytes, header: dict, start: int, path: PathLike) -> str:
    version, metadata = _record(header, path)
    digest = hashlib.sha256()
    digest.update(_canonical({"format": MODEL_FORMAT, "format_version": version,
                              "metadata": {k: v for k, v in metadata.items() if k != "sha256"}}))
    for name, dtype, shape, raw in _tensors(header, memoryview(data)[start:], path):
        digest.update(_canonical([name, dtype, shape]))
        digest.update(raw)
    return digest.hexdigest()


def header_metadata(metadata: dict) -> dict[str, str]:
    """The safetensors ``__metadata__`` of a format-2 file holding ``metadata``."""
    return {"format": MODEL_FORMAT, "format_version": str(FORMAT_VERSION),
            "metadata": json.dumps(metadata, sort_keys=True, allow_nan=False)}


def verified_metadata(data: bytes, path: PathLike) -> dict:
    """The metadata of a format-2 file's bytes after checking its checksum, migrated and
    validated; PairSegInputError naming ``path`` otherwise."""
    if not _is_safetensors(data):
        raise not_a_model(path, "unrecognised content")
    header, start = _header(data, path)
    version, metadata = _record(header, path)
    if _content_sha256(data, header, start, path) != metadata.get("sha256"):
        raise PairSegInputError(f"{path}: model file does not match its checksum (weights or metadata "
                                f"edited, or the file is damaged); refused")
    return upgrade(metadata, version, path)


# -------------------------------------------------------------------------------------------
# Format 1: a PyTorch zip archive; its metadata string read from the pickle's opcodes
# -------------------------------------------------------------------------------------------

_STRINGS = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINSTRING", "SHORT_BINSTRING",
            "STRING"}
_INTEGERS = {"BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1"}
_MEMO = {"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"}
#: What the format-1 writer (``torch.save`` of tensors in a dict) refers to; anything else is foreign.
_V1_GLOBALS = ("collections OrderedDict", "torch._utils _rebuild_tensor_v2")


def _legacy_record(data: bytes, path: PathLike) -> dict:
    """``format``, ``format_version`` and ``metadata`` of a format-1 archive, read from the opcodes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            records = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not records:
                raise not_a_model(path, "a zip archive without a PyTorch record")
            pickled = archive.read(records[0])
        found: dict[str, Any] = {}
        key = None
        for opcode, argument, _ in pickletools.genops(pickled):
            name = opcode.name
            if name in _MEMO:
                continue
            if name in ("GLOBAL", "INST") and not (argument in _V1_GLOBALS or (
                    argument.startswith("torch ") and argument.endswith("Storage"))):
                raise not_a_model(path, f"it refers to {argument.replace(' ', '.')}, which PairSeg never "
                                        "stores")
            if name in ("STACK_GLOBAL", "EXT1", "EXT2", "EXT4"):
                raise not_a_model(path, "it refers to objects PairSeg never stores")
            if key is not None:
                if name in _STRINGS or name in _INTEGERS:
                    found.setdefault(key, argument)
                key = None
            elif name in _STRINGS and argument in ("format", "format_version", "metadata") and argument not in found:
                key = argument
    except PairSegInputError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, OSError, NotImplementedError) as error:
        raise PairSegInputError(f"{path}: model file is damaged or truncated (an archive that cannot be "
                                f"read: {type(error).__name__}); refused") from error
    if found.get("format") != MODEL_FORMAT:
        raise not_a_model(path, f"format {found.get('format')!r}")
    return found


def format1_metadata(record: dict, path: PathLike) -> dict:
    """The metadata dict of a format-1 record (``metadata`` is a JSON string)."""
    if _check_version(record.get("format_version", 0), path) != 1:
        raise not_a_model(path, f"format {record.get('format_version')!r} in a PyTorch archive")
    return _parse_metadata(record.get("metadata"), path)


# -------------------------------------------------------------------------------------------
# Migrations and validation
# -------------------------------------------------------------------------------------------


def _from_1(metadata: dict) -> dict:
    """Format 1 -> 2: fill what format-1 files could lack, as the engine that wrote them did."""
    meta = dict(metadata)
    options = meta.get("options")
    row = architecture(meta["arch"]) if isinstance(meta.get("arch"), str) else None
    if row is not None and isinstance(options, dict):
        # options written before they existed: the values that engine used (C2FCN: the AND read-out, Eq. 12)
        missing = {name: value for name, value in row.legacy_options.items() if name not in options}
        if missing:
            meta["options"] = {**options, **missing}
    names = meta.get("class_names")
    if "class_colors" not in meta and isinstance(names, list) and all(isinstance(n, str) for n in names):
        from pairseg.constants import default_colors  # standard library only

        meta["class_colors"] = [[float(c) for c in rgb] for rgb in default_colors(names)]
    if isinstance(meta.get("modality"), str):
        meta["modality"] = meta["modality"].upper()
    meta.setdefault("in_channels", 3)  # what format-1 loading assumed when it was absent
    meta.setdefault("spacing", None)  # no recorded spacing: slices are resized to size x size
    meta.setdefault("weights_dtype", "float32")
    return meta


#: version -> function turning that version's metadata into the next version's.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _from_1}


def upgrade(metadata: dict, version: int, path: PathLike) -> dict:
    """Migrate ``metadata`` of format ``version`` to :data:`FORMAT_VERSION`, then validate it."""
    meta = dict(metadata)
    for step in range(version, FORMAT_VERSION):
        meta = MIGRATIONS[step](meta)
    validate_metadata(meta, path)
    return meta


def _is_int(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _spacing_problem(spacing: Any) -> str | None:
    values = spacing if isinstance(spacing, list) else [spacing]
    if spacing is None or (len(values) == (2 if isinstance(spacing, list) else 1)
                           and all(_is_number(v) and v > 0 for v in values)):
        return None
    return f"spacing must be a pixel spacing in mm (a positive number or [row, col]), got {spacing!r}"


def validate_metadata(metadata: dict, path: PathLike) -> None:
    """Check the metadata of the current format; PairSegInputError naming ``path`` and every problem.

    Fields: ``arch`` (one of ``constants.ARCHITECTURES``), ``options`` (dict), ``num_classes`` K >= 1,
    ``in_channels`` >= 1, ``class_names`` (K non-empty str, distinct by ``constants.class_key``),
    ``class_colors`` (K RGB triples in 0..1),
    ``modality`` (one of :data:`MODALITIES`), ``size`` (training slice size, px, >= 1),
    ``spacing`` (in-plane pixel spacing of the training slices in mm: a number, [row, col], or
    None = slices were resized to ``size`` x ``size`` whatever their spacing), ``weights_dtype``
    (one of :data:`WEIGHTS_DTYPES`), ``engine_version`` and ``created`` (str), ``sha256`` (str),
    optional ``preprocessing``, ``training``, ``validation`` (dicts).
    """
    problems = []
    if metadata.get("arch") not in ARCHITECTURES:
        problems.append(f"unknown architecture {metadata.get('arch')!r} (this PairSeg knows "
                        f"{', '.join(ARCHITECTURES)}; a newer one may read the model)")
    if not isinstance(metadata.get("options"), dict):
        problems.append(f"options must be a dict, got {metadata.get('options')!r}")
    k = metadata.get("num_classes")
    if not _is_int(k):
        problems.append(f"num_classes must be an integer >= 1, got {k!r}")
        k = None
    if not _is_int(metadata.get("in_channels")):
        problems.append(f"in_channels must be an integer >= 1, got {metadata.get('in_channels')!r}")
    names = metadata.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        problems.append(f"class_names must be a list of non-empty names, got {names!r}")
    elif k is not None and len(names) != k:
        problems.append(f"class_names lists {len(names)} name(s) for {k} class(es)")
    elif len({class_key(n) for n in names}) != len(names):
        problems.append(f"class_names names a class twice: {names}")
    colors = metadata.get("class_colors")
    if not isinstance(colors, list) or not all(
            isinstance(c, list) and len(c) == 3 and all(_is_number(v) and 0 <= v <= 1 for v in c) for c in colors):
        problems.append(f"class_colors must be one RGB triple (0..1) per class, got {colors!r}")
    elif k is not None and len(colors) != k:
        problems.append(f"class_colors lists {len(colors)} colour(s) for {k} class(es)")
    if metadata.get("modality") not in MODALITIES:
        problems.append(f"modality must be one of {', '.join(MODALITIES)}, got {metadata.get('modality')!r}")
    if not _is_int(metadata.get("size")):
        problems.append(f"size must be an integer >= 1 (pixels), got {metadata.get('size')!r}")
    spacing = _spacing_problem(metadata.get("spacing"))
    if spacing:
        problems.append(spacing)
    if metadata.get("weights_dtype") not in WEIGHTS_DTYPES:
        problems.append(f"weights_dtype must be one of {', '.join(WEIGHTS_DTYPES)}, "
                        f"got {metadata.get('weights_dtype')!r}")
    for key in ("engine_version", "created", "sha256"):
        if not isinstance(metadata.get(key), str):
            problems.append(f"{key} must be a string, got {metadata.get(key)!r}")
    for key in ("preprocessing", "training", "validation"):
        if metadata.get(key) is not None and not isinstance(metadata[key], dict):
            problems.append(f"{key} must be a dict, got {type(metadata[key]).__name__}")
    if problems:
        raise PairSegInputError(f"{path}: invalid model metadata: " + "; ".join(problems))


def inplane_spacing(metadata: dict) -> tuple[float, float] | None:
    """The model's in-plane pixel spacing as (row, col) mm, or None (resize to ``size`` x ``size``)."""
    spacing = metadata.get("spacing")
    if spacing is None:
        return None
    values = [float(v) for v in (spacing if isinstance(spacing, list) else [spacing])]
    return (values[0], values[-1])


def plain_json(value: Any) -> Any:
    """``value`` as plain JSON data: tuples become lists, NaN and infinities become None.

    Raises TypeError for anything JSON cannot hold (arrays, tensors, objects)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"metadata keys must be strings, got {list(value)!r}")
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    raise TypeError(f"{type(value).__name__} is not plain JSON data: {value!r}")


# -------------------------------------------------------------------------------------------
# Reading without torch
# -------------------------------------------------------------------------------------------


def stored_format_version(data: bytes, path: PathLike) -> int:
    """The format version a file was written in (before migration); no checksum is checked."""
    if _is_safetensors(data):
        return _record(_header(data, path)[0], path)[0]
    if data[:4] == _ZIP_MAGIC:
        return _check_version(_legacy_record(data, path).get("format_version", 0), path)
    raise not_a_model(path, "unrecognised content")


def read_metadata(path: PathLike) -> dict:
    """A model file's metadata, migrated to the current format and validated, without torch.

    Format 2: the checksum over weights and metadata is verified. Format 1: the metadata is read
    from the archive's pickle opcodes without building any object; its checksum covers only the
    weights and needs torch, so it is checked when the engine loads the model.

    Raises:
        PairSegInputError: missing, truncated, edited or foreign file, or invalid metadata (the
            message names the file).
    """
    data = read_model_bytes(path)
    if _is_safetensors(data):
        return verified_metadata(data, path)
    if data[:4] == _ZIP_MAGIC:
        return upgrade(format1_metadata(_legacy_record(data, path), path), 1, path)
    raise not_a_model(path, "unrecognised content")
