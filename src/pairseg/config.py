"""The training settings: one definition, read by the engine, the command line and the Slicer Trainer.

``TrainConfig`` (with its nested ``AugmentConfig``) is the only place where a training setting,
its default, its range and its help text are written. Each dataclass field carries its
description in ``field(metadata=...)`` (keys below); everything else is generated from it:

- ``pairseg train``'s options (``add_arguments`` / ``from_arguments``), with the same flag names
  and help texts as before;
- the JSON file that ``pairseg train --config run.json`` reads and that the Trainer module writes
  (``TrainConfig.to_json`` / ``from_json`` / ``read`` / ``write``);
- the defaults and ranges a GUI shows (``settings()`` / ``setting(name)``).

This module imports neither torch nor numpy: the Slicer side imports it directly.

Field metadata keys (all optional): ``help`` (str), ``flag`` (the CLI option; ``None``: no
option), ``negate`` (bool field set to False by its flag, e.g. ``--no-amp``), ``also`` (other
fields of the same dataclass the flag sets to the same value), ``choices`` (tuple), ``minimum`` /
``maximum`` / ``exclusive_minimum`` / ``exclusive_maximum`` (numbers; for a list, bounds of each
item), ``pattern`` (regular expression a string must match), ``group`` (CLI help section),
``exclusive`` (name of a set of fields of which at most one may be given), ``required`` (a
non-empty value must be given), ``fallback`` (what an unset optional field means, e.g. 20 epochs),
``parse`` (how the CLI reads the text: ``"int_list"``, ``"str_list"`` or ``"upper"``).
"""

# No ``from __future__ import annotations`` here: ``settings()`` reads the field types as objects.
import argparse
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from pairseg.constants import (ARCHITECTURES, BASES, DEFAULT_EPOCHS, DEVICE_PATTERN, LR_SCHEDULES, MODALITIES,
                               PAIR_MODES, TRAIN_PRECISIONS)
from pairseg.architectures import architecture
from pairseg.errors import PairSegInputError

__all__ = ["AugmentConfig", "TrainConfig", "Setting", "settings", "setting", "add_arguments", "from_arguments"]

# The architectures whose options are settings of a training run (their defaults and choices:
# the one architecture table, pairseg.architectures).
_C2FCN = architecture("c2fcn")
_DEEPLAB = architecture("deeplabv3plus")


def _meta(help: Optional[str] = None, **keys: Any) -> Dict[str, Any]:
    return {"help": help, **keys}


