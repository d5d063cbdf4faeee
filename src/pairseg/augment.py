"""Training-time augmentation applied to whole batches on the training device.

Both members of a pair get the SAME spatial transform, so the pixel-wise AND/XOR proxy
supervision still compares corresponding anatomy; intensity jitter is drawn per image.
Left-right flips are off by default: they swap the sides of lateral organs (right/left kidney).
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
    return theta


def _intensity(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    n = images.shape[0]
    shape = (n, 1, 1, 1)
    gamma = torch.exp(_uniform(n, config.gamma, generator)).view(shape).to(images)
    contrast = (1.0 + _uniform(n, config.contrast, generator)).view(shape).to(images)
    brightness = _uniform(n, config.brightness, generator).view(shape).to(images)
    out = images.clamp(0.0, 1.0).pow(gamma)
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
    for image, label in zip(images, labels):
        warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out_images.append(_intensity(warped, config, generator))
        warped_label = F.grid_sample(label[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                     align_corners=False)
        out_labels.append(warped_label[:, 0].to(label.dtype))
    return out_images, out_labels
