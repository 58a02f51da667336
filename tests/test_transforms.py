"""Tests for imgclf.data.transforms: augmentation presets and the batch mixers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imgclf.data.transforms import (
    AUGMENT_PRESETS,
    KerasAffine,
    create_batch_mixer,
    create_transform,
    tta_average,
)
from imgclf.errors import ConfigError


@pytest.fixture(autouse=True)
def seeded():
    """Seeded draws, so each test sees the same augmentations."""
    torch.manual_seed(0)


def noise(height: int, width: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_every_preset_keeps_chw_size_and_pixel_range(preset, size):
    """Per-image presets keep uint8; the batch-wise reference warp gives float32 pixels."""
    transform = create_transform(preset, size)
    image = noise(*size)
    if preset == "none":
        assert transform is None
        return
    for _ in range(5):
        out = transform(image)
        assert out.dtype == (torch.float32 if preset == "reference" else torch.uint8)
        assert out.shape == (3, *size)
        assert 0 <= float(out.min()) and float(out.max()) <= 255


@pytest.mark.parametrize("preset", [p for p in AUGMENT_PRESETS if p != "none"])
def test_presets_change_images(preset):
    transform = create_transform(preset, (32, 32))
    image = noise(32, 32)
    assert any(not torch.equal(transform(image).float(), image.float()) for _ in range(10))


def darkest(transform, image: torch.Tensor, draws: int) -> float:
    return min(float(transform(image).min()) for _ in range(draws))


def test_reference_edge_fill_leaves_no_black_on_a_white_image():
    """``fill_mode='nearest'``: corners uncovered by rotation, zoom-out and shift repeat the
    edge, so a white image stays white whatever the draw."""
    transform = create_transform("reference", (32, 32))
    white = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    assert darkest(transform, white, 300) == pytest.approx(255, abs=1e-3)


def test_reference_edge_fill_on_a_non_square_image():
    transform = create_transform("reference", (24, 40))
    white = torch.full((3, 24, 40), 255, dtype=torch.uint8)
    assert darkest(transform, white, 200) == pytest.approx(255, abs=1e-3)


def test_reference_warps_whole_batches_with_edge_fill():
    transform = create_transform("reference", (32, 32))
    batch = torch.full((8, 3, 32, 32), 255, dtype=torch.uint8)
    batch[4:] = noise(32, 32)
    out = transform(batch)
    assert out.dtype == torch.float32 and out.shape == batch.shape
    assert float(out[:4].min()) == pytest.approx(255, abs=1e-3)  # white stays white
    # Each image gets its own draw.
    assert len({bytes(o.numpy()) for o in out[4:]}) == 4


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_reference_grid_is_affine_grid_of_its_matrices(size):
    """The warp's sampling grid, built from row and column terms, is the one PyTorch's
    ``affine_grid`` makes of the same draw."""
    warp = KerasAffine()
    torch.manual_seed(3)
    grid = warp.grid(6, *size)
    torch.manual_seed(3)
    matrices = torch.from_numpy(warp.matrices(6, *size)).float()
    expected = F.affine_grid(matrices, [6, 3, *size], align_corners=False)
    torch.testing.assert_close(grid, expected, atol=1e-6, rtol=0)


def test_reference_warp_without_ranges_is_the_identity_or_a_mirror():
    image = noise(24, 40)
    still = KerasAffine(rotation=0, shift=0, shear=0, zoom=0, flip=False)
    torch.testing.assert_close(still(image), image.float(), atol=1e-3, rtol=0)
    mirror = KerasAffine(rotation=0, shift=0, shear=0, zoom=0, flip=True)
    outs = [mirror(image) for _ in range(20)]
    assert all(torch.allclose(o, image.float(), atol=1e-3)
               or torch.allclose(o, image.flip(-1).float(), atol=1e-3) for o in outs)
    assert any(torch.allclose(o, image.flip(-1).float(), atol=1e-3) for o in outs)


def test_reference_moves_content():
    """A shifted or rotated image is not the input (the shift is at most 20% a side)."""
    transform = create_transform("reference", (32, 32))
    image = torch.zeros((3, 32, 32), dtype=torch.uint8)
    image[:, 12:20, 12:20] = 255
    outs = [transform(image) for _ in range(20)]
    assert any(not torch.equal(o, image) for o in outs)
    # The square stays in view: neither shifted out nor cropped away.
    assert all(o.float().mean() > 0 for o in outs)


def test_unknown_preset_raises_with_the_choices():
    with pytest.raises(ConfigError, match=r"augment preset 'heavy' is not known; choose one of "
                                          r"none, flip, reference, trivial, randaugment"):
        create_transform("heavy", (32, 32))


def test_no_mixer_when_both_alphas_are_zero():
    assert create_batch_mixer(3) is None
    assert create_batch_mixer(3, mixup=0.0, cutmix=0.0) is None


def uint8_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """What the training loop hands the mixer: uint8 images (channels_last) and int labels."""
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(2))
    return x.contiguous(memory_format=torch.channels_last), torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both"])
def test_mixer_produces_soft_targets(kind):
    alphas = {"mixup": (0.4, 0.0), "cutmix": (0.0, 1.0), "both": (0.4, 1.0)}[kind]
    mixer = create_batch_mixer(3, *alphas)
    x, y = uint8_batch()
    blended = []
    for _ in range(10):  # with both, each batch gets one of the two at random
        mixed, target = mixer(x, y)
        assert mixed.shape == x.shape
        assert target.shape == (6, 3)
        assert target.dtype.is_floating_point
        torch.testing.assert_close(target.sum(1), torch.ones(6))
        assert (target >= 0).all()
        # Soft: the targets are not the one-hot labels, and each keeps some of its class.
        assert not torch.equal(target, torch.nn.functional.one_hot(y, 3).float())
        assert (target[torch.arange(6), y] > 0).all()
        blended.append(not torch.equal(mixed, mixed.round()))  # MixUp blends pixel values
    expected = {"mixup": {True}, "cutmix": {False}, "both": {True, False}}[kind]
    assert set(blended) == expected


def test_mixup_of_uint8_images_stays_in_pixel_range():
    mixer = create_batch_mixer(3, mixup=0.4)
    x, y = uint8_batch()
    mixed, target = mixer(x, y)
    lam = target[torch.arange(6), y]
    assert mixed.float().min() >= 0 and mixed.float().max() <= 255
    # MixUp: each image is lam * itself + (1 - lam) * its neighbour in the batch.
    xf = x.float()
    expected = lam.view(6, 1, 1, 1) * xf + (1 - lam.view(6, 1, 1, 1)) * xf.roll(1, 0)
    torch.testing.assert_close(mixed.float(), expected, atol=1.0, rtol=0)


def test_tta_average_averages_with_the_images_mirrored_left_to_right():
    images = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)  # N, H, W, C
    seen = []

    def probs_of(batch):
        seen.append(batch.copy())
        return batch[:, 0, :, 0].astype(np.float64)  # first row's red values, as "probs"

    assert tta_average(probs_of, images, tta=False).tolist() == images[:, 0, :, 0].tolist()
    seen.clear()
    averaged = tta_average(probs_of, images, tta=True)
    assert [b.tolist() for b in seen] == [images.tolist(), images[:, :, ::-1].tolist()]
    row = images[:, 0, :, 0].astype(np.float64)
    assert averaged.tolist() == ((row + row[:, ::-1]) / 2).tolist()


def pixel_space(warp: KerasAffine, height: int, width: int, draws: int = 50) -> np.ndarray:
    """The draws' linear parts in pixel units (D M D^-1, D = diag(W/2, H/2))."""
    m = warp.matrices(draws, height, width)[:, :, :2]
    d = np.diag([width / 2, height / 2])
    return d @ m @ np.linalg.inv(d)


