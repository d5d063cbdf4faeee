"""Dilated ResNet-18 encoder (the paper's DeepLabv3+ backbone).

He et al., "Deep residual learning for image recognition" (CVPR 2016), with the strides of the
last stages replaced by dilation (Chen et al., DeepLabv3+) so that the deepest features keep an
output stride of 8 (the paper's C2FCN setting) or 16. The classification layers are dropped.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import Encoder


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch normalisation and an identity (or 1x1 projection)
    shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 dilation: int = 1, first_dilation: int | None = None) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride,
                               padding=first_dilation, dilation=first_dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class ResNet18Encoder(Encoder):
    """ResNet-18 feature extractor returning five levels.

    Levels (stride for output stride 8 / 16): 0 stem (2), 1 first residual stage "layer1" (4,
    the low-level features of DeepLabv3+ and of CFCN's fusion net), 2 layer2 (8), 3 layer3
    (8 / 16), 4 layer4 (8 / 16, the ASPP input).
    """

    out_channels = (64, 64, 128, 256, 512)

    def __init__(self, in_channels: int = 3, output_stride: int = 8) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        # (channels, stride, dilation) of layer1..layer4; a stride beyond the output stride
        # becomes dilation.
        plan = [(64, 1, 1), (128, 2, 1)]
        plan += [(256, 2, 1), (512, 1, 2)] if output_stride == 16 else [(256, 1, 2), (512, 1, 4)]
        stages = []
        channels, previous_dilation = 64, 1
        for width, stride, dilation in plan:
            stages.append(nn.Sequential(
                BasicBlock(channels, width, stride, dilation, first_dilation=previous_dilation),
                BasicBlock(width, width, 1, dilation),
            ))
            channels, previous_dilation = width, dilation
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def forward(self, x: Tensor) -> list[Tensor]:
        stem = self.stem(x)
        c1 = self.layer1(self.pool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [stem, c1, c2, c3, self.layer4(c3)]
