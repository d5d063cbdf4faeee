"""Building blocks shared by every PairSeg network.

A segmentation network is split, as in segmentation_models.pytorch, into

- an :class:`Encoder` that maps an image batch to a list of feature maps (one per level),
- a :class:`Decoder` that reads some of those levels (``in_levels``) and returns one feature map,
- a :class:`SegmentationHead` (the last convolution) that maps that feature map to logits.

The single-image baselines (:class:`EncoderDecoder`) and the pairwise wrappers of
:mod:`pairseg.networks.pairwise` (CFCN, C2FCN, SiamFCN) are all assembled from such an
(encoder, decoder) pair, which is how the paper's claim that "any off-the-shelf segmentation
network" can be made pairwise is realised here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ModelSpec:
    """What :func:`pairseg.networks.build_model` needs to rebuild a model."""

    arch: str
    num_classes: int
    in_channels: int
    options: dict[str, Any] = field(default_factory=dict)


class Encoder(nn.Module):
    """Feature extractor: ``forward(x)`` returns one feature map per level, shallow to deep.

    Subclasses set ``out_channels`` (channels of each level) and ``size_divisor`` (input height and
    width are zero-padded to a multiple of it before encoding; 1 when any size works).
    """

    out_channels: tuple[int, ...]
    size_divisor: int = 1


class Decoder(nn.Module):
    """Decoder: ``forward(features)`` reads the encoder levels listed in ``in_levels`` (in that
    order) and returns one feature map with ``out_channels`` channels, the input of the last
    (classifier) convolution."""

    in_levels: tuple[int, ...]
    out_channels: int


class ConvBNReLU(nn.Sequential):
    """Convolution without bias, batch normalisation, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, dilation: int = 1) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SegmentationHead(nn.Conv2d):
    """The network's last layer: a 1x1 convolution from decoder features to per-pixel logits
    (K+1 classes for a segmentation output, P proxy channels for C2FCN)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)


def initialize_weights(module: nn.Module) -> None:
    """He (fan-out) initialisation of convolutions, unit/zero batch-norm affine parameters."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def pad_to_multiple(x: Tensor, divisor: int) -> Tensor:
    """Zero-pad the bottom and right of ``x`` so that height and width are multiples of
    ``divisor``."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % divisor, -width % divisor
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


def fit_to_size(y: Tensor, padded_size: Sequence[int], size: Sequence[int]) -> Tensor:
    """Bring a prediction back to the input grid: bilinear upsampling to the (padded) input size
    when the decoder works at a coarser stride, then cropping of the padding."""
    if tuple(y.shape[-2:]) != tuple(padded_size):
        y = F.interpolate(y, size=tuple(padded_size), mode="bilinear", align_corners=False)
    return y[..., : size[0], : size[1]]


def foreground_probabilities(logits: Tensor) -> Tensor:
    """Per-class foreground probabilities ``(N, K, H, W)`` from segmentation logits
    ``(N, K+1, H, W)``: softmax over the K+1 classes, background dropped."""
    return torch.softmax(logits, dim=1)[:, 1:]


class PairSegModel(nn.Module):
    """Base of every PairSeg network: carries the description needed to rebuild it.

    Attributes:
        arch: architecture name (a row of :data:`pairseg.architectures.ARCHITECTURE_TABLE`).
        num_classes: K, the number of foreground classes.
        in_channels: input channels (3 for 2.5D stacks).
        options: architecture options; ``build_model(arch, num_classes, in_channels, **options)``
            rebuilds the same architecture.
        training_form: ``"single"``, ``"proxy"``, ``"conjugate"`` or ``"siamese"``; selects the
            training criterion (:func:`pairseg.losses.criterion_for`).
    """

    training_form: str

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.arch = spec.arch
        self.num_classes = spec.num_classes
        self.in_channels = spec.in_channels
        self.options = dict(spec.options)

    def predict_proba(self, x: Tensor) -> Tensor:
        """Per-class foreground probabilities ``(N, K, H, W)`` for one image batch."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, options={self.options}"


class EncoderDecoderCore(PairSegModel):
    """An encoder, a decoder and a last convolution, with the size handling shared by the
    single-image baselines and the pairwise wrappers built on them."""

    def __init__(self, spec: ModelSpec, encoder: Encoder, decoder: Decoder,
                 head_channels: int) -> None:
        super().__init__(spec)
        self.encoder = encoder
        self.decoder = decoder
        self.head = SegmentationHead(decoder.out_channels, head_channels)

    def encode(self, x: Tensor) -> list[Tensor]:
        """Pad ``x`` as the encoder needs and return the levels the decoder consumes."""
        features = self.encoder(pad_to_multiple(x, self.encoder.size_divisor))
        return [features[level] for level in self.decoder.in_levels]

    def padded_size(self, x: Tensor) -> tuple[int, int]:
        """Spatial size of ``x`` after :meth:`encode`'s padding."""
        divisor = self.encoder.size_divisor
        height, width = x.shape[-2:]
        return height + (-height % divisor), width + (-width % divisor)

    def to_input_grid(self, y: Tensor, x: Tensor) -> Tensor:
        """Resize / crop a map computed from (padded) ``x`` back to ``x``'s size."""
        return fit_to_size(y, self.padded_size(x), x.shape[-2:])


class EncoderDecoder(EncoderDecoderCore):
    """Single-image segmentation baseline (DeepLabv3+, U-Net): ``forward(x)`` returns logits
    ``(N, K+1, H, W)``."""

    training_form = "single"

    def __init__(self, spec: ModelSpec, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__(spec, encoder, decoder, spec.num_classes + 1)
        initialize_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.to_input_grid(self.head(self.decoder(self.encode(x))), x)

    def predict_proba(self, x: Tensor) -> Tensor:
        return foreground_probabilities(self(x))
