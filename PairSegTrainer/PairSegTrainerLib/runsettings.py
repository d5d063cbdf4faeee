"""The settings of one training run in the Trainer: ONE Slicer parameter pack, generated from the
engine's schema.

The engine's ``pairseg.config.TrainConfig`` (torch-free) is the one definition of the training
settings, their defaults and ranges. ``TrainingSettings`` is a ``@parameterPack`` (Slicer's
``slicer.parameterNodeWrapper``) whose fields are the engine's settings that the Trainer offers
(``PACK_SETTINGS``), under the engine's own names (``lr``, ``batch_size``, ``out``), with the
engine's defaults and ranges as ``WithinRange``/``Minimum`` validators, plus what only the
Trainer needs (``TRAINER_ONLY``: whether the budget is in steps, the number of GPUs for
torchrun). The module's parameter node holds one (``training``); the panel binds its widgets to
its fields (``SlicerParameterName`` ``training.lr`` ...); a run is a detached copy of it
(``copy(data=..., out=...)``). ``validate()`` builds and checks the engine's TrainConfig once and
``commandLine(engineConfig)`` writes exactly that as the run's JSON file (``<model>.train.json``)
and returns ``python -m pairseg train --config FILE --events json`` (``python -m
torch.distributed.run --nproc-per-node N -m pairseg ...`` for several GPUs): the same code path as
headless training. ``fromEngineConfig`` / ``fromRunFile`` read one back.

The pack class is built per ``slicer.parameterNodeWrapper`` module (``settingsPack()``; the
attribute ``TrainingSettings`` is the one of the running Slicer), so that each Slicer release's
own parameter-pack code makes it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

from PairSegLib import engine


def engineSchema():
    """The engine's ``pairseg.config`` module (torch-free)."""
    return engine.torchFreeEngineModule("config")


def parameterBounds(name, resolution=None):
    """The closed bounds ``(low, high)`` of a numeric engine setting, None for an unbounded side:
    the engine's inclusive bounds as they are; an exclusive bound moved inwards by ``resolution``
    (1 for a whole number; for a float, the smallest step the spin box shows, e.g. 1e-6 for six
    decimals; ValueError for a float with an exclusive bound and no resolution)."""
    spec = engineSchema().setting(name)
    if resolution is None and spec.kind == "int":
        resolution = 1
    bounds = []
    for inclusive, exclusive, direction in ((spec.minimum, spec.exclusive_minimum, 1),
                                            (spec.maximum, spec.exclusive_maximum, -1)):
        if inclusive is None and exclusive is not None and resolution is None:
            raise ValueError(f"training setting {name!r} is a {spec.kind}: give the spin box's resolution")
        bound = inclusive if inclusive is not None else (
            exclusive + direction * resolution if exclusive is not None else None)
        bounds.append(None if bound is None else (int(bound) if spec.kind == "int" else float(bound)))
    return tuple(bounds)


# The engine's names (pairseg.constants), under the names the widget reads them by.
_constants = engine.torchFreeEngineModule("constants")
PAIR_MODES = _constants.PAIR_MODES
MODALITIES = _constants.MODALITIES
MODEL_SUFFIX = _constants.MODEL_SUFFIX
# (name, label) of the engine's architectures, from its one architecture table
# (pairseg.architectures, read through constants; the first is the default).
ARCHITECTURES = tuple(_constants.ARCHITECTURE_LABELS.items())

#: The engine's settings (``pairseg.config`` names) a Trainer run sets, in the pack's order.
PACK_SETTINGS = ("data", "out", "arch", "epochs", "steps", "size", "batch_size", "lr", "device", "seed",
                 "val_fraction", "pair_mode", "offsets", "inter_repeats", "sparse", "init_from", "resume",
                 "overwrite", "stop_file")
#: What the steps box offers when the budget is switched to steps (the engine has no default:
#: unset, the budget is in epochs).
STEPS_SHOWN = 2000
#: The smallest steps of the float spin boxes (their decimals in the .ui: 6 and 2); an exclusive
#: engine bound is moved inwards by one of them (``parameterBounds``).
SPIN_BOX_STEPS = {"lr": 1e-6, "val_fraction": 0.01}
#: Trainer-only fields of the pack: name -> (type, validator arguments or None, default).
#: ``use_steps``: the budget is ``steps`` (else ``epochs``); ``gpus`` > 1: one process per GPU
#: through torchrun (DDP).
TRAINER_ONLY = {"use_steps": (bool, None, False), "gpus": (int, (1, 64), 1)}
# Fine-tuning after a few corrected cases: short schedule, smaller learning rate.
FINE_TUNE_EPOCHS = 10
FINE_TUNE_LEARNING_RATE = 3e-5


class ConfigError(ValueError):
    """A training setting is missing or out of range (the message says which)."""


def parseOffsets(text) -> tuple:
    """``"3,5,7"`` or a sequence -> a tuple of positive ints (empty text -> empty tuple)."""
    if text is None:
        return ()
    if isinstance(text, str):
        items = [item.strip() for item in text.replace(";", ",").split(",") if item.strip()]
    else:
        items = list(text)
    try:
        offsets = tuple(int(item) for item in items)
    except (TypeError, ValueError):
        raise ConfigError(f"pair offsets must be whole numbers separated by commas, got {text!r}")
    if any(offset < 1 for offset in offsets):
        raise ConfigError(f"pair offsets must be >= 1 slice, got {text!r}")
    return offsets


