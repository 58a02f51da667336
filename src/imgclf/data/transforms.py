"""Augmentation presets, applied on the fly to cached uint8 images (C, H, W tensors).

Presets:
- ``none``: images as cached.
- ``flip``: horizontal flip only.
- ``reference``: the reference study's Keras ``ImageDataGenerator(rotation_range=40,
  width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
  horizontal_flip=True, fill_mode='nearest')``, as ``KerasAffine``: one random affine
  warp per image, sampled bilinearly like Keras, with edge pixels repeated outside the
  image (Keras' ``nearest`` fill) and each axis zoomed independently as Keras does.
  Keras documents ``shear_range`` as an angle in degrees, and that is the reading
  implemented here: a shear of up to 0.2 degrees, which is next to nothing. The warp runs
  on whole batches at once, so it costs a small fraction of a training step.
- ``trivial``: random resized crop (scale 0.35-1), horizontal flip and TrivialAugment.
- ``randaugment``: random resized crop, horizontal flip and RandAugment (2 ops, magnitude 9).
MixUp and CutMix act on whole batches and are configured separately (``mixup``, ``cutmix``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from imgclf.errors import ConfigError

AUGMENT_PRESETS = ("none", "flip", "reference", "trivial", "randaugment")


def create_transform(preset: str, size: tuple[int, int]) -> v2.Transform | None:
    """The training transform for ``preset`` at ``size`` (height, width), or None."""
    height, width = size
    if preset == "none":
        return None
    if preset == "flip":
        return v2.RandomHorizontalFlip()
    if preset == "reference":
        return KerasAffine()
    if preset in ("trivial", "randaugment"):
        policy = v2.TrivialAugmentWide() if preset == "trivial" else v2.RandAugment(2, 9)
        return v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            policy,
        ])
    raise ConfigError(
        f"augment preset {preset!r} is not known; choose one of {', '.join(AUGMENT_PRESETS)}."
    )


def create_batch_mixer(num_classes: int, mixup: float = 0.0, cutmix: float = 0.0):
    """MixUp / CutMix on (images, labels) batches, or None when both alphas are zero."""
    mixers = []
    if mixup > 0:
        mixers.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        mixers.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not mixers:
        return None
    chosen = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def mix(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Batches arrive as uint8, which cannot hold MixUp's blend: mix in float (0-255).
        return chosen(images.float(), labels)

    return mix


def tta_average(probs_of: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                tta: bool) -> np.ndarray:
    """``probs_of(images)`` for uint8 images (N, H, W, 3); with ``tta`` (test-time
    augmentation), averaged with ``probs_of`` the images mirrored left to right."""
    probs = probs_of(images)
    if tta:
        probs = (probs + probs_of(np.ascontiguousarray(images[:, :, ::-1]))) / 2
    return probs


class KerasAffine(nn.Module):
    """Keras ``ImageDataGenerator``'s random affine warp, on (C, H, W) or (B, C, H, W) uint8.

    Per image: rotation up to ``rotation`` degrees, shifts up to ``shift`` of the width and
    height, shear up to ``shear`` degrees, zoom in [1 - zoom, 1 + zoom] per axis, and a
    horizontal flip half of the time. Pixels from outside the image repeat the nearest
    edge pixel. ``batched`` tells the dataset to call it once per batch.
    """

    batched = True

    def __init__(self, rotation: float = 40.0, shift: float = 0.2, shear: float = 0.2,
                 zoom: float = 0.2, flip: bool = True):
        super().__init__()
        self.rotation, self.shift, self.shear, self.zoom, self.flip = (
            rotation, shift, shear, zoom, flip)

    def matrices(self, batch: int, height: int, width: int) -> torch.Tensor:
        """(B, 2, 3) output-to-input maps in affine_grid's normalised coordinates."""
        def uniform(bound: float) -> torch.Tensor:
            return torch.empty(batch).uniform_(-bound, bound)

        theta = uniform(self.rotation) * math.pi / 180
        shear = uniform(self.shear) * math.pi / 180
        zx, zy = 1 + uniform(self.zoom), 1 + uniform(self.zoom)
        fx = torch.where(torch.rand(batch) < 0.5, -1.0, 1.0) if self.flip else torch.ones(batch)
        cos, sin = torch.cos(theta), torch.sin(theta)
        # Pixel space (origin at the centre): A = rotation @ shear @ zoom @ flip.
        a = torch.stack([
            torch.stack([cos * zx * fx, (-cos * torch.sin(shear) - sin * torch.cos(shear)) * zy],
                        -1),
            torch.stack([sin * zx * fx, (-sin * torch.sin(shear) + cos * torch.cos(shear)) * zy],
                        -1),
        ], 1)
        # To normalised coordinates: D^-1 A D with D = diag(W/2, H/2); shifts become 2 * frac.
        scale = torch.tensor([width / 2, height / 2])
        a = a * scale.view(1, 1, 2) / scale.view(1, 2, 1)
        shifts = torch.stack([uniform(self.shift), uniform(self.shift)], -1) * 2
        return torch.cat([a, shifts.unsqueeze(-1)], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = x.dim() == 3
        batch = x.unsqueeze(0) if single else x
        b, c, h, w = batch.shape
        grid = F.affine_grid(self.matrices(b, h, w).to(batch.device), [b, c, h, w],
                             align_corners=False)
        out = F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        if x.dtype == torch.uint8:
            out = out.round_().clamp_(0, 255).to(torch.uint8)
        return out[0] if single else out
