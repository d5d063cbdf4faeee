"""Training-time augmentation applied to whole batches on the training device.

Both members of a pair get the SAME spatial transform, so the pixel-wise AND/XOR proxy
supervision still compares corresponding anatomy; intensity jitter is drawn per image.
Left-right flips are off by default: they swap the sides of lateral organs (right/left kidney).
Random shifts (``shift``) teach a physical-resolution model that anatomy may sit anywhere in a
field of view with background around it, as in scans wider than the training ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pairseg.config import AugmentConfig  # defined with the other training settings

__all__ = ["AugmentConfig", "augment_batch"]


def _uniform(n: int, width: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * 2.0 - 1.0) * width


def _affine(n: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    angle = _uniform(n, math.radians(config.rotation_deg), generator)
    scale = 1.0 + _uniform(n, config.scale, generator)
    sx = scale.clone()
    sy = scale.clone()
    if config.flip_lr:
        sx = torch.where(torch.rand(n, generator=generator) < 0.5, -sx, sx)
    if config.flip_ud:
        sy = torch.where(torch.rand(n, generator=generator) < 0.5, -sy, sy)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / sx
    theta[:, 0, 1] = -sin / sx
    theta[:, 1, 0] = sin / sy
    theta[:, 1, 1] = cos / sy
    if config.shift > 0:  # translation in normalised coordinates: the slice spans [-1, 1]
        theta[:, 0, 2] = _uniform(n, 2.0 * config.shift, generator)
        theta[:, 1, 2] = _uniform(n, 2.0 * config.shift, generator)
    return theta


#: Knots of the random intensity curves of ``AugmentConfig.remap`` (evenly spaced on [0, 1]).
REMAP_KNOTS = 6


def _remap(images: torch.Tensor, chosen: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random monotone, piecewise-linear curve from [0, 1] onto [0, 1] per image where
    ``chosen`` (N,) is true: knot heights are the normalised cumulative sums of random positive
    increments, so the order of intensities is kept while their spacing changes (a contrast the
    network has not seen, with the anatomy's edges where they were)."""
    n = images.shape[0]
    steps = torch.rand(n, REMAP_KNOTS, generator=generator) + 0.05
    knots = torch.cat([torch.zeros(n, 1), steps.cumsum(1)], 1)
    knots = (knots / knots[:, -1:]).to(images)
    position = images.clamp(0.0, 1.0) * REMAP_KNOTS
    index = position.floor().clamp(max=REMAP_KNOTS - 1)
    low = torch.gather(knots, 1, index.long().flatten(1)).view_as(images)
    high = torch.gather(knots, 1, (index.long() + 1).flatten(1)).view_as(images)
    curved = low + (position - index) * (high - low)
    return torch.where(chosen.to(images.device).view(n, 1, 1, 1), curved, images)


def _intensity(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    n = images.shape[0]
    shape = (n, 1, 1, 1)
    gamma = torch.exp(_uniform(n, config.gamma, generator)).view(shape).to(images)
    contrast = (1.0 + _uniform(n, config.contrast, generator)).view(shape).to(images)
    brightness = _uniform(n, config.brightness, generator).view(shape).to(images)
    out = images.clamp(0.0, 1.0)
    if config.remap > 0:  # drawn only when asked for: runs without it keep their random sequence
        out = _remap(out, torch.rand(n, generator=generator) < config.remap, generator)
    if config.invert > 0:
        inverted = (torch.rand(n, generator=generator) < config.invert).to(images.device).view(shape)
        out = torch.where(inverted, 1.0 - out, out)
    out = out.pow(gamma)
    return (out - 0.5) * contrast + 0.5 + brightness


def augment_batch(images: list[torch.Tensor], labels: list[torch.Tensor], config: AugmentConfig,
                  generator: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Augment one batch, or the members of a batch of pairs with a shared spatial transform.

    ``images``: list of (N, C, H, W) float tensors (one per pair member); ``labels``: matching
    list of (N, H, W) integer tensors.
    """
    if not config.enabled:
        return images, labels
    n = images[0].shape[0]
    theta = _affine(n, config, generator).to(images[0].device)
    grid = F.affine_grid(theta, list(images[0].shape), align_corners=False)
    out_images, out_labels = [], []
    # Shifted slices uncover background (zeros after normalisation), as a wider field of view
    # shows it; without shifts the edge pixels are repeated (the engine's behaviour before 0.2).
    padding = "zeros" if config.shift > 0 else "border"
    for image, label in zip(images, labels):
        warped = F.grid_sample(image, grid, mode="bilinear", padding_mode=padding, align_corners=False)
        out_images.append(_intensity(warped, config, generator))
        warped_label = F.grid_sample(label[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                     align_corners=False)
        out_labels.append(warped_label[:, 0].to(label.dtype))
    return out_images, out_labels
