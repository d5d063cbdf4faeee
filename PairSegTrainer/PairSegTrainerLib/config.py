"""Training settings of the PairSegTrainer module, as the engine defines them.

The engine's ``pairseg.config.TrainConfig`` (torch-free) is the one definition of the training
settings, their defaults and ranges. ``TrainingConfig`` is its Slicer-side view (camelCase names,
plus what only Slicer needs: GPUs for torchrun, the interpreter): its defaults are the engine's,
``engineConfig()`` builds and checks the engine's TrainConfig, and ``commandLine()`` writes it as
the run's JSON file (``<model>.train.json``) and returns ``python -m pairseg train --config FILE
--events json`` (``python -m torch.distributed.run --nproc-per-node N -m pairseg ...`` for several
GPUs): the same code path as headless training. ``fromEngineConfig`` reads one back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PairSegLib import engine


def engineSchema():
    """The engine's ``pairseg.config`` module (torch-free)."""
    return engine.torchFreeEngineModule("config")


def engineDefault(name):
    """The engine's default of a training setting (``pairseg.config.setting(name).default``)."""
    return engineSchema().setting(name).default


def parameterDefault(name):
    """The value a GUI shows for an engine setting: its default, or for an optional one that is
    unset by default, what unset means (``fallback``: 20 epochs). ValueError when it has neither."""
    spec = engineSchema().setting(name)
    value = spec.default if spec.default is not None else spec.fallback
    if value is None:
        raise ValueError(f"training setting {name!r} has no default")
    return value


def parameterRange(name, resolution=None):
    """The closed range ``(low, high)`` of an engine setting for a spin box and the parameter
    node's ``WithinRange``: the engine's inclusive bounds as they are; an exclusive bound moved
    inwards by ``resolution`` (1 for a whole number; for a float, the smallest step the spin box
    shows, e.g. 1e-6 for six decimals). ValueError when a side is unbounded."""
    spec = engineSchema().setting(name)
    if resolution is None:
        if spec.kind != "int":
            raise ValueError(f"training setting {name!r} is a {spec.kind}: give the spin box's resolution")
        resolution = 1
    bounds = []
    for inclusive, exclusive, direction in ((spec.minimum, spec.exclusive_minimum, 1),
                                            (spec.maximum, spec.exclusive_maximum, -1)):
        if inclusive is not None:
            bounds.append(inclusive)
        elif exclusive is not None:
            bounds.append(exclusive + direction * resolution)
        else:
            raise ValueError(f"training setting {name!r} has no {'lower' if direction > 0 else 'upper'} bound")
    low, high = bounds
    return (int(low), int(high)) if spec.kind == "int" else (float(low), float(high))

# The engine's names (pairseg.constants), under the names the widget reads them by.
_constants = engine.torchFreeEngineModule("constants")
PAIR_MODES = _constants.PAIR_MODES
MODALITIES = _constants.MODALITIES
MODEL_SUFFIX = _constants.MODEL_SUFFIX
# The labels the UI shows for the engine's architectures (pairseg.constants.ARCHITECTURES, whose
# first one is the default); an architecture without a label here is shown by its name.
ARCHITECTURE_LABELS = {
    "c2fcn": "C2FCN (compact conjugate FCN)",
    "cfcn": "CFCN (conjugate FCN)",
    "deeplabv3plus": "DeepLabv3+ (single-slice baseline)",
    "unet": "U-Net (single-slice baseline)",
    "siamfcn": "SiamFCN (Siamese ablation)",
}
ARCHITECTURE_NAMES = tuple(_constants.ARCHITECTURES)
ARCHITECTURES = tuple((name, ARCHITECTURE_LABELS.get(name, name)) for name in ARCHITECTURE_NAMES)

# The engine's defaults (paper: Adam lr 1e-4, 256 px).
DEFAULT_LEARNING_RATE = engineDefault("lr")
DEFAULT_SIZE = engineDefault("size")
DEFAULT_BATCH_SIZE = engineDefault("batch_size")
DEFAULT_EPOCHS = engineDefault("epochs")      # None: the engine's fallback budget
#: TrainingConfig field -> the engine's TrainConfig field
ENGINE_NAMES = {"dataFolder": "data", "outputModel": "out", "arch": "arch", "epochs": "epochs", "steps": "steps",
                "size": "size", "batchSize": "batch_size", "learningRate": "lr", "device": "device", "seed": "seed",
                "valFraction": "val_fraction", "pairMode": "pair_mode", "offsets": "offsets",
                "interRepeats": "inter_repeats", "initFrom": "init_from", "resume": "resume", "stopFile": "stop_file",
                "overwrite": "overwrite"}
#: What the steps box offers when the budget is switched to steps (the engine has no default:
#: unset, the budget is in epochs).
STEPS_SHOWN = 2000
#: The smallest steps of the float spin boxes (their decimals in the .ui: 6 and 2); an exclusive
#: engine bound is moved inwards by one of them (``parameterRange``).
LEARNING_RATE_STEP = 1e-6
FRACTION_STEP = 0.01
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


