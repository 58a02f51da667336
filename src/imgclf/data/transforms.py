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
  on whole batches at once, so it costs a small fraction of a training step, and returns
  float32 pixels (0-255, not rounded), as Keras' generator does.
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

from imgclf.config import AUGMENT_PRESETS
from imgclf.errors import ConfigError


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
    """Keras ``ImageDataGenerator``'s random affine warp, on (C, H, W) or (B, C, H, W) images
    (uint8 or float, 0-255), giving float32.

    Per image: rotation up to ``rotation`` degrees, shifts up to ``shift`` of the width and
    height, shear up to ``shear`` degrees, zoom in [1 - zoom, 1 + zoom] per axis, and a
    horizontal flip half of the time. Pixels from outside the image repeat the nearest
    edge pixel. ``batched`` tells the dataset to call it once per batch. The output stays
    float: rounding it back to uint8 cost a fifth of the warp, and the model's first step
    converts to float anyway.
    """

    batched = True

    def __init__(self, rotation: float = 40.0, shift: float = 0.2, shear: float = 0.2,
                 zoom: float = 0.2, flip: bool = True):
        super().__init__()
        self.rotation, self.shift, self.shear, self.zoom, self.flip = (
            rotation, shift, shear, zoom, flip)
        self._key = None  # the batch shape, layout and device _scratch's buffers fit

    def matrices(self, batch: int, height: int, width: int) -> np.ndarray:
        """(B, 2, 3) output-to-input maps in affine_grid's normalised coordinates."""
        # One draw for the batch and numpy arithmetic: on a few dozen numbers each torch
        # call costs more than its work.
        u = torch.rand(batch, 7, dtype=torch.float64).numpy() * 2 - 1  # uniform in [-1, 1)
        theta = u[:, 0] * (self.rotation * math.pi / 180)
        shear = u[:, 1] * (self.shear * math.pi / 180)
        zx, zy = 1 + u[:, 2] * self.zoom, 1 + u[:, 3] * self.zoom
        if self.flip:
            zx = np.where(u[:, 4] < 0, -zx, zx)
        cos, sin = np.cos(theta), np.sin(theta)
        # Pixel space (origin at the centre): A = rotation @ shear @ zoom @ flip, then to
        # normalised coordinates D^-1 A D with D = diag(W/2, H/2); shifts become 2 * frac.
        m = np.empty((batch, 2, 3))
        m[:, 0, 0] = cos * zx
        m[:, 0, 1] = (-cos * np.sin(shear) - sin * np.cos(shear)) * zy * (height / width)
        m[:, 1, 0] = sin * zx * (width / height)
        m[:, 1, 1] = (-sin * np.sin(shear) + cos * np.cos(shear)) * zy
        m[:, :, 2] = u[:, 5:7] * (2 * self.shift)
        return m

    def grid(self, batch: int, height: int, width: int,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """grid_sample's (B, H, W, 2) sampling grid for a fresh draw: what ``affine_grid``
        makes of ``matrices``, built as one sum of a per-column and a per-row term (a fifth
        of affine_grid's time), into ``out`` ((B, 2, H, W) float32) when given."""
        m = self.matrices(batch, height, width)
        xs = np.linspace(-1 + 1 / width, 1 - 1 / width, width)  # pixel centres
        ys = np.linspace(-1 + 1 / height, 1 - 1 / height, height)
        columns = torch.from_numpy((m[:, :, 0, None] * xs).astype(np.float32))
        rows = torch.from_numpy((m[:, :, 1, None] * ys + m[:, :, 2, None]).astype(np.float32))
        planes = torch.add(columns[:, :, None, :], rows[:, :, :, None], out=out)  # (B, 2, H, W)
        return planes.permute(0, 2, 3, 1)

    def _scratch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The float pixels and the grid planes of a batch like ``batch``, reused from one
        batch to the next: memory the caches still hold is faster to fill than a fresh
        block. Neither leaves the warp, whose result is always a new tensor."""
        b, _, h, w = batch.shape
        key = (batch.shape, batch.stride(), batch.device)
        if self._key != key:
            self._key = key
            self._pixels = torch.empty_like(batch, dtype=torch.float32)  # same layout
            self._planes = torch.empty(b, 2, h, w)
        return self._pixels, self._planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = x.dim() == 3
        batch = x.unsqueeze(0) if single else x
        b, _, h, w = batch.shape
        pixels, planes = self._scratch(batch)
        grid = self.grid(b, h, w, out=planes).to(batch.device)
        out = F.grid_sample(pixels.copy_(batch), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out[0] if single else out
