"""PairSeg networks: single-image baselines and the pairwise wrappers of Wang et al. (MedIA 2021).

``build_model(arch, num_classes, in_channels=3, **options)`` builds any of :data:`ARCHITECTURES`:

- ``deeplabv3plus``: DeepLabv3+ on a dilated ResNet-18 (options: ``output_stride`` 8 or 16),
- ``unet``: U-Net with batch normalisation (options: ``width``, the first level's channels),
- ``c2fcn``: compact conjugate FCN (options: ``base``, ``aggregate`` "sum" or "max", ``readout``
  "union" (AND or XOR of f(x, x), default) or "and" (the AND channels alone, paper Eq. 12)),
- ``cfcn``: conjugate FCN with its fusion net (options: ``base``),
- ``siamfcn``: Siamese FCN ablation (options: ``base``).

A pairwise architecture wraps the encoder and decoder of its ``base`` (one of :data:`BASES`,
default ``deeplabv3plus``) and also accepts that base's options. Every model carries ``arch``,
``num_classes``, ``in_channels``, ``options`` (all options, defaults filled in) and
``training_form``, so ``build_model(m.arch, m.num_classes, m.in_channels, **m.options)`` rebuilds
it. To add an encoder-decoder network, write a ``*_parts(in_channels, **options)`` function
returning ``(encoder, decoder)`` and register it in :data:`BASES`.
"""

from __future__ import annotations

from typing import Any, Callable

from .base import (Decoder, Encoder, EncoderDecoder, ModelSpec, PairSegModel,
                   SegmentationHead)
from .deeplab import deeplabv3plus_parts
from .pairwise import C2FCN, CFCN, SiamFCN
from .unet import unet_parts

__all__ = [
    "ARCHITECTURES",
    "ARCH_OPTIONS",
    "BASES",
    "C2FCN",
    "CFCN",
    "Decoder",
    "Encoder",
    "EncoderDecoder",
    "PairSegModel",
    "SegmentationHead",
    "SiamFCN",
    "build_model",
]

Parts = Callable[..., tuple[Encoder, Decoder]]

#: Encoder-decoder networks: parts factory and its options with their defaults. Each is also a
#: single-image architecture and a ``base`` for the pairwise wrappers.
BASES: dict[str, tuple[Parts, dict[str, Any]]] = {
    "deeplabv3plus": (deeplabv3plus_parts, {"output_stride": 8}),
    "unet": (unet_parts, {"width": 64}),
}

_WRAPPERS: dict[str, type[PairSegModel]] = {"c2fcn": C2FCN, "cfcn": CFCN, "siamfcn": SiamFCN}

#: Each architecture's own options with their defaults (pairwise ones also take their base's).
ARCH_OPTIONS: dict[str, dict[str, Any]] = {
    **{name: dict(defaults) for name, (_, defaults) in BASES.items()},
    "c2fcn": {"base": "deeplabv3plus", "aggregate": "sum", "readout": "union"},
    "cfcn": {"base": "deeplabv3plus"},
    "siamfcn": {"base": "deeplabv3plus"},
}

ARCHITECTURES: tuple[str, ...] = tuple(ARCH_OPTIONS)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def build_model(arch: str, num_classes: int, in_channels: int = 3,
                **options: Any) -> PairSegModel:
    """Build a randomly initialised network.

    Args:
        arch: one of :data:`ARCHITECTURES`.
        num_classes: K, the number of foreground classes (background excluded).
        in_channels: input channels (3 for 2.5D stacks of adjacent slices).
        **options: see :data:`ARCH_OPTIONS`; pairwise architectures also take the options of
            their ``base`` (:data:`BASES`).

    Raises:
        ValueError: unknown architecture, unknown or inapplicable option, or invalid value.
    """
    if arch not in ARCH_OPTIONS:
        raise ValueError(f"unknown architecture {arch!r}; "
                         f"expected one of {', '.join(ARCHITECTURES)}")
    _check_count("num_classes", num_classes)
    _check_count("in_channels", in_channels)
    own = dict(ARCH_OPTIONS[arch])
    base = options.get("base", own["base"]) if "base" in own else arch
    if base not in BASES:
        raise ValueError(f"unknown base {base!r} for {arch}; expected one of {', '.join(BASES)}")
    parts, base_defaults = BASES[base]
    resolved = {**own, **base_defaults}
    unknown = sorted(set(options) - set(resolved))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for {arch}"
                         f"{'' if arch == base else f' with base {base!r}'}; "
                         f"valid options: {', '.join(sorted(resolved))}")
    resolved.update(options)
    spec = ModelSpec(arch, num_classes, in_channels, resolved)
    encoder, decoder = parts(in_channels, **{key: resolved[key] for key in base_defaults})
    if arch in BASES:
        return EncoderDecoder(spec, encoder, decoder)
    wrapper_options = {key: resolved[key] for key in own if key != "base"}
    return _WRAPPERS[arch](spec, encoder, decoder, **wrapper_options)