@dataclass
class AugmentConfig:
    """Ranges of the random training transforms; ``enabled=False`` turns everything off."""

    enabled: bool = field(default=True, metadata=_meta("no augmentation", flag="--no-augment", negate=True,
                                                        group="augmentation"))
    rotation_deg: float = field(default=10.0, metadata=_meta(
        "max rotation in degrees (default 10)", flag="--rotation", minimum=0.0, maximum=180.0, group="augmentation"))
    scale: float = field(default=0.1, metadata=_meta(
        "max relative scaling (default 0.1)", flag="--scale", minimum=0.0, exclusive_maximum=1.0,
        group="augmentation"))
    flip_lr: bool = field(default=False, metadata=_meta(
        "random left-right flips (swaps lateral organs: off by default)", flag="--flip", group="augmentation"))
    flip_ud: bool = field(default=False, metadata=_meta("random up-down flips", flag=None))
    brightness: float = field(default=0.1, metadata=_meta(
        "brightness/contrast jitter (default 0.1)", flag="--intensity", also=("contrast",), minimum=0.0,
        group="augmentation"))
    contrast: float = field(default=0.1, metadata=_meta("relative contrast jitter", flag=None, minimum=0.0,
                                                         exclusive_maximum=1.0))
    gamma: float = field(default=0.2, metadata=_meta("log-gamma jitter", flag=None, minimum=0.0))
    shift: float = field(default=0.0, metadata=_meta(
        "max random shift of the slice content, as a fraction of the slice size (default 0); the area it "
        "uncovers is background (zeros), as at the edge of a wider field of view", flag="--shift", minimum=0.0,
        maximum=0.5, group="augmentation"))
    invert: float = field(default=0.0, metadata=_meta(
        "probability of inverting an image's normalised intensities (1 - x; default 0): with --remap, contrast "
        "augmentation wide enough for a new modality or sequence (fine-tuning across modalities)",
        flag="--invert", minimum=0.0, maximum=1.0, group="augmentation"))
    remap: float = field(default=0.0, metadata=_meta(
        "probability of a random smooth monotone intensity curve on an image's normalised intensities "
        "(default 0; see --invert)", flag="--remap", minimum=0.0, maximum=1.0, group="augmentation"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig:
    """Everything a training run depends on (``pairseg train``'s options, field by field).

    Build it by keyword, ``from_dict``, ``from_json``, ``read(path)`` or ``from_arguments``; the
    last four check every value (``check()``). ``pairseg.train.train`` checks it again and never
    changes it.
    """

    data: str = field(metadata=_meta("dataset folder", required=True))
    out: str = field(metadata=_meta("model file to write (e.g. liver.pairseg)", required=True))
    arch: Optional[str] = field(default=None, metadata=_meta(
        "architecture (default c2fcn, or the --init-from model's)", choices=ARCHITECTURES))
    epochs: Optional[int] = field(default=None, metadata=_meta(
        f"number of epochs (default {DEFAULT_EPOCHS})", minimum=1, maximum=100_000, exclusive="budget",
        fallback=DEFAULT_EPOCHS))
    steps: Optional[int] = field(default=None, metadata=_meta(
        "number of optimiser steps", minimum=1, maximum=10_000_000, exclusive="budget"))
    size: int = field(default=256, metadata=_meta(
        "training slice size in pixels (default 256)", minimum=32, maximum=4096))
    spacing: Optional[float] = field(default=None, metadata=_meta(
        "in-plane pixel spacing of the model in mm (default: the training set's median field of view divided by "
        "--size); slices are resampled to it for training and inference", exclusive_minimum=0.0))
    batch_size: int = field(default=8, metadata=_meta(
        "samples (pairs) per step and GPU (default 8)", minimum=1, maximum=4096))
    lr: float = field(default=1e-4, metadata=_meta(
        "Adam learning rate (default 1e-4)", exclusive_minimum=0.0, maximum=1.0))
    weight_decay: float = field(default=5e-4, metadata=_meta("Adam weight decay (default 5e-4)", minimum=0.0))
    lr_schedule: str = field(default="constant", metadata=_meta(
        "learning rate over the run: constant (default), poly (lr x (1 - step/steps)^0.9, as DeepLab and nnU-Net) "
        "or cosine; a function of the step alone, so --resume continues it exactly", choices=LR_SCHEDULES))
    seed: int = field(default=0, metadata=_meta(
        "seed of the initialisation, pair sampling and augmentation (default 0)", minimum=0))
    device: str = field(default="auto", metadata=_meta(
        "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps", pattern=DEVICE_PATTERN))
    val: Optional[str] = field(default=None, metadata=_meta("validation dataset folder", exclusive="validation"))
    val_fraction: float = field(default=0.0, metadata=_meta(
        "hold out this fraction of the cases for validation", minimum=0.0, exclusive_maximum=1.0,
        exclusive="validation"))
    resume: bool = field(default=False, metadata=_meta("continue from <out>.ckpt"))
    overwrite: bool = field(default=False, metadata=_meta("replace an existing model file at --out"))
    init_from: Optional[str] = field(default=None, metadata=_meta("fine-tune from this model file or catalog model name"))
    cross_modality: bool = field(default=False, metadata=_meta(
        "allow --init-from a model of another modality (e.g. an MR model on CT data); the new model records the "
        "dataset's modality and normalisation"))
    classes: Optional[str] = field(default=None, metadata=_meta(
        'class names for a folder without dataset.json, e.g. liver,"right kidney"'))
    modality: Optional[str] = field(default=None, metadata=_meta(
        "modality for a folder without dataset.json", choices=MODALITIES, parse="upper"))
    cases: Optional[List[str]] = field(default=None, metadata=_meta(
        "comma-separated case names to train on (default all)", parse="str_list"))
    pair_mode: str = field(default=PAIR_MODES[0], metadata=_meta(
        "which slice pairs an epoch visits (default intra+inter)", choices=PAIR_MODES, group="pair sampling"))
    offsets: Optional[List[int]] = field(default=None, metadata=_meta(
        "intra-patient slice offsets (default 3,5,7 MR; 5,9,13 CT)", minimum=1, parse="int_list",
        group="pair sampling"))
    inter_repeats: int = field(default=2, metadata=_meta(
        "inter-patient pairs per slice and epoch (default 2)", minimum=1, maximum=1000, group="pair sampling"))
    margin: Optional[int] = field(default=None, metadata=_meta(
        "keep only slices within this many slices of the labelled range", minimum=0, group="pair sampling"))
    sparse: bool = field(default=False, metadata=_meta(
        "partially annotated labels: a slice is annotated for a class only where that class is drawn (without "
        "it a case is taken as partial when it has unlabelled slices between labelled ones, with a message)", group="pair sampling"))
    annotated_slices: Optional[str] = field(default=None, metadata=_meta(
        "fully annotated slices per case (every class absent there is background), e.g. "
        "'case_002:3,7,12;case_005:4,9'; as dataset.json's \"annotated_slices\"", group="pair sampling"))
    output_stride: int = field(default=_DEEPLAB.options["output_stride"], metadata=_meta(
        f"DeepLabv3+ encoder output stride (default {_DEEPLAB.options['output_stride']})",
        choices=_DEEPLAB.choices["output_stride"], group="network"))
    aggregate: str = field(default=_C2FCN.options["aggregate"], metadata=_meta(
        "C2FCN feature aggregation", choices=_C2FCN.choices["aggregate"], group="network"))
    readout: Optional[str] = field(default=None, metadata=_meta(
        "C2FCN read-out of f(x, x): AND or XOR (union; the default) or the AND channels alone (paper Eq. 12; "
        "the default with --pair-mode identical); see benchmarks/RESULTS.md", choices=_C2FCN.choices["readout"],
        group="network"))
    base: str = field(default=BASES[0], metadata=_meta("network a pairwise model wraps", choices=BASES,
                                                        group="network"))
    sync_batchnorm: bool = field(default=False, metadata=_meta("synchronise BatchNorm across GPUs (torchrun)",
                                                               group="network"))
    channels_last: bool = field(default=False, metadata=_meta("channels-last memory format", group="network"))
    amp: bool = field(default=True, metadata=_meta("no mixed precision: --precision auto then trains in fp32",
                                                   flag="--no-amp", negate=True, group="network"))
    precision: str = field(default="auto", metadata=_meta(
        "auto: mixed precision on CUDA, bf16 autocast on a CPU that runs bfloat16 natively (AVX-512 BF16/AMX: "
        "about 2x faster training, same Dice; benchmarks/RESULTS.md), fp32 elsewhere or with --no-amp; bf16: "
        "bfloat16 autocast, refused where the CPU or GPU has no native bfloat16 path; fp32: no autocast",
        choices=TRAIN_PRECISIONS, group="network"))
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata=_meta(
        "training augmentation", group="augmentation"))
    validate_every: int = field(default=1, metadata=_meta("validate every N epochs (default 1)", minimum=1))
    stop_file: Optional[str] = field(default=None, metadata=_meta(
        "stop cleanly (resumable) when this file appears"))

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = _build(AugmentConfig, self.augment, "augment.")
        for name in ("cases", "offsets"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))

    # -- conversions ----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Every setting as plain JSON types (``augment`` as a nested dict)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The JSON text ``from_json`` and ``pairseg train --config`` read back to an equal config."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, values: dict, source: str = "training settings") -> "TrainConfig":
        """A checked config from a dict of settings (missing ones take their defaults).

        Raises:
            PairSegInputError: unknown key, wrong type, value out of range or missing ``data``/``out``;
                the message starts with ``source``.
        """
        if not isinstance(values, dict):
            raise PairSegInputError(f"{source}: expected a JSON object of settings, got {type(values).__name__}")
        config = _build(cls, values, "", source)
        config.check(source)
        return config

    @classmethod
    def from_json(cls, text: str, source: str = "training settings") -> "TrainConfig":
        """``from_dict`` of a JSON text; a text that is not JSON is a ``PairSegInputError`` too."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise PairSegInputError(f"{source}: not valid JSON ({error})") from error
        return cls.from_dict(values, source)

    @classmethod
    def read(cls, path: Union[str, Path]) -> "TrainConfig":
        """The config in a JSON file; errors name the file."""
        return cls.from_json(_read_text(path), str(path))

    def write(self, path: Union[str, Path]) -> Path:
        """Write ``to_json()`` to ``path`` (atomically, :mod:`pairseg.atomic`); returns the path."""
        from pairseg.atomic import write_text

        return write_text(path, self.to_json() + "\n", "training settings")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (this config is left as it is)."""
        return dataclasses.replace(self, augment=dataclasses.replace(self.augment), **changes)

    # -- meaning ----------------------------------------------------------------------------------

    def check(self, source: str = "training settings") -> None:
        """Raise ``PairSegInputError`` for a value of the wrong type, outside its range or
        choices, a missing ``data``/``out``, or two settings that exclude each other."""
        _check(self, "", source)
        _check(self.augment, "augment.", source)
        for group, names in _exclusive_sets().items():
            given = [n for n in names if _is_given(self, n)]
            if len(given) > 1:
                flags = [setting(n).flag or n for n in given]
                if group == "budget":
                    raise PairSegInputError(f"{source}: give either --epochs or --steps, not both")
                raise PairSegInputError(f"{source}: {' and '.join(flags)} exclude each other")

    def budget(self) -> Tuple[Optional[int], Optional[int]]:
        """(epochs, steps) of the run: exactly one is not None (``epochs`` falls back to
        ``DEFAULT_EPOCHS`` when neither is given)."""
        if self.steps is not None:
            return None, self.steps
        return (self.epochs if self.epochs is not None else DEFAULT_EPOCHS), None

    def model_readout(self) -> str:
        """The C2FCN read-out: ``readout`` when given; otherwise "union" (AND or XOR of f(x, x)),
        except for identical pairs, whose XOR channels are never shown a foreground pixel and so
        carry nothing to read ("and")."""
        if self.readout is not None:
            return self.readout
        return "and" if self.pair_mode == "identical" else _C2FCN.options["readout"]

    def model_options(self, arch: str) -> dict:
        """``build_model`` options of a new ``arch`` network from this configuration: each option of
        the architecture (``pairseg.architectures``) and of its base that is a setting here, with
        this configuration's value (``readout``: :meth:`model_readout`); the others keep their
        defaults. ValueError: unknown architecture."""
        row = architecture(arch)
        if row is None:
            raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
        base = architecture(self.base) if row.pairwise else None
        settings = {f.name for f in dataclasses.fields(self)}
        names = [name for name in (*row.options, *(base.options if base else ())) if name in settings]
        return {name: (self.model_readout() if name == "readout" else getattr(self, name)) for name in names}


