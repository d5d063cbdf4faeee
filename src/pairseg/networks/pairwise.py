"""Pairwise wrappers over any (encoder, decoder) pair (Wang et al., MedIA 2021).

- :class:`C2FCN` (compact conjugate FCN, Sec. 3.2): one shared encoder applied to both slices,
  features aggregated level by level with a permutation-invariant operation, the baseline's own
  decoder, and a last layer widened to the P proxy channels. Inference (Eq. 12) reads the AND
  channel(s) of f(x, x), with the encoder run once.
- :class:`CFCN` (conjugate FCN, Sec. 3.1): two weight-sharing encoder-decoder branches, each
  segmenting its own slice, plus a fusion net fitting the proxy supervision. Inference uses one
  branch.
- :class:`SiamFCN` (ablation, Sec. 4.4): two weight-sharing branches whose decoders also receive
  the other branch's same-level features; no proxy supervision.

Both slices of a pair go through the shared encoder (and decoder) as one batch
``torch.cat([xa, xb])``, which is then split: one pass instead of two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..architectures import architecture
from ..proxy import READOUTS, proxy_channels, proxy_probabilities, segmentation_from_proxy
from .base import (ConvBNReLU, Decoder, Encoder, EncoderDecoderCore, ModelSpec,
                   foreground_probabilities, initialize_weights)

AGGREGATIONS = ("sum", "max")


def _check_pair(xa: Tensor, xb: Tensor) -> None:
    if xa.shape != xb.shape:
        raise ValueError(f"the two inputs of a pair must have the same shape, got "
                         f"{tuple(xa.shape)} and {tuple(xb.shape)}")


class C2FCN(EncoderDecoderCore):
    """Compact conjugate FCN: ``forward(xa, xb)`` returns proxy logits ``(N, P, H, W)``.

    The only parameters added to the baseline are the extra output channels of the last
    convolution (P instead of K+1). ``aggregate`` is the permutation-invariant operation
    applied to the two encodings at every level the decoder consumes: ``"sum"`` (paper) or
    ``"max"``.
    """

    training_form = architecture("c2fcn").training_form  # the architecture table's

    def __init__(self, spec: ModelSpec, encoder: Encoder, decoder: Decoder,
                 aggregate: str = "sum", readout: str = "union") -> None:
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        super().__init__(spec, encoder, decoder, proxy_channels(spec.num_classes))
        self.aggregate = aggregate
        self.readout = readout
        initialize_weights(self)

    def _combine(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b if self.aggregate == "sum" else torch.maximum(a, b)

    def _proxy_logits(self, aggregated: list[Tensor], x: Tensor) -> Tensor:
        return self.to_input_grid(self.head(self.decoder(aggregated)), x)

    def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
        _check_pair(xa, xb)
        pairs = [f.chunk(2) for f in self.encode(torch.cat([xa, xb]))]
        return self._proxy_logits([self._combine(a, b) for a, b in pairs], xa)

    def forward_identical(self, x: Tensor) -> Tensor:
        """Proxy logits of the identical pair f(x, x) with one encoder pass:
        aggregate(e, e) is 2e for the sum and e for the max."""
        return self._proxy_logits([self._combine(f, f) for f in self.encode(x)], x)

    def predict_proba(self, x: Tensor) -> Tensor:
        """Segmentation by reflexivity (Eq. 12) from f(x, x): AND or XOR (``readout="union"``,
        the default) or the AND channel(s) alone (``"and"``); see ``segmentation_from_proxy``."""
        k = self.num_classes
        return segmentation_from_proxy(proxy_probabilities(self.forward_identical(x), k), k, self.readout)


class FusionNet(nn.Module):
    """CFCN fusion net (Sec. 3.1.1, after the channel attention block of Yu et al., 2018).

    Inputs: the element-wise sums over the two branches of the low-level features (first
    residual stage) and of the high-level features (the decoder's last feature map). The
    low-level stream is projected to the high-level width; a squeeze-excitation on the
    concatenated streams gives channel weights applied to it before it is added to the
    high-level stream; a 3x3 convolution maps the result to the P proxy channels.
    """

    def __init__(self, low_channels: int, high_channels: int, out_channels: int,
                 reduction: int = 4) -> None:
        super().__init__()
        self.project = ConvBNReLU(low_channels, high_channels, 1)
        hidden = max(high_channels // reduction, 1)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(2 * high_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, high_channels, 1),
            nn.Sigmoid(),
        )
        self.classifier = nn.Conv2d(high_channels, out_channels, 3, padding=1)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        low = self.project(low)
        if low.shape[-2:] != high.shape[-2:]:
            low = F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=False)
        weights = self.attention(torch.cat([low, high], dim=1))
        return self.classifier(high + weights * low)


class CFCN(EncoderDecoderCore):
    """Conjugate FCN: ``forward(xa, xb)`` returns ``{"seg_a", "seg_b"}`` logits ``(N, K+1, H, W)``
    of the two conjugate branches and ``"proxy"`` logits ``(N, P, H, W)`` of the fusion net.

    The fusion net's low-level input is the shallowest level the decoder consumes (layer1 for
    DeepLabv3+), its high-level input the decoder output.
    """

    training_form = architecture("cfcn").training_form  # the architecture table's

    def __init__(self, spec: ModelSpec, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__(spec, encoder, decoder, spec.num_classes + 1)
        low_channels = encoder.out_channels[decoder.in_levels[0]]
        self.fusion = FusionNet(low_channels, decoder.out_channels,
                                proxy_channels(spec.num_classes))
        initialize_weights(self)

    def forward(self, xa: Tensor, xb: Tensor) -> dict[str, Tensor]:
        _check_pair(xa, xb)
        features = self.encode(torch.cat([xa, xb]))
        decoded = self.decoder(features)
        seg_a, seg_b = self.to_input_grid(self.head(decoded), xa).chunk(2)
        low_a, low_b = features[0].chunk(2)
        high_a, high_b = decoded.chunk(2)
        proxy = self.to_input_grid(self.fusion(low_a + low_b, high_a + high_b), xa)
        return {"seg_a": seg_a, "seg_b": seg_b, "proxy": proxy}

    def predict_proba(self, x: Tensor) -> Tensor:
        """One conjugate branch (encoder, decoder, head); the fusion net is not used."""
        logits = self.to_input_grid(self.head(self.decoder(self.encode(x))), x)
        return foreground_probabilities(logits)


class SiamFCN(EncoderDecoderCore):
    """Siamese FCN (ablation): ``forward(xa, xb)`` returns ``{"seg_a", "seg_b"}`` logits
    ``(N, K+1, H, W)``.

    At every level the decoder consumes, each branch's features are concatenated with the other
    branch's and fused back to their own width by a shared 1x1 convolution.
    """

    training_form = architecture("siamfcn").training_form  # the architecture table's

    def __init__(self, spec: ModelSpec, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__(spec, encoder, decoder, spec.num_classes + 1)
        self.exchange = nn.ModuleList(
            ConvBNReLU(2 * encoder.out_channels[level], encoder.out_channels[level], 1)
            for level in decoder.in_levels
        )
        initialize_weights(self)

    def _segment(self, own: list[Tensor], other: list[Tensor], x: Tensor) -> Tensor:
        fused = [fuse(torch.cat([f, g], dim=1)) for fuse, f, g in zip(self.exchange, own, other)]
        return self.to_input_grid(self.head(self.decoder(fused)), x)

    def forward(self, xa: Tensor, xb: Tensor) -> dict[str, Tensor]:
        _check_pair(xa, xb)
        own = self.encode(torch.cat([xa, xb]))
        other = [torch.cat(f.chunk(2)[::-1]) for f in own]
        seg_a, seg_b = self._segment(own, other, xa).chunk(2)
        return {"seg_a": seg_a, "seg_b": seg_b}

    def predict_proba(self, x: Tensor) -> Tensor:
        """One branch whose partner is the same image (its own features), encoder run once."""
        features = self.encode(x)
        return foreground_probabilities(self._segment(features, features, x))
