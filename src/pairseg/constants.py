"""Names and constants shared by the engine, the command line and the Slicer modules.

Torch-free and numpy-free on purpose: the Slicer modules import this module (through
``pairseg.config``) to fill their menus and check their settings without loading PyTorch.
Every other module takes these facts from here instead of writing its own copy.
"""

from __future__ import annotations

import re

from pairseg.architectures import ARCHITECTURE_TABLE

__all__ = [
    "ARCHITECTURES", "ARCHITECTURE_LABELS", "PAIRWISE_ARCHITECTURES", "DEFAULT_ARCHITECTURE", "BASES",
    "PAIR_MODES", "MODALITIES", "DEFAULT_OFFSETS", "DEVICES", "DEVICE_PATTERN", "is_device_name", "PRECISIONS", "INFERENCE_PRECISIONS", "FILL_METHODS", "DEFAULT_FILL_METHOD",
    "TRAIN_PRECISIONS", "LR_SCHEDULES",
    "READABLE_IMAGE_SUFFIXES", "WRITABLE_IMAGE_SUFFIXES", "LABEL_SUFFIXES", "MODEL_SUFFIX", "MODEL_FORMAT",
    "CHECKPOINT_SUFFIX", "DEFAULT_EPOCHS", "NAMED_COLORS", "PALETTE", "class_key", "default_colors",
    "same_class_names",
]

# Network architectures, read from the one table (pairseg.architectures), in the order the command
# line and the Trainer list them (first: default); the labels are what a GUI shows for each.
ARCHITECTURES = tuple(row.name for row in ARCHITECTURE_TABLE)
ARCHITECTURE_LABELS = {row.name: row.label for row in ARCHITECTURE_TABLE}
DEFAULT_ARCHITECTURE = ARCHITECTURES[0]
PAIRWISE_ARCHITECTURES = tuple(row.name for row in ARCHITECTURE_TABLE if row.pairwise)
BASES = tuple(row.name for row in ARCHITECTURE_TABLE if not row.pairwise)  # what a pairwise one can wrap

# Pair sampling (pairseg.pairs); the first mode is the default.
PAIR_MODES = ("intra+inter", "intra", "inter", "identical")
MODALITIES = ("MR", "CT")
# Intra-patient slice offsets of the paper: CHAOS (MR) and LiTS (CT).
DEFAULT_OFFSETS = {"MR": (3, 5, 7), "CT": (5, 9, 13)}

# Devices: these names, or "cuda:N" for one GPU of several.
DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"

# Floating-point precisions. PRECISIONS are the two a network runs in. Inference also takes "auto"
# (its default): bf16 where the device runs bfloat16 natively (devices.bf16_supported), else fp32;
# training also takes "auto" (its default): CUDA mixed precision, elsewhere as inference's auto.
PRECISIONS = ("fp32", "bf16")
INFERENCE_PRECISIONS = ("auto",) + PRECISIONS
TRAIN_PRECISIONS = ("auto",) + PRECISIONS

# `pairseg fill` methods (pairseg.fill); the first is the default: it measured best within the CPU
# budget (benchmarks/RESULTS.md, section 5).
FILL_METHODS = ("mci", "fusion", "pairwise")
DEFAULT_FILL_METHOD = FILL_METHODS[0]

# Learning-rate schedules of a training run (pairseg.train.learning_rate); the first is the default.
LR_SCHEDULES = ("constant", "poly", "cosine")

# Files: images the engine reads as volumes (plus DICOM folders); images it writes (probability
# and uncertainty maps, volumes: a one-file format each, so that the write is atomic, hence no
# ".mhd", whose voxels go to a second file); label files it reads and writes.
READABLE_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
WRITABLE_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
MODEL_SUFFIX = ".pairseg"
MODEL_FORMAT = "pairseg-model"
CHECKPOINT_SUFFIX = ".ckpt"  # a run's resumable checkpoint: <model file> + this suffix

# The training budget when neither epochs nor steps is given.
DEFAULT_EPOCHS = 20

#: Colours (RGB 0..1) of common abdominal structures, close to 3D Slicer's anatomy colours, by
#: ``class_key`` of the class name (the engine's label files and the Slicer sample data use them).
NAMED_COLORS = {
    "liver": (0.867, 0.510, 0.396),
    "right kidney": (0.725, 0.400, 0.325),
    "left kidney": (0.580, 0.290, 0.220),
    "kidney": (0.725, 0.400, 0.325),
    "spleen": (0.616, 0.424, 0.635),
    "pancreas": (0.976, 0.706, 0.435),
    "tumor": (0.902, 0.863, 0.275),
    "tumour": (0.902, 0.863, 0.275),
}
#: Colours of the classes ``NAMED_COLORS`` does not know, by class position (cycled).
PALETTE = (
    (0.502, 0.682, 0.502),
    (0.945, 0.839, 0.569),
    (0.694, 0.478, 0.396),
    (0.435, 0.722, 0.824),
    (0.847, 0.396, 0.310),
    (0.867, 0.510, 0.396),
    (0.565, 0.933, 0.565),
    (0.753, 0.408, 0.690),
)


def is_device_name(name: str) -> bool:
    """Whether ``name`` is a device the engine understands (``DEVICES`` or ``cuda:N``)."""
    return isinstance(name, str) and re.match(DEVICE_PATTERN, name.lower()) is not None


def class_key(name: str) -> str:
    """The one rule for "the same class": case, surrounding space and the separators ``_``, ``-``
    and runs of white space do not matter (``Right_Kidney`` == ``right kidney`` == ``right-kidney``).

    Raises:
        TypeError: ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"class name must be a string, got {type(name).__name__}")
    return " ".join(re.split(r"[\s_\-]+", name.strip().lower())).strip()


def default_colors(class_names) -> list:
    """One RGB (0..1) colour per class: ``NAMED_COLORS`` for known organ names (``class_key``
    rule: ``Right_Kidney`` is ``right kidney``), else ``PALETTE`` by the class's position."""
    return [NAMED_COLORS.get(class_key(str(name)), PALETTE[i % len(PALETTE)])
            for i, name in enumerate(class_names)]


def same_class_names(first, second) -> bool:
    """Whether two class lists name the same classes in the same order (``class_key`` rule)."""
    return [class_key(n) for n in first] == [class_key(n) for n in second]
