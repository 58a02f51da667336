"""Augmentation presets, applied on the fly to cached uint8 images (C, H, W tensors).

Presets:
- ``none``: images as cached.
- ``flip``: horizontal flip only.
- ``reference``: the reference study's Keras ``ImageDataGenerator(rotation_range=40,
  width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
  horizontal_flip=True, fill_mode='nearest')``. Keras documents ``shear_range`` as an
  angle in degrees, and that is the reading implemented here: a shear of up to 0.2
  degrees, which is next to nothing. Keras zooms each axis independently; here the zoom
  is isotropic (torchvision's ``RandomAffine``). ``nearest`` fill repeats edge pixels,
  done by padding with edge values before the affine warp and cropping back after.
- ``trivial``: random resized crop (scale 0.35-1), horizontal flip and TrivialAugment.
- ``randaugment``: random resized crop, horizontal flip and RandAugment (2 ops, magnitude 9).
MixUp and CutMix act on whole batches and are configured separately (``mixup``, ``cutmix``).
"""

from __future__ import annotations

import torch
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
        pad = (width // 2, height // 2)
        return v2.Compose([
            v2.Pad(list(pad), padding_mode="edge"),
            v2.RandomAffine(degrees=40, translate=(0.2 * width / (2 * width),
                                                   0.2 * height / (2 * height)),
                            scale=(0.8, 1.2), shear=0.2),
            v2.CenterCrop(size),
            v2.RandomHorizontalFlip(),
        ])
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
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def hflip(batch: torch.Tensor) -> torch.Tensor:
    """Mirror a (B, C, H, W) batch left to right (for test-time augmentation)."""
    return batch.flip(-1)
