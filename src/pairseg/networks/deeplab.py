"""DeepLabv3+ (Chen et al., ECCV 2018) on a dilated ResNet-18: the paper's baseline and the
network that CFCN, C2FCN and SiamFCN are built on.

Standard (not depthwise-separable) convolutions, as in the common PyTorch implementations of
DeepLabv3+ with a ResNet backbone; with this decoder the paper's parameter budget (C2FCN 16.60 M,
< 0.01 M above the baseline) is met.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ConvBNReLU, Decoder
from .resnet import ResNet18Encoder


class ImagePooling(nn.Module):
    """ASPP image-level branch: global average pooling, 1x1 convolution, broadcast back.

    The convolution has a bias and no batch normalisation, so that training works with a batch
    of one image (batch statistics of a 1x1 map are undefined)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return pooled.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches and image
    pooling, concatenated and projected to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int],
                 dropout: float = 0.5) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [ConvBNReLU(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            ConvBNReLU(len(branches) * out_channels, out_channels, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3PlusDecoder(Decoder):
    """ASPP on the deepest features, upsampled to the low-level (stride-4) features reduced to
    48 channels, concatenated, then two 3x3 convolutions. Output: 256 channels at stride 4."""

    def __init__(self, encoder_channels: Sequence[int], output_stride: int = 8,
                 low_level: int = 1, channels: int = 256, low_level_channels: int = 48) -> None:
        super().__init__()
        self.in_levels = (low_level, len(encoder_channels) - 1)
        self.out_channels = channels
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        self.aspp = ASPP(encoder_channels[-1], channels, rates)
        self.reduce = ConvBNReLU(encoder_channels[low_level], low_level_channels, 1)
        self.fuse = nn.Sequential(
            ConvBNReLU(channels + low_level_channels, channels, 3),
            ConvBNReLU(channels, channels, 3),
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        low, deep = features
        low = self.reduce(low)
        deep = F.interpolate(self.aspp(deep), size=low.shape[-2:], mode="bilinear",
                             align_corners=False)
        return self.fuse(torch.cat([deep, low], dim=1))


def deeplabv3plus_parts(in_channels: int = 3, output_stride: int = 8
                        ) -> tuple[ResNet18Encoder, DeepLabV3PlusDecoder]:
    """Encoder and decoder of DeepLabv3+ with a ResNet-18 backbone."""
    encoder = ResNet18Encoder(in_channels, output_stride)
    return encoder, DeepLabV3PlusDecoder(encoder.out_channels, output_stride)