# -- the pack's fields, from the engine's schema -----------------------------------------------

_PACK_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "int_list": str}


def packDefault(name):
    """The pack's default of an engine setting: the engine's default; for one unset by default,
    what a widget shows (``fallback``: 20 epochs; ``STEPS_SHOWN`` steps; the first choice; empty
    text)."""
    spec = engineSchema().setting(name)
    if spec.default is not None:
        return spec.default
    if spec.fallback is not None:
        return spec.fallback
    if name == "steps":
        return STEPS_SHOWN
    if spec.choices:
        return spec.choices[0]
    return "" if _PACK_TYPES[spec.kind] is str else None


def _validators(pnw, name):
    """The ``WithinRange`` / ``Minimum`` / ``Maximum`` validators of a numeric engine setting."""
    if engineSchema().setting(name).kind not in ("int", "float"):
        return []
    low, high = parameterBounds(name, SPIN_BOX_STEPS.get(name))
    if low is not None and high is not None:
        return [pnw.WithinRange(low, high)]
    return [pnw.Minimum(low)] if low is not None else [pnw.Maximum(high)] if high is not None else []


def _annotated(valueType, validators):
    return Annotated[(valueType, *validators)] if validators else valueType


def _packNamespace(pnw) -> dict:
    """The class body of the pack: annotations and defaults of every field."""
    annotations, namespace = {}, {}
    for name in PACK_SETTINGS:
        kind = engineSchema().setting(name).kind
        annotations[name] = _annotated(_PACK_TYPES[kind], _validators(pnw, name))
        namespace[name] = packDefault(name)
    for name, (valueType, bounds, default) in TRAINER_ONLY.items():
        annotations[name] = _annotated(valueType, [pnw.WithinRange(*bounds)] if bounds else [])
        namespace[name] = default
    namespace.update(__annotations__=annotations, __module__=__name__, __qualname__="TrainingSettings",
                     __doc__=TrainingSettingsMethods.__doc__)
    return namespace


_PACKS = {}   # slicer.parameterNodeWrapper module -> its TrainingSettings class


def settingsPack():
    """The ``TrainingSettings`` parameter-pack class of the running Slicer's
    ``slicer.parameterNodeWrapper`` (built on first use with that module's ``@parameterPack``)."""
    pnw = importlib.import_module("slicer.parameterNodeWrapper")
    pack = _PACKS.get(pnw)
    if pack is None:
        pack = pnw.parameterPack(type("TrainingSettings", (TrainingSettingsMethods,), _packNamespace(pnw)))
        _PACKS.clear()   # one release at a time: an older release's class is not used again
        _PACKS[pnw] = pack
    return pack


