"""Training settings of the PairSegTrainer module, with every default in one place.

``TrainingConfig`` is a plain dataclass (no Slicer, no torch): the Widget fills it from the UI, a
script fills it by hand, and ``commandLine()`` turns it into the engine's training command
(``python -m pairseg train ...``, or ``python -m torch.distributed.run --nproc-per-node N -m
pairseg train ...`` for several GPUs): the same code path as headless training.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PairSegLib import engine

# (engine name, label shown in the UI); the first one is the default.
ARCHITECTURES = (
    ("c2fcn", "C2FCN (compact conjugate FCN)"),
    ("cfcn", "CFCN (conjugate FCN)"),
    ("deeplabv3plus", "DeepLabv3+ (single-slice baseline)"),
    ("unet", "U-Net (single-slice baseline)"),
)
ARCHITECTURE_NAMES = tuple(name for name, _ in ARCHITECTURES)
PAIR_MODES = ("intra+inter", "intra", "inter", "identical")
MODALITIES = ("MR", "CT")
DEVICES = ("auto", "cpu", "cuda", "mps")
MODEL_SUFFIX = ".pairseg"

# Paper defaults (Wang et al. 2021): intra-patient offsets per modality, Adam lr 1e-4, 256 px.
DEFAULT_OFFSETS = {"MR": (3, 5, 7), "CT": (5, 9, 13)}
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_SIZE = 256
DEFAULT_BATCH_SIZE = 8
DEFAULT_EPOCHS = 50
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
    steps: Optional[int] = None
    size: int = DEFAULT_SIZE
    batchSize: int = DEFAULT_BATCH_SIZE
    learningRate: float = DEFAULT_LEARNING_RATE
    device: str = "auto"
    gpus: int = 1                        # > 1: one process per GPU through torchrun (DDP)
    seed: int = 0
    valFraction: float = 0.2
    pairMode: str = PAIR_MODES[0]
    offsets: tuple = ()                  # empty: the engine's default for the modality
    interRepeats: int = 2
    initFrom: str = ""                   # fine-tune from this model file
    resume: bool = False                 # continue ``<outputModel>.ckpt``
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

    def validate(self) -> None:
        """Raise ConfigError with a readable message for a setting the engine would refuse."""
        if not self.dataFolder:
            raise ConfigError("no training-set folder given")
        if not (Path(self.dataFolder) / "dataset.json").is_file():
            raise ConfigError(f"{self.dataFolder}: no dataset.json (export the training set first)")
        if not self.outputModel:
            raise ConfigError("no output model file given")
        if self.arch not in ARCHITECTURE_NAMES:
            raise ConfigError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURE_NAMES)}")
        if self.steps is None and self.epochs is None:
            raise ConfigError("give a number of epochs or of steps")
        for name in ("steps", "epochs"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if int(self.size) < 32 or int(self.size) % 8:
            raise ConfigError(f"input size must be a multiple of 8 and >= 32, got {self.size}")
        if int(self.batchSize) < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batchSize}")
        if not float(self.learningRate) > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.learningRate}")
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", self.device):
            raise ConfigError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)} or cuda:N")
        if int(self.gpus) < 1:
            raise ConfigError(f"number of GPUs must be >= 1, got {self.gpus}")
        if not 0.0 <= float(self.valFraction) < 1.0:
            raise ConfigError(f"validation fraction must be in [0, 1), got {self.valFraction}")
        if self.pairMode not in PAIR_MODES:
            raise ConfigError(f"unknown pair mode {self.pairMode!r}; choose one of {', '.join(PAIR_MODES)}")
        parseOffsets(self.offsets)
        if int(self.interRepeats) < 1:
            raise ConfigError(f"inter-patient repeats must be >= 1, got {self.interRepeats}")
        if self.initFrom and not Path(self.initFrom).is_file():
            raise ConfigError(f"fine-tune model {self.initFrom} does not exist")
        if self.resume and not Path(self.checkpointPath).is_file():
            raise ConfigError(f"nothing to resume: {self.checkpointPath} does not exist")

    def engineArguments(self) -> list:
        """The arguments after ``pairseg`` (``train --data ... --events json``)."""
        args = ["train", "--data", str(self.dataFolder), "--out", str(self.outputModel),
                "--arch", self.arch]
        if self.steps is not None:
            args += ["--steps", str(int(self.steps))]
        else:
            args += ["--epochs", str(int(self.epochs))]
        args += ["--size", str(int(self.size)), "--batch-size", str(int(self.batchSize)),
                 "--lr", repr(float(self.learningRate)), "--device", self.device,
                 "--seed", str(int(self.seed)), "--val-fraction", repr(float(self.valFraction)),
                 "--pair-mode", self.pairMode, "--inter-repeats", str(int(self.interRepeats))]
        offsets = parseOffsets(self.offsets)
        if offsets:
            args += ["--offsets", ",".join(str(o) for o in offsets)]
        if self.initFrom:
            args += ["--init-from", str(self.initFrom)]
        if self.resume:
            args.append("--resume")
        if self.stopFile:
            args += ["--stop-file", str(self.stopFile)]
        args += [str(a) for a in self.extraArgs]
        args += ["--events", "json"]
        return args

    def commandLine(self) -> list:
        """The full command: one process, or torchrun with one worker per GPU."""
        python = self.python or engine.pythonExecutable()
        if int(self.gpus) > 1:
            # ``python -m torch.distributed.run`` is torchrun; it needs no script on PATH.
            return [python, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(int(self.gpus)), "-m", "pairseg"] + self.engineArguments()
        return engine.engineCommand(*self.engineArguments(), python=python)


def versionedModelPath(modelPath: str) -> str:
    """``liver.pairseg`` -> ``liver_v2.pairseg``; ``liver_v2.pairseg`` -> ``liver_v3.pairseg``
    (skipping names that already exist)."""
    path = Path(modelPath)
    stem = path.name[: -len(MODEL_SUFFIX)] if path.name.endswith(MODEL_SUFFIX) else path.stem
    base, version = stem, 1
    head, sep, tail = stem.rpartition("_v")
    if sep and tail.isdigit() and head:
        base, version = head, int(tail)
    while True:
        version += 1
        candidate = path.with_name(f"{base}_v{version}{MODEL_SUFFIX}")
        if not candidate.exists():
            return str(candidate)
