"""The catalog of ready models that ship with PairSeg (``Resources/Models/models.json``).

A catalog entry describes one model file: what it segments (classes with colours and
terminology codes, modality), how it was made (architecture, pixel spacing and size, training
data with its licence and citation), how well it does (Dice/ASSD measured on a held-out case,
CPU segmentation time) and how to check it (file size, sha256). ``resolve_model`` lets every
command take a catalog name wherever it takes a model path (``--model chaos-mr-t2-c2fcn``).

Standard library only: the Slicer modules read the catalog in Slicer's own process, where
torch is not imported. The JSON Schema of the catalog is ``Resources/Models/models.schema.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairseg.errors import PairSegInputError

__all__ = ["CATALOG_FILE", "Catalog", "CatalogEntry", "catalog_folder", "sample_folder", "load_catalog",
           "resolve_model", "file_sha256"]

CATALOG_FILE = "models.json"
#: environment variables that point the engine at another catalog or sample folder
MODELS_FOLDER_VARIABLE = "PAIRSEG_MODELS_DIR"
SAMPLE_FOLDER_VARIABLE = "PAIRSEG_SAMPLE_DATA_DIR"
CATALOG_VERSION = 1
_REQUIRED = ("name", "title", "description", "version", "modality", "arch", "file", "sha256", "file_size_bytes",
             "classes", "spacing_mm", "size", "training_data", "evaluation", "cpu_segment_seconds")


def _resource_folder(kind: str, marker: str, override_variable: str) -> Path:
    """``Resources/<kind>``: ``$<override_variable>`` when set; else the first one holding
    ``marker`` beside the engine package, as the extension installs it (``<scripted
    modules>/Resources/<kind>``), or two folders up in a source checkout (engine in src/)."""
    override = os.environ.get(override_variable)
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent.parent  # the pairseg package folder
    for root in (package.parent, package.parent.parent):
        candidate = root / "Resources" / kind
        if (candidate / marker).is_file():
            return candidate
    return package.parent.parent / "Resources" / kind


def catalog_folder() -> Path:
    """Where the catalog lives: ``$PAIRSEG_MODELS_DIR`` when set; else ``Resources/Models`` beside
    the engine package (extension) or at the top of the source checkout."""
    return _resource_folder("Models", CATALOG_FILE, MODELS_FOLDER_VARIABLE)


def sample_folder() -> Path:
    """The embedded sample case (a dataset folder: dataset.json, CHAOS case_002 image and expert
    label, CC BY-SA 4.0): ``$PAIRSEG_SAMPLE_DATA_DIR`` when set; else ``Resources/SampleData``
    beside the engine package (extension) or at the top of the source checkout. The folder may
    be missing; callers check for its dataset.json."""
    return _resource_folder("SampleData", "dataset.json", SAMPLE_FOLDER_VARIABLE)


@dataclass(frozen=True)
class CatalogEntry:
    """One ready model. ``classes``: dicts with ``name``, ``color`` ([r, g, b], 0-255) and
    ``terminology`` (SNOMED CT codes); ``evaluation``: ``case``, ``dice`` and ``assd_mm`` per class,
    ``mean_dice``, ``command``; ``cpu_segment_seconds``: wall time of ``pairseg segment`` on the
    evaluation case on a 2-core CPU."""

    name: str
    title: str
    description: str
    version: str
    modality: str
    arch: str
    file: Path
    sha256: str
    file_size_bytes: int
    classes: list[dict[str, Any]]
    spacing_mm: float
    size: int
    training_data: dict[str, Any]
    evaluation: dict[str, Any]
    cpu_segment_seconds: float
    url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        """Whether the model file is present (later releases may list models to download)."""
        return self.file.is_file()

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]

    def summary(self) -> str:
        """One line: name, modality, classes, held-out Dice."""
        dice = self.evaluation.get("mean_dice")
        score = f", Dice {100 * dice:.1f} on held-out {self.evaluation.get('case')}" if dice is not None else ""
        return f"{self.name} ({self.modality}, {', '.join(self.class_names)}{score})"

    def verify(self) -> Path:
        """The model file, after checking its size and sha256 against the catalog."""
        if not self.available:
            raise PairSegInputError(f"catalog model {self.name}: file {self.file} is missing"
                                    + (f" (download it from {self.url})" if self.url else ""))
        size = self.file.stat().st_size
        if size != self.file_size_bytes or file_sha256(self.file) != self.sha256:
            raise PairSegInputError(f"catalog model {self.name}: {self.file} does not match the catalog's size and "
                                    "sha256 (damaged or replaced file)")
        return self.file


@dataclass(frozen=True)
class Catalog:
    """The catalog file's models and the default model's name."""

    path: Path
    default: str | None
    entries: list[CatalogEntry]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def entry(self, name: str) -> CatalogEntry:
        for candidate in self.entries:
            if candidate.name == name:
                return candidate
        raise PairSegInputError(f"{self.path}: no model named {name!r} (catalog models: {', '.join(self.names) or 'none'})")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_catalog(folder: str | Path | None = None) -> Catalog:
    """Read ``<folder>/models.json`` (default ``catalog_folder()``); a missing catalog is an empty
    one. Malformed catalogs raise ``PairSegInputError`` naming the file and the entry."""
    root = Path(folder) if folder is not None else catalog_folder()
    path = root / CATALOG_FILE
    if not path.is_file():
        return Catalog(path, None, [])
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PairSegInputError(f"{path}: not a readable JSON catalog ({error})") from error
    if not isinstance(spec, dict) or spec.get("catalog_version") != CATALOG_VERSION:
        raise PairSegInputError(f"{path}: expected a catalog with catalog_version {CATALOG_VERSION}")
    entries = []
    for index, item in enumerate(spec.get("models", [])):
        missing = [key for key in _REQUIRED if key not in item]
        if missing:
            raise PairSegInputError(f"{path}: model #{index + 1} lacks {', '.join(missing)}")
        known = {key: item[key] for key in _REQUIRED}
        known["file"] = root / item["file"]
        entries.append(CatalogEntry(**known, url=item.get("url"),
                                    extra={k: v for k, v in item.items() if k not in _REQUIRED and k != "url"}))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise PairSegInputError(f"{path}: model names repeat ({names})")
    default = spec.get("default")
    if default is not None and default not in names:
        raise PairSegInputError(f"{path}: default model {default!r} is not in the catalog")
    return Catalog(path, default, entries)


def resolve_model(spec: str | Path, folder: str | Path | None = None) -> Path:
    """A model argument as a file: an existing path as it is, else a catalog model's file (size and
    sha256 checked). Neither: ``PairSegInputError`` naming ``spec`` and the catalog's models."""
    path = Path(spec)
    if path.is_file():
        return path
    catalog = load_catalog(folder)
    if str(spec) in catalog.names:
        return catalog.entry(str(spec)).verify()
    choices = ", ".join(catalog.names) or "none"
    if path.suffix == ".pairseg" or len(path.parts) > 1:  # meant as a file
        raise PairSegInputError(f"{spec}: model file does not exist (or give a catalog model: {choices})")
    raise PairSegInputError(f"{spec}: no such model file, and no catalog model of that name (catalog: {choices})")