# ---------------------------------------------------------------------------------------------
# Field descriptions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One training setting as a GUI or a parser needs it.

    ``name`` is the dotted path (``"lr"``, ``"augment.rotation_deg"``); ``kind`` one of ``"bool"``,
    ``"int"``, ``"float"``, ``"str"``, ``"int_list"``, ``"str_list"``; ``optional``: None is allowed
    (the setting is then unset: see ``fallback`` and the help text). Bounds are inclusive
    (``minimum``/``maximum``) or exclusive (``exclusive_*``); for lists they bound each item.
    """

    name: str
    kind: str
    default: Any
    optional: bool
    help: Optional[str]
    flag: Optional[str]
    negate: bool = False
    also: Tuple[str, ...] = ()
    choices: Optional[tuple] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    exclusive_minimum: Optional[float] = None
    exclusive_maximum: Optional[float] = None
    pattern: Optional[str] = None
    group: Optional[str] = None
    exclusive: Optional[str] = None
    required: bool = False
    fallback: Any = None
    parse: Optional[str] = None

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is not acceptable for this setting, or None."""
        if value is None:
            if self.required or not self.optional:
                return "is required" if self.required else "must not be null"
            return None
        items = value if self.kind.endswith("_list") else [value]
        if self.kind.endswith("_list") and not isinstance(value, list):
            return f"must be a list, got {value!r}"
        item_kind = self.kind[: -len("_list")] if self.kind.endswith("_list") else self.kind
        for item in items:
            wrong = _type_problem(item_kind, item)
            if wrong:
                return wrong
            if self.choices is not None and item not in self.choices:
                return f"must be one of {', '.join(str(c) for c in self.choices)}, got {item!r}"
            if self.minimum is not None and item < self.minimum:
                return f"must be at least {self.minimum}, got {item!r}"
            if self.maximum is not None and item > self.maximum:
                return f"must be at most {self.maximum}, got {item!r}"
            if self.exclusive_minimum is not None and item <= self.exclusive_minimum:
                return f"must be greater than {self.exclusive_minimum}, got {item!r}"
            if self.exclusive_maximum is not None and item >= self.exclusive_maximum:
                return f"must be less than {self.exclusive_maximum}, got {item!r}"
            if self.pattern is not None and re.match(self.pattern, item) is None:
                return f"is not valid: {item!r}"
        if self.required and value == "":
            return "is required"
        if self.kind.endswith("_list") and not value:
            return "must not be an empty list (leave it out for the default)"
        return None