@dataclass
class TrainingConfig:
    """Everything one training run needs. Paths are plain strings so the object is JSON-able."""

    dataFolder: str = ""                 # exported training set (holds dataset.json)
    outputModel: str = ""                # the model file to write (``*.pairseg``)
    arch: str = ARCHITECTURE_NAMES[0]
    epochs: Optional[int] = DEFAULT_EPOCHS   # give epochs or steps (steps wins when both are set)
    steps: Optional[int] = engineDefault("steps")
    size: int = DEFAULT_SIZE
    batchSize: int = DEFAULT_BATCH_SIZE
    learningRate: float = DEFAULT_LEARNING_RATE
    device: str = engineDefault("device")
    gpus: int = 1                        # > 1: one process per GPU through torchrun (DDP)
    seed: int = engineDefault("seed")
    valFraction: float = engineDefault("val_fraction")
    pairMode: str = engineDefault("pair_mode")
    offsets: tuple = ()                  # empty: the engine's default for the modality
    interRepeats: int = engineDefault("inter_repeats")
    initFrom: str = ""                   # fine-tune from this model file
    resume: bool = False                 # continue ``<outputModel>.ckpt``
    overwrite: bool = False              # replace an existing model / earlier checkpoint (asked first)
    stopFile: str = ""                   # the engine stops cleanly when this file appears
    python: str = ""                     # interpreter; empty: the one running Slicer / the tests
    extraArgs: list = field(default_factory=list)

    def copy(self, **changes) -> "TrainingConfig":
        return dataclasses.replace(self, **changes)

    def toDict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def fromDict(cls, values: dict) -> "TrainingConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.offsets = tuple(config.offsets or ())
        return config

    @property
    def checkpointPath(self) -> str:
        """Where the engine keeps its resumable checkpoint: ``<MODEL>.ckpt`` beside the output."""
        return self.outputModel + ".ckpt"

    @property
    def runFile(self) -> str:
        """The run's settings as the engine's JSON (``pairseg train --config``): beside the output."""
        return self.outputModel + ".train.json"

    def engineSettings(self) -> dict:
        """The settings under the engine's names (``pairseg.config.TrainConfig`` fields)."""
        values = {engineName: getattr(self, name) for name, engineName in ENGINE_NAMES.items()}
        if self.steps is not None:
            values["epochs"] = None          # the budget is steps or epochs, never both
        values["offsets"] = list(parseOffsets(self.offsets)) or None
        for name in ("init_from", "stop_file"):
            values[name] = values[name] or None
        return values

    def engineConfig(self):
        """The engine's TrainConfig of these settings, checked by the engine's own rules
        (ranges, choices, exclusive options); ConfigError with the engine's message otherwise."""
        schema = engineSchema()
        try:
            return schema.TrainConfig.from_dict(self.engineSettings(), source="training settings")
        except ValueError as error:   # the engine's PairSegInputError
            raise ConfigError(str(error)) from error

    @classmethod
    def fromEngineConfig(cls, engineConfig, **slicerOnly) -> "TrainingConfig":
        """The TrainingConfig of an engine TrainConfig (e.g. read from a run file)."""
        values = {name: getattr(engineConfig, engineName) for name, engineName in ENGINE_NAMES.items()}
        values["offsets"] = tuple(values["offsets"] or ())
        values["initFrom"] = values["initFrom"] or ""
        values["stopFile"] = values["stopFile"] or ""
        values.update(slicerOnly)
        return cls(**values)

    @classmethod
    def fromRunFile(cls, runFile, **slicerOnly) -> "TrainingConfig":
        """The TrainingConfig of a run file (``<model>.train.json``, written by ``commandLine()``
        of an earlier run, in this session or an earlier one). ConfigError naming the file."""
        try:
            return cls.fromEngineConfig(engineSchema().TrainConfig.read(runFile), **slicerOnly)
        except (OSError, ValueError) as error:
            raise ConfigError(str(error)) from error

    def outputConflict(self) -> dict:
        """What a fresh run (no ``resume``, no ``overwrite``) would replace: ``{"model": bool,
        "checkpoint": bool, "resumable": bool}`` (the engine refuses such a run); ``resumable``:
        ``unfinishedRun()``."""
        return {"model": Path(self.outputModel).is_file(), "checkpoint": Path(self.checkpointPath).is_file(),
                "resumable": self.unfinishedRun()}

    def unfinishedRun(self) -> bool:
        """Whether an earlier run of this output model can be resumed: its checkpoint and run file
        are there and the model file is not, or is older than the checkpoint (the engine keeps the
        checkpoint of a finished run too, and writes the model after it)."""
        checkpoint, model = Path(self.checkpointPath), Path(self.outputModel)
        if not (checkpoint.is_file() and Path(self.runFile).is_file()):
            return False
        return not model.is_file() or model.stat().st_mtime_ns < checkpoint.stat().st_mtime_ns

    def validate(self) -> None:
        """Raise ConfigError with a readable message for a setting the engine would refuse."""
        if not self.dataFolder:
            raise ConfigError("no training-set folder given")
        if not (Path(self.dataFolder) / "dataset.json").is_file():
            raise ConfigError(f"{self.dataFolder}: no dataset.json (export the training set first)")
        if not self.outputModel:
            raise ConfigError("no output model file given")
        if int(self.gpus) < 1:
            raise ConfigError(f"number of GPUs must be >= 1, got {self.gpus}")
        self.engineConfig()
        if self.initFrom and not Path(self.initFrom).is_file():
            raise ConfigError(f"fine-tune model {self.initFrom} does not exist")
        if self.resume and not Path(self.checkpointPath).is_file():
            raise ConfigError(f"nothing to resume: {self.checkpointPath} does not exist")

    def engineArguments(self) -> list:
        """The arguments after ``pairseg``: ``train --config <runFile> ... --events json``."""
        return ["train", "--config", self.runFile] + [str(a) for a in self.extraArgs] + ["--events", "json"]

    def commandLine(self) -> list:
        """Write the run file (``engineConfig().write(runFile)``, atomic) and return the command:
        one process, or torchrun with one worker per GPU."""
        self.engineConfig().write(self.runFile)
        python = self.python or engine.pythonExecutable()
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