def test_reference_rotation_is_a_rotation_in_pixels_on_a_non_square_image():
    a = pixel_space(KerasAffine(rotation=40, shift=0, shear=0, zoom=0, flip=False), 24, 40)
    np.testing.assert_allclose(a @ a.transpose(0, 2, 1), np.broadcast_to(np.eye(2), a.shape),
                               atol=1e-12)
    angles = np.abs(np.degrees(np.arctan2(a[:, 1, 0], a[:, 0, 0])))
    assert angles.max() <= 40 and angles.max() > 30


def test_reference_zoom_scales_each_axis_within_its_range():
    a = pixel_space(KerasAffine(rotation=0, shift=0, shear=0, zoom=0.2, flip=False), 24, 40)
    np.testing.assert_allclose(a[:, [0, 1], [1, 0]], 0, atol=1e-12)
    scales = a[:, [0, 1], [0, 1]]
    assert scales.min() >= 0.8 and scales.max() <= 1.2
    assert not np.allclose(scales[:, 0], scales[:, 1])  # each axis draws its own zoom


def test_reference_warp_reuses_its_buffers_without_sharing_results():
    # Batches of changing size, as an epoch's last batch is: each result is the one a new
    # warp gives for the same draw, and no result is overwritten by the next batch.
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.integers(0, 256, (n, 20, 24, 3), dtype=np.uint8))
               .permute(0, 3, 1, 2) for n in (4, 4, 3, 4)]
    warp = KerasAffine()
    results = []
    for i, batch in enumerate(batches):
        torch.manual_seed(i)
        results.append(warp(batch))
    for i, (batch, result) in enumerate(zip(batches, results, strict=True)):
        torch.manual_seed(i)
        assert torch.equal(result, KerasAffine()(batch))
    assert len({r.data_ptr() for r in results}) == len(results)


@pytest.mark.parametrize("writeable", [True, False], ids=["in memory", "read-only cache"])
def test_batches_of_a_batch_wise_warp_are_gathered_once_and_kept_apart(writeable):
    from imgclf.data.datasets import ArrayDataset

    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (10, 12, 14, 3), dtype=np.uint8)
    array.flags.writeable = writeable
    dataset = ArrayDataset(array, np.arange(10) % 2, KerasAffine())
    order = [[3, 1, 4, 1], [5, 9, 2, 6], [5, 3]]
    batches = []
    for i, indices in enumerate(order):
        torch.manual_seed(i)
        batches.append(dataset.__getitems__(indices))
    for i, (indices, (x, y)) in enumerate(zip(order, batches, strict=True)):
        torch.manual_seed(i)
        expected = KerasAffine()(torch.from_numpy(array[indices]).permute(0, 3, 1, 2))
        assert torch.equal(x, expected)
        assert y.tolist() == [k % 2 for k in indices]
