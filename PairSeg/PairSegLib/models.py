"""Model files seen from Slicer: metadata without torch, and the shared model registry.

``readModelMetadata(path)`` reads, verifies and validates the JSON metadata of a ``.pairseg``
model file WITHOUT torch (so the module can describe a model before torch is installed), through
the engine's standard-library-only reader ``pairseg.modelfiles.fileformat`` (shipped with this module): a
format-2 file is a safetensors file whose JSON header holds the metadata, and its SHA-256 over
weights and metadata is checked; a format-1 file (a PyTorch archive) has its metadata string read
from the pickle's opcodes without building any object, and is migrated to the current format.

``ModelRegistry`` is the list of models the user has registered (the PairSegTrainer module
registers each model it trains) and of recently used model files. It is one JSON file in the
user's PairSeg folder, shared by both modules::

    {"format": "pairseg-model-registry", "version": 1,
     "models": [{"path": "/abs/model.pairseg", "name": "...", "source": "trainer", "registered": "ISO time"}],
     "recent": ["/abs/model.pairseg", ...]}

The folder is ``$PAIRSEG_USER_DIR`` when set, else ``~/.pairseg``. Writes are atomic.
"""

import json
import os
import time

REGISTRY_FORMAT = "pairseg-model-registry"
MAX_RECENT = 10


class ModelFileError(ValueError):
    """A model file that is missing, unreadable, edited or not a PairSeg model."""


def readModelMetadata(path):
    """The metadata dict of a PairSeg model file (checksum verified, migrated, validated);
    ModelFileError with a message naming the file otherwise."""
    path = os.fspath(path) if path else ""
    if not path:
        raise ModelFileError("No model file selected.")
    if not os.path.isfile(path):
        raise ModelFileError(f"Model file not found: {path}")
    from .engine import torchFreeEngineModule

    modelformat = torchFreeEngineModule("modelfiles.fileformat")  # the engine's reader (standard library only)
    errors = torchFreeEngineModule("errors")
    try:
        return modelformat.read_metadata(path)
    except errors.PairSegInputError as error:
        raise ModelFileError(str(error)) from error


def describeModel(metadata):
    """Short human-readable lines: classes, modality, architecture, training data, validation Dice."""
    lines = []
    names = list(metadata.get("class_names") or [])
    lines.append("Classes: " + (", ".join(names) if names else "?"))
    size = str(metadata.get("size", "?"))
    spacing = metadata.get("spacing")  # in-plane mm: a number, [row, col], or None (slices resized)
    if spacing:
        size += " px at " + ("x".join(f"{v:g}" for v in spacing) if isinstance(spacing, list) else f"{spacing:g}") + " mm"
    lines.append(f"Modality: {metadata.get('modality', '?')}    Architecture: {metadata.get('arch', '?')}"
                 f"    Input size: {size}")
    training = metadata.get("training") or {}
    if training:
        cases = training.get("cases")
        caseCount = len(cases) if isinstance(cases, (list, tuple)) else cases
        parts = []
        if caseCount is not None:
            parts.append(f"{caseCount} case(s)")
        if training.get("slices") is not None:
            parts.append(f"{training['slices']} slices")
        if training.get("pairs") is not None:
            parts.append(f"{training['pairs']} pairs")
        lines.append("Training data: " + (", ".join(parts) if parts else "recorded"))
    validation = metadata.get("validation") or {}
    dice = validation.get("dice") if isinstance(validation, dict) else None
    meanDice = validation.get("mean_dice") if isinstance(validation, dict) else None
    if isinstance(dice, dict) and dice:
        perClass = ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if isinstance(v, (int, float)))
        lines.append(f"Validation Dice: {meanDice:.3f} ({perClass})" if isinstance(meanDice, (int, float))
                     else f"Validation Dice: {perClass}")
    elif isinstance(meanDice, (int, float)):
        lines.append(f"Validation Dice: {meanDice:.3f}")
    else:
        lines.append("Validation Dice: not recorded")
    return lines


