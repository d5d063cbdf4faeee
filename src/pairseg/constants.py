"""Names and constants shared by the engine, the command line and the Slicer modules.

Torch-free and numpy-free on purpose: the Slicer modules import this module (through
``pairseg.config``) to fill their menus and check their settings without loading PyTorch.
Every other module takes these facts from here instead of writing its own copy.
"""

from __future__ import annotations

import re

__all__ = [
    "ARCHITECTURES", "PAIRWISE_ARCHITECTURES", "DEFAULT_ARCHITECTURE", "BASES", "PAIR_MODES", "MODALITIES",
    "DEFAULT_OFFSETS", "DEVICES", "DEVICE_PATTERN", "is_device_name", "PRECISIONS", "TRAIN_PRECISIONS",
    "LR_SCHEDULES",
    "READABLE_IMAGE_SUFFIXES", "LABEL_SUFFIXES", "MODEL_SUFFIX", "MODEL_FORMAT", "CHECKPOINT_SUFFIX",
    "DEFAULT_EPOCHS", "class_key", "same_class_names",
]

# Network architectures, in the order the command line and the Trainer list them (first: default).
ARCHITECTURES = ("c2fcn", "cfcn", "deeplabv3plus", "unet", "siamfcn")
DEFAULT_ARCHITECTURE = ARCHITECTURES[0]
PAIRWISE_ARCHITECTURES = ("c2fcn", "cfcn", "siamfcn")
BASES = ("deeplabv3plus", "unet")  # encoder-decoders a pairwise architecture can wrap

# Pair sampling (pairseg.pairs); the first mode is the default.
PAIR_MODES = ("intra+inter", "intra", "inter", "identical")
MODALITIES = ("MR", "CT")
# Intra-patient slice offsets of the paper: CHAOS (MR) and LiTS (CT).
DEFAULT_OFFSETS = {"MR": (3, 5, 7), "CT": (5, 9, 13)}

# Devices: these names, or "cuda:N" for one GPU of several.
DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"

# Floating-point precisions: inference takes PRECISIONS, training also "auto" (CUDA: mixed precision).
PRECISIONS = ("fp32", "bf16")
TRAIN_PRECISIONS = ("auto",) + PRECISIONS

# Learning-rate schedules of a training run (pairseg.train.learning_rate); the first is the default.
LR_SCHEDULES = ("constant", "poly", "cosine")

# Files: images the engine reads as volumes (plus DICOM folders), label files it reads and writes.
READABLE_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
MODEL_SUFFIX = ".pairseg"
MODEL_FORMAT = "pairseg-model"
CHECKPOINT_SUFFIX = ".ckpt"  # a run's resumable checkpoint: <model file> + this suffix

# The training budget when neither epochs nor steps is given.
DEFAULT_EPOCHS = 20


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


def same_class_names(first, second) -> bool:
    """Whether two class lists name the same classes in the same order (``class_key`` rule)."""
    return [class_key(n) for n in first] == [class_key(n) for n in second]