def __getattr__(name):
    if name == "TrainingSettings":
        return settingsPack()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TrainingSettingsMethods:
    """Everything one training run needs, as a Slicer parameter pack (``settingsPack()``): the
    engine's settings under the engine's names (``PACK_SETTINGS``; ``data``: the exported
    training set holding dataset.json, ``out``: the ``*.pairseg`` model file to write, ``offsets``
    as text "3,5,7", empty text = unset) and ``TRAINER_ONLY`` (``use_steps``, ``gpus``).
    Out-of-range values are refused when set (ValueError; ``copy`` says ConfigError naming the
    setting)."""

    def values(self) -> dict:
        """{field name: value} of every field of the pack."""
        return {name: getattr(self, name) for name in self.allParameters}

    def copy(self, **changes):
        """A detached pack (not in any parameter node) with ``changes``; ConfigError naming the
        setting for an unknown name or a value the pack refuses."""
        values = self.values()
        unknown = sorted(set(changes) - set(values))
        if unknown:
            raise ConfigError(f"unknown training setting(s) {', '.join(unknown)}")
        values.update(changes)
        settings = settingsPack()()
        for name, value in values.items():
            try:
                setattr(settings, name, value)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"training setting {name} = {value!r}: {error}") from error
        return settings

    @property
    def checkpointPath(self) -> str:
        """Where the engine keeps its resumable checkpoint: ``<MODEL>.ckpt`` beside the output."""
        return self.out + ".ckpt"

    @property
    def runFile(self) -> str:
        """The run's settings as the engine's JSON (``pairseg train --config``): beside the output."""
        return self.out + ".train.json"

    def engineSettings(self) -> dict:
        """The engine's settings of this run (``pairseg.config.TrainConfig`` fields): empty text
        is unset (None), ``offsets`` a list, and the budget is ``steps`` or ``epochs``, never both."""
        schema = engineSchema()
        values = {}
        for name in PACK_SETTINGS:
            value, spec = getattr(self, name), schema.setting(name)
            if spec.kind == "int_list":
                value = list(parseOffsets(value)) or None
            elif spec.optional and value == "":
                value = None
            values[name] = value
        values["epochs"], values["steps"] = (None, self.steps) if self.use_steps else (self.epochs, None)
        return values

    def engineConfig(self):
        """The engine's TrainConfig of these settings, checked by the engine's own rules
        (ranges, choices, exclusive options); ConfigError with the engine's message otherwise."""
        try:
            return engineSchema().TrainConfig.from_dict(self.engineSettings(), source="training settings")
        except ValueError as error:   # the engine's PairSegInputError
            raise ConfigError(str(error)) from error

    @classmethod
    def fromEngineConfig(cls, engineConfig, **trainerOnly):
        """The TrainingSettings of an engine TrainConfig (e.g. read from a run file): unset
        settings take the pack's defaults; ``use_steps`` when the budget is in steps."""
        values = {}
        for name in PACK_SETTINGS:
            value = getattr(engineConfig, name)
            if engineSchema().setting(name).kind == "int_list":
                value = ",".join(str(offset) for offset in value or ())
            values[name] = packDefault(name) if value is None else value
        values["use_steps"] = engineConfig.steps is not None
        values.update(trainerOnly)
        return settingsPack()().copy(**values)

    @classmethod
    def fromRunFile(cls, runFile, **trainerOnly):
        """The TrainingSettings of a run file (``<model>.train.json``, written by
        ``commandLine()`` of an earlier run, in this session or an earlier one). ConfigError
        naming the file."""
        try:
            return cls.fromEngineConfig(engineSchema().TrainConfig.read(runFile), **trainerOnly)
        except (OSError, ValueError) as error:
            raise ConfigError(str(error)) from error

    def outputConflict(self) -> dict:
        """What a fresh run (no ``resume``, no ``overwrite``) would replace: ``{"model": bool,
        "checkpoint": bool, "resumable": bool}`` (the engine refuses such a run); ``resumable``:
        ``unfinishedRun()``."""
        return {"model": Path(self.out).is_file(), "checkpoint": Path(self.checkpointPath).is_file(),
                "resumable": self.unfinishedRun()}

    def unfinishedRun(self) -> bool:
        """Whether an earlier run of this output model can be resumed: its checkpoint and run file
        are there and the model file is not, or is older than the checkpoint (the engine keeps the
        checkpoint of a finished run too, and writes the model after it)."""
        checkpoint, model = Path(self.checkpointPath), Path(self.out)
        if not (checkpoint.is_file() and Path(self.runFile).is_file()):
            return False
        return not model.is_file() or model.stat().st_mtime_ns < checkpoint.stat().st_mtime_ns

    def validate(self):
        """The engine's checked TrainConfig of this run (what ``commandLine`` writes); ConfigError
        with a readable message for a setting the engine would refuse or a missing file."""
        if not self.data:
            raise ConfigError("no training-set folder given")
        if not (Path(self.data) / "dataset.json").is_file():
            raise ConfigError(f"{self.data}: no dataset.json (export the training set first)")
        if not self.out:
            raise ConfigError("no output model file given")
        engineConfig = self.engineConfig()
        if self.init_from:  # a model file or a catalog name, as the engine's --init-from takes
            try:
                engine.resolveModel(self.init_from)
            except (ValueError, OSError) as error:
                raise ConfigError(f"fine-tune model {self.init_from} does not exist ({error})")
        if self.resume and not Path(self.checkpointPath).is_file():
            raise ConfigError(f"nothing to resume: {self.checkpointPath} does not exist")
        return engineConfig

    def engineArguments(self) -> list:
        """The arguments after ``pairseg``: ``train --config <runFile> --events json``."""
        return ["train", "--config", self.runFile, "--events", "json"]

    def commandLine(self, engineConfig=None, python=None) -> list:
        """Write the run file (``engineConfig``, default ``engineConfig()``; atomic) and return
        the command: one process, or torchrun with one worker per GPU. ``python``: the
        interpreter (default: the engine's, ``PairSegLib.engine.pythonExecutable()``)."""
        (engineConfig or self.engineConfig()).write(self.runFile)
        python = python or engine.pythonExecutable()
        if int(self.gpus) > 1:
            # ``python -m torch.distributed.run`` is torchrun; it needs no script on PATH.
            return [python, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(int(self.gpus)), "-m", "pairseg"] + self.engineArguments()
        return engine.engineCommand(*self.engineArguments(), python=python)


def versionedModelPath(modelPath: str) -> str:
    """``liver.pairseg`` -> ``liver_v2.pairseg``; ``liver_v2.pairseg`` -> ``liver_v3.pairseg``
    (skipping names whose model file or checkpoint ``<model>.ckpt`` already exists: the engine
    would refuse either)."""
    path = Path(modelPath)
    stem = path.name[: -len(MODEL_SUFFIX)] if path.name.endswith(MODEL_SUFFIX) else path.stem
    base, version = stem, 1
    head, sep, tail = stem.rpartition("_v")
    if sep and tail.isdigit() and head:
        base, version = head, int(tail)
    while True:
        version += 1
        candidate = path.with_name(f"{base}_v{version}{MODEL_SUFFIX}")
        if not candidate.exists() and not Path(str(candidate) + ".ckpt").exists():
            return str(candidate)