_KINDS = {bool: "bool", int: "int", float: "float", str: "str"}


def _type_problem(kind: str, value: Any) -> Optional[str]:
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    return None if ok else f"must be {'a' if kind != 'int' else 'an'} {kind}, got {value!r}"


def _kind(annotation: Any) -> Tuple[str, bool]:
    """("int", optional?) from a field's annotation (``int``, ``Optional[List[int]]``, ...)."""
    args = getattr(annotation, "__args__", None)
    optional = False
    if getattr(annotation, "__origin__", None) is Union:
        inner = [a for a in args if a is not type(None)]
        optional, annotation = True, inner[0]
        args = getattr(annotation, "__args__", None)
    if getattr(annotation, "__origin__", None) in (list, List):
        return _KINDS[args[0]] + "_list", optional
    return _KINDS[annotation], optional


def _settings_of(cls: type, prefix: str) -> List[Setting]:
    found = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type):
            found += _settings_of(f.type, prefix + f.name + ".")
            continue
        kind, optional = _kind(f.type)
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not dataclasses.MISSING else None
        found.append(Setting(name=prefix + f.name, kind=kind, default=default, optional=optional, flag=flag,
                             **meta))
    return found


_SETTINGS: Dict[str, Setting] = {}


def settings() -> Tuple[Setting, ...]:
    """Every training setting, in definition order (nested ones as ``"augment.<field>"``)."""
    if not _SETTINGS:
        _SETTINGS.update((s.name, s) for s in _settings_of(TrainConfig, ""))
    return tuple(_SETTINGS.values())


