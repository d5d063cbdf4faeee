"""U-Net (Ronneberger et al., MICCAI 2015) with batch normalisation: a paper baseline.

Four 2x2 max-pool downsamplings, channel widths ``width * (1, 2, 4, 8, 16)``; the decoder
upsamples with 2x2 transposed convolutions and concatenates the encoder level of the same
resolution. Inputs of any size are zero-padded to a multiple of 16 and the output cropped back.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .base import ConvBNReLU, Decoder, Encoder


class DoubleConv(nn.Sequential):
    """Two 3x3 convolution + batch normalisation + ReLU layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNReLU(in_channels, out_channels),
                         ConvBNReLU(out_channels, out_channels))


class UNetEncoder(Encoder):
    """Contracting path; returns the five levels (strides 1, 2, 4, 8, 16)."""

    size_divisor = 16

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        if not (isinstance(width, int) and width > 0):
            raise ValueError(f"width must be a positive integer, got {width!r}")
        self.out_channels = tuple(width * 2**level for level in range(5))
        self.stages = nn.ModuleList([DoubleConv(in_channels, width)])
        for level in range(1, 5):
            self.stages.append(nn.Sequential(
                nn.MaxPool2d(2),
                DoubleConv(self.out_channels[level - 1], self.out_channels[level]),
            ))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class UpStage(nn.Module):
    """Expanding-path step: 2x upsampling halving the channels, concatenation with the skip
    features, two convolutions."""

    def __init__(self, in_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, skip_channels, 2, stride=2)
        self.conv = DoubleConv(2 * skip_channels, skip_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNetDecoder(Decoder):
    """Expanding path over all five encoder levels; output at full (padded) resolution."""

    def __init__(self, encoder_channels: Sequence[int]) -> None:
        super().__init__()
        self.in_levels = tuple(range(len(encoder_channels)))
        self.out_channels = encoder_channels[0]
        deep_to_shallow = list(reversed(encoder_channels))
        self.stages = nn.ModuleList(
            UpStage(deep, skip) for deep, skip in zip(deep_to_shallow, deep_to_shallow[1:])
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[-1]
        for stage, skip in zip(self.stages, reversed(features[:-1])):
            x = stage(x, skip)
        return x


def unet_parts(in_channels: int = 3, width: int = 64) -> tuple[UNetEncoder, UNetDecoder]:
    """Encoder and decoder of a U-Net with base width ``width``."""
    encoder = UNetEncoder(in_channels, width)
    return encoder, UNetDecoder(encoder.out_channels)
