"""Model files: network weights plus JSON metadata, loaded without executing code.

A model file (format 2, see :mod:`pairseg.modelfiles.fileformat` for the layout, the checksum and the
metadata fields) is a safetensors file: a JSON header that holds the metadata, then raw tensor
bytes. Reading it never unpickles anything; the metadata can be read with the Python standard
library alone. A SHA-256 over the weights AND the metadata is verified on every read.

Format-1 files (PyTorch zip archives) still load: their weights through
``torch.load(..., weights_only=True)``, which refuses arbitrary pickled objects, their weights
checksum is verified, and their metadata is migrated (:data:`pairseg.modelfiles.fileformat.MIGRATIONS`).

Checkpoints (``<model>.ckpt``, optimiser and RNG state for resuming) stay PyTorch archives written
by :func:`atomic_torch_save` and read by :func:`safe_torch_load`.

Every write goes through :mod:`pairseg.atomic` (a temporary file beside the destination, flushed,
read back whole, then renamed into place), so an interrupted or failed save never leaves a
truncated file and replaces nothing; a failure is a PairSegOutputError naming the file.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import torch

from pairseg import __version__, atomic
from pairseg.constants import MODEL_FORMAT
from pairseg.modelfiles import fileformat
from pairseg.errors import PairSegInputError
from pairseg.modelfiles.fileformat import FORMAT_VERSION

__all__ = ["save_model", "write_model_file", "load_model",
           "read_metadata", "weights_sha256", "atomic_torch_save", "safe_torch_load"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """The format-1 checksum of the weights alone (format 2 uses
    :func:`pairseg.modelfiles.fileformat.content_sha256`, which also covers the metadata)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`pairseg.atomic.write_stream`: the archive is read back
    (directory and every member's CRC) before it replaces ``path``. Raises PairSegOutputError
    naming ``path`` when it cannot be written (full disk, quota, permissions...)."""
    return atomic.write_stream(path, lambda stream: torch.save(obj, stream), atomic.verify_zip, "checkpoint")


def safe_torch_load(path: str | Path, what: str = "file") -> dict:
    """Load a PyTorch archive with ``weights_only=True``: tensors, containers and plain values only.

    Raises PairSegInputError naming ``path`` when it is missing, not a PyTorch archive, damaged,
    holds other objects (which are refused, never run) or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise PairSegInputError(f"{path}: {what} does not exist")
    with open(path, "rb") as stream:
        if stream.read(4) != b"PK\x03\x04":
            raise PairSegInputError(f"{path}: not a PairSeg {what} (not a PyTorch archive); refused "
                                    "without loading it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message advises weights_only=False, which would run the payload: never repeat it
        raise PairSegInputError(f"{path}: not a PairSeg {what} (it holds objects other than weights and "
                                "plain values, possibly code); refused without running them") from error
    except Exception as error:  # damaged or truncated archive
        raise PairSegInputError(f"{path}: {what} is damaged or truncated ({type(error).__name__}); "
                                "refused") from error
    if not isinstance(payload, dict):
        raise PairSegInputError(f"{path}: not a PairSeg {what} (unexpected content); refused")
    return payload


def _weights_dtype(weights_dtype: torch.dtype | str | None) -> str:
    if weights_dtype is None:
        return "float32"
    name = weights_dtype if isinstance(weights_dtype, str) else str(weights_dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise ValueError(f"weights_dtype must be one of {', '.join(_DTYPES)}, got {weights_dtype!r}")
    return name


def _stored_weights(state_dict: dict[str, torch.Tensor], dtype_name: str, path: Path) -> dict[str, torch.Tensor]:
    dtype = _DTYPES[dtype_name]
    state = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point() and tensor.dtype != dtype:
            stored = tensor.to(dtype)
            if not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{path}: weight {name} exceeds the range of {dtype_name}; "
                                 f"save it as float32")
            tensor = stored
        state[name] = tensor.contiguous().clone()
    return state


def _floats(value: Any) -> Any:
    """Numbers as floats, a sequence of numbers as a list of floats; anything else as it is."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if number(value):
        return float(value)
    if isinstance(value, (list, tuple)) and all(number(v) for v in value):
        return [float(v) for v in value]
    return value


def save_model(path: str | Path, model: torch.nn.Module, metadata: dict[str, Any],
               weights_dtype: torch.dtype | str | None = None) -> Path:
    """Write ``model``'s weights and ``metadata`` as a format-2 model file; returns ``path``.

    Args:
        path: the model file (``.pairseg``); written atomically, with the user's umask.
        model: a network from :func:`pairseg.networks.build_model`; ``arch``, ``num_classes``,
            ``in_channels`` and ``options`` are taken from it.
        metadata: ``class_names``, ``modality``, ``size`` (required), ``class_colors`` (default:
            :func:`pairseg.constants.default_colors`), ``spacing`` (in-plane mm: a number or [row, col];
            default None = slices resized), ``preprocessing``, ``training``, ``validation`` ...
            (see :func:`pairseg.modelfiles.fileformat.validate_metadata`). Non-finite numbers are stored as
            null (JSON has none).
        weights_dtype: None or ``torch.float32`` (as trained), ``torch.float16`` or
            ``torch.bfloat16`` (half the file; :func:`load_model` returns float32 weights).

    Raises:
        PairSegInputError (a ValueError): inconsistent metadata (each problem named).
        ValueError: an unknown ``weights_dtype`` or a weight out of its range.
        TypeError: metadata that is not plain JSON data.
    """
    meta = dict(metadata)
    meta.update(arch=model.arch, num_classes=int(model.num_classes), in_channels=int(model.in_channels),
                options=dict(model.options))
    return write_model_file(path, model.state_dict(), meta, weights_dtype)


def write_model_file(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any],
                     weights_dtype: torch.dtype | str | None = None) -> Path:
    """:func:`save_model` for a state dict whose ``arch``, ``num_classes``, ``in_channels`` and
    ``options`` the metadata gives; the metadata is validated, not matched against the weights."""
    path = Path(path)
    dtype_name = _weights_dtype(weights_dtype)
    state = _stored_weights(state_dict, dtype_name, path)
    meta = {k: v for k, v in metadata.items() if k != "sha256"}
    if "class_colors" not in meta and isinstance(meta.get("class_names"), (list, tuple)):
        from pairseg.constants import default_colors

        meta["class_colors"] = default_colors(meta["class_names"])
    spacing = meta.pop("spacing", None)
    meta.update(
        engine_version=__version__,
        created=meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        weights_dtype=dtype_name,
        sha256="",
    )
    meta = fileformat.plain_json(meta)
    meta["spacing"] = _floats(spacing)  # not through plain_json: a NaN spacing is an error, not "none"
    fileformat.validate_metadata(meta, path)

    from safetensors.torch import save as encode

    meta["sha256"] = fileformat.content_sha256(encode(state, fileformat.header_metadata(meta)), path)
    data = encode(state, fileformat.header_metadata(meta))
    fileformat.verified_metadata(data, path)  # what is written reads back, checksum included
    return atomic.write_bytes(path, data, "model")


def _read(path: str | Path, weights: bool) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """Verified, migrated metadata and (when ``weights``) the float32 state dict of a model file."""
    data = fileformat.read_model_bytes(path)
    if data[:4] == b"PK\x03\x04":  # format 1: a PyTorch archive
        payload = safe_torch_load(path, "model file")
        if payload.get("format") != MODEL_FORMAT:
            raise fileformat.not_a_model(path, f"format {payload.get('format')!r}")
        raw = fileformat.format1_metadata(payload, path)
        state = payload.get("state_dict")
        if (not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values())
                or weights_sha256(state) != raw.get("sha256")):
            raise PairSegInputError(f"{path}: weights do not match their checksum (file damaged or edited); "
                                    "refused")
        meta = fileformat.upgrade(raw, 1, path)
    else:
        meta = fileformat.verified_metadata(data, path)
        state = None
        if weights:
            from safetensors.torch import load as decode

            try:
                state = decode(data)
            except Exception as error:  # a header that passed the checks but not safetensors' own
                raise PairSegInputError(f"{path}: model file is damaged ({error}); refused") from error
    if state is not None:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return meta, (state if weights else None)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The model's metadata (classes, colours, modality, size, spacing, training summary,
    validation ...), checksum verified, migrated to the current format and validated.

    Raises:
        PairSegInputError: missing, damaged, edited or foreign file, invalid metadata (named).
    """
    return _read(path, weights=False)[0]


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network described by the file and load its verified weights (float32, eval mode).

    Returns:
        (model on ``device`` in eval mode, metadata as :func:`read_metadata` returns it).

    Raises:
        PairSegInputError: as :func:`read_metadata`, or weights that do not fit the architecture.
    """
    from pairseg.networks import build_model

    meta, state = _read(path, weights=True)
    try:
        model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"], **meta["options"])
    except ValueError as error:
        raise PairSegInputError(f"{path}: invalid model metadata: {error}") from error
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise PairSegInputError(f"{path}: weights do not fit architecture {meta['arch']!r} ({error})") from error
    return model.to(device).eval(), meta