def setting(name: str) -> Setting:
    """The description of one setting (``"lr"``, ``"augment.scale"``); KeyError if unknown."""
    settings()
    return _SETTINGS[name]


def _exclusive_sets() -> Dict[str, List[str]]:
    sets: Dict[str, List[str]] = {}
    for s in settings():
        if s.exclusive:
            sets.setdefault(s.exclusive, []).append(s.name)
    return sets


def _is_given(config: TrainConfig, name: str) -> bool:
    return _get(config, name) not in (None, setting(name).default)


def _get(config: Any, name: str) -> Any:
    for part in name.split("."):
        config = getattr(config, part)
    return config


def _check(obj: Any, prefix: str, source: str) -> None:
    for f in dataclasses.fields(obj):
        if dataclasses.is_dataclass(f.type):
            if not isinstance(getattr(obj, f.name), f.type):
                raise PairSegInputError(f"{source}: {prefix}{f.name} must be a {f.type.__name__}")
            continue
        spec = setting(prefix + f.name)
        problem = spec.problem(getattr(obj, f.name))
        if problem:
            flag = f" ({spec.flag})" if spec.flag else ""
            raise PairSegInputError(f"{source}: {spec.name}{flag} {problem}")


def _build(cls: type, values: dict, prefix: str, source: str = "training settings") -> Any:
    """``cls(**values)`` for a dataclass, nested dicts included; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise PairSegInputError(f"{source}: unknown setting(s) {', '.join(prefix + k for k in unknown)}; "
                                f"known: {', '.join(prefix + k for k in names)}")
    kwargs = {}
    for key, value in values.items():
        if dataclasses.is_dataclass(names[key].type):
            if not isinstance(value, dict):
                raise PairSegInputError(f"{source}: {prefix}{key} must be a JSON object, got {value!r}")
            value = _build(names[key].type, value, prefix + key + ".", source)
        elif setting(prefix + key).kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        kwargs[key] = value
    missing = [n for n, f in names.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise PairSegInputError(f"{source}: {', '.join(missing)} is required")
    return cls(**kwargs)


def _read_text(path: Union[str, Path]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise PairSegInputError(f"{path}: cannot read the training settings ({error.strerror or error})") from error


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parse_list(item_type: type, text: str) -> list:
    try:
        values = [item_type(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


_PARSERS = {
    "int_list": lambda text: _parse_list(int, text),
    "str_list": lambda text: _parse_list(str, text),
    "upper": str.upper,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per setting that has a flag, plus ``--config FILE``, to ``parser``.

    No option has a default in the namespace (``argparse.SUPPRESS``): only the options given
    appear there, so that ``from_arguments`` lets them override the ``--config`` file.
    """
    parser.add_argument("--config", metavar="FILE",
                        help="training settings as JSON (TrainConfig.to_json; the Trainer module writes one); "
                             "options given here override the file's")
    sections: Dict[Optional[str], Any] = {None: parser}
    exclusive: Dict[Tuple[Optional[str], str], Any] = {}
    for spec in settings():
        if not spec.flag:
            continue
        if spec.group not in sections:
            sections[spec.group] = parser.add_argument_group(spec.group)
        target = sections[spec.group]
        if spec.exclusive:
            key = (spec.group, spec.exclusive)
            if key not in exclusive:
                exclusive[key] = target.add_mutually_exclusive_group()
            target = exclusive[key]
        options: Dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS, "help": spec.help}
        if spec.kind == "bool":
            options["action"] = "store_false" if spec.negate else "store_true"
        else:
            options["type"] = _PARSERS.get(spec.parse or "", {"int": int, "float": float, "str": str}.get(spec.kind))
            options["metavar"] = spec.flag.lstrip("-").upper().replace("-", "_")
            if spec.choices is not None:
                options["choices"] = spec.choices
                del options["metavar"]
        target.add_argument(spec.flag, **options)


