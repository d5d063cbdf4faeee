"""Model files: network weights plus JSON metadata, loaded without executing code.

A model file is a PyTorch zip archive holding only tensors, strings and numbers::

    {"format": "pairseg-model", "format_version": 1, "metadata": "<json>", "state_dict": {...}}

It is read with ``torch.load(..., weights_only=True)``, which refuses arbitrary pickled objects,
and the SHA-256 of the weights stored in the metadata is checked on every load. Writes go to a
temporary file in the same folder and are renamed into place, so an interrupted save never
leaves a truncated model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pairseg import __version__
from pairseg.errors import PairSegInputError

FORMAT = "pairseg-model"
FORMAT_VERSION = 1
SUFFIX = ".pairseg"

__all__ = ["FORMAT", "SUFFIX", "save_model", "load_model", "read_metadata", "weights_sha256",
           "atomic_torch_save", "safe_torch_load"]


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A checksum of the weights that does not depend on how the archive was written."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(obj, temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def safe_torch_load(path: str | Path, what: str = "file") -> dict:
    """Load a torch archive with ``weights_only=True``; any failure becomes a clear input error."""
    path = Path(path)
    if not path.is_file():
        raise PairSegInputError(f"{path}: {what} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt archive, foreign pickle, truncated file ...
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PairSegInputError(f"{path}: not a readable PairSeg {what} ({first})") from error
    if not isinstance(payload, dict):
        raise PairSegInputError(f"{path}: not a PairSeg {what} (unexpected content)")
    return payload


def save_model(path: str | Path, model: torch.nn.Module, metadata: dict[str, Any]) -> Path:
    """Write ``model``'s weights and ``metadata`` (architecture is taken from the model)."""
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    meta = dict(metadata)
    meta.update(
        engine_version=__version__,
        arch=model.arch,
        num_classes=int(model.num_classes),
        in_channels=int(model.in_channels),
        options=dict(model.options),
        created=meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        sha256=weights_sha256(state),
    )
    if len(meta.get("class_names", [])) != model.num_classes:
        raise ValueError("metadata class_names must list one name per model class")
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "metadata": json.dumps(meta, sort_keys=True), "state_dict": state}
    return atomic_torch_save(payload, path)


def _payload(path: str | Path) -> dict:
    payload = safe_torch_load(path, "model file")
    if payload.get("format") != FORMAT:
        raise PairSegInputError(f"{path}: not a PairSeg model file (format {payload.get('format')!r})")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise PairSegInputError(
            f"{path}: model file format {payload.get('format_version')} is newer than this engine "
            f"({FORMAT_VERSION}); update PairSeg")
    return payload


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The model's metadata (classes, colours, modality, training summary, validation ...)."""
    try:
        return json.loads(_payload(path)["metadata"])
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise PairSegInputError(f"{path}: model metadata is missing or corrupt") from error


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network described by the file, load and verify its weights (eval mode)."""
    from pairseg.networks import build_model

    payload = _payload(path)
    try:
        meta = json.loads(payload["metadata"])
        state = payload["state_dict"]
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise PairSegInputError(f"{path}: model metadata is missing or corrupt") from error
    if weights_sha256(state) != meta.get("sha256"):
        raise PairSegInputError(f"{path}: weights do not match their checksum (file corrupt or edited)")
    try:
        model = build_model(meta["arch"], meta["num_classes"], meta.get("in_channels", 3), **meta.get("options", {}))
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as error:
        raise PairSegInputError(f"{path}: weights do not fit architecture {meta.get('arch')!r} ({error})") from error
    return model.to(device).eval(), meta
