"""PairSeg networks: single-image baselines and the pairwise wrappers of Wang et al. (MedIA 2021).

``build_model(arch, num_classes, in_channels=3, **options)`` builds any architecture of the table
(:data:`pairseg.architectures.ARCHITECTURE_TABLE`, which holds their options and defaults):

- ``deeplabv3plus``: DeepLabv3+ on a dilated ResNet-18 (options: ``output_stride`` 8 or 16),
- ``unet``: U-Net with batch normalisation (options: ``width``, the first level's channels),
- ``c2fcn``: compact conjugate FCN (options: ``base``, ``aggregate`` "sum" or "max", ``readout``
  "union" (AND or XOR of f(x, x), default) or "and" (the AND channels alone, paper Eq. 12)),
- ``cfcn``: conjugate FCN with its fusion net (options: ``base``),
- ``siamfcn``: Siamese FCN ablation (options: ``base``).

A pairwise architecture wraps the encoder and decoder of its ``base`` (one of the encoder-decoders,
:data:`ENCODER_DECODERS`, default ``deeplabv3plus``) and also accepts that base's options. Every model carries ``arch``,
``num_classes``, ``in_channels``, ``options`` (all options, defaults filled in) and
``training_form``, so ``build_model(m.arch, m.num_classes, m.in_channels, **m.options)`` rebuilds
it. To add an encoder-decoder network, add its row to the table and write a
``*_parts(in_channels, **options)`` function returning ``(encoder, decoder)``, registered in
:data:`ENCODER_DECODERS`; a pairwise form: a row and a wrapper class in :data:`PAIRWISE_WRAPPERS`.
"""

from __future__ import annotations

from typing import Any, Callable

from ..architectures import architecture
from ..constants import ARCHITECTURES, BASES
from .base import (Decoder, Encoder, EncoderDecoder, ModelSpec, PairSegModel,
                   SegmentationHead)
from .deeplab import deeplabv3plus_parts
from .pairwise import C2FCN, CFCN, SiamFCN
from .unet import unet_parts

__all__ = [
    "C2FCN",
    "CFCN",
    "Decoder",
    "ENCODER_DECODERS",
    "Encoder",
    "EncoderDecoder",
    "PAIRWISE_WRAPPERS",
    "PairSegModel",
    "SegmentationHead",
    "SiamFCN",
    "build_model",
]

Parts = Callable[..., tuple[Encoder, Decoder]]

# The builders, one per row of the architecture table (pairseg.architectures, which holds each
# architecture's options and defaults): an encoder-decoder's parts factory (a "single" row, also
# a ``base`` of the pairwise ones) or a pairwise wrapper class.
ENCODER_DECODERS: dict[str, Parts] = {"deeplabv3plus": deeplabv3plus_parts, "unet": unet_parts}
PAIRWISE_WRAPPERS: dict[str, type[PairSegModel]] = {"c2fcn": C2FCN, "cfcn": CFCN, "siamfcn": SiamFCN}


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def build_model(arch: str, num_classes: int, in_channels: int = 3,
                **options: Any) -> PairSegModel:
    """Build a randomly initialised network.

    Args:
        arch: one of ``pairseg.constants.ARCHITECTURES`` (the table's names).
        num_classes: K, the number of foreground classes (background excluded).
        in_channels: input channels (3 for 2.5D stacks of adjacent slices).
        **options: the architecture's options (``pairseg.architectures.default_options``);
            pairwise architectures also take the options of their ``base``.

    Raises:
        ValueError: unknown architecture, unknown or inapplicable option, or invalid value.
    """
    row = architecture(arch)
    if row is None or arch not in {**ENCODER_DECODERS, **PAIRWISE_WRAPPERS}:
        raise ValueError(f"unknown architecture {arch!r}; "
                         f"expected one of {', '.join(ARCHITECTURES)}")
    _check_count("num_classes", num_classes)
    _check_count("in_channels", in_channels)
    own = dict(row.options)
    base = options.get("base", own["base"]) if row.pairwise else arch
    if base not in ENCODER_DECODERS:
        raise ValueError(f"unknown base {base!r} for {arch}; expected one of {', '.join(BASES)}")
    parts, base_defaults = ENCODER_DECODERS[base], dict(architecture(base).options)
    resolved = {**own, **base_defaults}
    unknown = sorted(set(options) - set(resolved))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for {arch}"
                         f"{'' if arch == base else f' with base {base!r}'}; "
                         f"valid options: {', '.join(sorted(resolved))}")
    resolved.update(options)
    spec = ModelSpec(arch, num_classes, in_channels, resolved)
    encoder, decoder = parts(in_channels, **{key: resolved[key] for key in base_defaults})
    if not row.pairwise:
        return EncoderDecoder(spec, encoder, decoder)
    wrapper_options = {key: resolved[key] for key in own if key != "base"}
    return PAIRWISE_WRAPPERS[arch](spec, encoder, decoder, **wrapper_options)