def from_arguments(args: argparse.Namespace) -> TrainConfig:
    """The config of parsed ``pairseg train`` arguments: the ``--config`` file's settings (when
    given), overridden by the options given on the command line. An option of an exclusive set
    (``--steps``) clears the file's value of the others (``epochs``).

    Raises:
        PairSegInputError: unreadable or invalid file, a value out of range, or no ``data``/``out``
            in either.
    """
    given = vars(args)
    values: Dict[str, Any] = {}
    source = "command line"
    if given.get("config"):
        source = str(given["config"])
        try:
            values = json.loads(_read_text(source))
        except json.JSONDecodeError as error:
            raise PairSegInputError(f"{source}: not valid JSON ({error})") from error
        if not isinstance(values, dict):
            raise PairSegInputError(f"{source}: expected a JSON object of settings")
        values = json.loads(json.dumps(values))  # a private copy to change
        source += " with the command line's options"
    missing = [setting(n).flag for n in ("data", "out") if n not in given and n not in values]
    if missing:
        raise PairSegInputError(f"{source}: {' and '.join(missing)} required (as options or in --config)")
    exclusive_sets = _exclusive_sets()
    for spec in settings():
        if spec.name not in given:
            continue
        for other in exclusive_sets.get(spec.exclusive or "", []):
            if other != spec.name:
                _set(values, other, setting(other).default)
        _set(values, spec.name, given[spec.name])
        for name in spec.also:
            _set(values, spec.name.rsplit(".", 1)[0] + "." + name if "." in spec.name else name, given[spec.name])
    return TrainConfig.from_dict(values, source)


def _set(values: dict, name: str, value: Any) -> None:
    *parents, last = name.split(".")
    for part in parents:
        values = values.setdefault(part, {})
        if not isinstance(values, dict):
            raise PairSegInputError(f"training settings: {part} must be a JSON object")
    values[last] = value