def userFolder():
    """The user's PairSeg folder ($PAIRSEG_USER_DIR, else ~/.pairseg)."""
    return os.environ.get("PAIRSEG_USER_DIR") or os.path.join(os.path.expanduser("~"), ".pairseg")


def defaultRegistryPath():
    return os.path.join(userFolder(), "registered_models.json")


class ModelRegistry:
    """Registered and recently used model files (see module docstring for the JSON format)."""

    def __init__(self, path=None):
        self.path = os.fspath(path) if path else defaultRegistryPath()

    def _load(self):
        try:
            with open(self.path, encoding="utf-8") as stream:
                data = json.load(stream)
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
            data = {}
        data.setdefault("format", REGISTRY_FORMAT)
        data.setdefault("version", 1)
        data["models"] = [m for m in data.get("models", []) if isinstance(m, dict) and m.get("path")]
        data["recent"] = [p for p in data.get("recent", []) if isinstance(p, str)]
        return data

    def _save(self, data):
        from .engine import torchFreeEngineModule

        try:  # written whole or not at all, as every PairSeg output
            torchFreeEngineModule("atomic").write_json(self.path, data, "model registry", indent=2)
        except ValueError as error:  # PairSegOutputError: the callers handle OSError
            raise OSError(str(error)) from error

    def registeredModels(self, existingOnly=True):
        models = self._load()["models"]
        return [m for m in models if not existingOnly or os.path.isfile(m["path"])]

    def registerModel(self, path, name=None, source="trainer"):
        path = os.path.abspath(os.fspath(path))
        data = self._load()
        data["models"] = [m for m in data["models"] if os.path.abspath(m["path"]) != path]
        data["models"].append({"path": path, "name": name or os.path.splitext(os.path.basename(path))[0],
                               "source": source, "registered": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self._save(data)

    def unregisterModel(self, path):
        path = os.path.abspath(os.fspath(path))
        data = self._load()
        data["models"] = [m for m in data["models"] if os.path.abspath(m["path"]) != path]
        data["recent"] = [p for p in data["recent"] if os.path.abspath(p) != path]
        self._save(data)

    def recentModels(self, existingOnly=True):
        return [p for p in self._load()["recent"] if not existingOnly or os.path.isfile(p)]

    def addRecentModel(self, path, maxCount=MAX_RECENT):
        path = os.path.abspath(os.fspath(path))
        data = self._load()
        data["recent"] = ([path] + [p for p in data["recent"] if os.path.abspath(p) != path])[:maxCount]
        self._save(data)

    def knownModels(self):
        """Registered models first, then recent files not registered: [(label, path)]."""
        entries, seen = [], set()
        for model in self.registeredModels():
            entries.append((f"{model['name']} (registered)", model["path"]))
            seen.add(os.path.abspath(model["path"]))
        for path in self.recentModels():
            if os.path.abspath(path) not in seen:
                entries.append((os.path.basename(path), path))
                seen.add(os.path.abspath(path))
        return entries


def modelChoices(registry, catalog=None):
    """What a model picker offers, catalog (ready) models first, then the registry's
    ``knownModels()``: ``[(label, path, toolTip)]``; ``path`` is the model file (a catalog model's
    shipped file, the one ``pairseg.modelfiles.catalog.resolve_model`` checks and returns). ``catalog``: a
    ``pairseg.modelfiles.catalog.Catalog`` (default: ``load_catalog()``; an unreadable catalog is left out
    with a warning, so a damaged catalog cannot break a panel)."""
    import logging

    if catalog is None:
        from .engine import torchFreeEngineModule

        try:
            catalog = torchFreeEngineModule("modelfiles.catalog").load_catalog()
        except Exception as error:
            logging.warning(f"PairSeg: model catalog not readable: {error}")
            catalog = None
    choices = []
    for entry in (catalog.entries if catalog is not None else []):
        default = " (default)" if entry.name == catalog.default else ""
        missing = "" if entry.available else " [file missing]"
        choices.append((f"Ready model: {entry.title}{default}{missing}", str(entry.file), entry.summary()))
    for label, path in registry.knownModels():
        choices.append((label, path, path))
    return choices
