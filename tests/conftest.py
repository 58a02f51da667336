"""Fixtures shared by the test files: tiny image folders built in tmp paths.

- ``make_image_folder(root, classes={"cat": 6, "dog": 5}, size=(24, 24), seed=0)`` writes
  small random images into ``root/<class>/`` and returns ``root``. Class ``i`` of ``n``
  has its own dominant hue, so even a tiny model can learn the classes. Files alternate
  between JPEG and PNG. The same seed gives the same pixels (and, for a PNG, the same
  bytes): give each split its own seed unless duplicates across splits are the point.
- ``make_run_folder(folder, marker="history.csv")`` writes what an imgclf run folder
  looks like from outside: ``config.yaml``, the ``marker`` file, PNG plots and an
  ``evaluate-test/`` folder of plots, and returns the PNG paths. No model is trained.
- ``bad_image_folder``: a single-folder dataset (classes ``odd`` and ``broken``) holding
  every awkward case imgclf must survive; ``bad_image_cases`` says what each file is.
- Every test gets its own ``IMGCLF_CACHE_DIR``, so no test touches the user's cache.
"""

from __future__ import annotations

import colorsys
import io
import shutil
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

WHITE = (255, 255, 255)
RED = (255, 0, 0)
BLUE = (0, 0, 255)


@contextmanager
def single_thread():
    """One intra-op thread: tiny models on busy shared cores run faster and repeatably.
    For fixtures wider than a test, which ``one_thread`` does not reach."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # A folder apart from tmp_path, so it never shows up as a class inside a test's dataset.
    # Removed after the test: converted weights and feature caches would fill a small disk.
    cache = tmp_path_factory.mktemp("imgclf-cache")
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(cache))
    # And a temporary folder of its own: where the cache cannot be written to, run-folder
    # locks fall back to the system's temporary folder, which a test must not fill.
    (cache / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(cache / "tmp"))
    yield
    shutil.rmtree(cache, ignore_errors=True)


def class_colour(index: int, n_classes: int) -> np.ndarray:
    """The dominant RGB colour of class ``index``: hues spread evenly round the wheel."""
    r, g, b = colorsys.hsv_to_rgb(index / max(n_classes, 1), 0.85, 0.85)
    return np.array([r, g, b]) * 255.0


def write_image_folder(
    root: str | Path,
    classes: dict[str, int] | None = None,
    size: tuple[int, int] = (24, 24),
    seed: int = 0,
) -> Path:
    """Write ``classes[name]`` images of ``size`` (height, width) into ``root/<name>/``."""
    root = Path(root)
    classes = {"cat": 6, "dog": 5} if classes is None else classes
    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = class_colour(index, len(classes))
        for i in range(count):
            noise = rng.normal(0.0, 25.0, (*size, 3)) + rng.uniform(-30, 30)
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            ext = "jpg" if i % 2 == 0 else "png"
            Image.fromarray(pixels).save(folder / f"{name}_{i:03d}.{ext}")
    return root


@pytest.fixture
def make_image_folder():
    """Factory: ``make_image_folder(root, classes=..., size=(h, w), seed=0) -> root``."""
    return write_image_folder


RUN_PLOTS = ("learning_curves.png", "confusion_matrix.png", "evaluate-test/roc_curves.png")


def write_run_folder(folder: str | Path, marker: str = "history.csv") -> list[Path]:
    """A stand-in for a run folder imgclf wrote (``config.yaml``, ``marker``, PNG plots, an
    evaluation folder); returns the plots, which are real PNG images."""
    folder = Path(folder)
    (folder / "evaluate-test").mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("model:\n  name: simple_cnn\n")
    (folder / marker).write_bytes(b"epoch,loss\n1,0.5\n")
    (folder / "evaluate-test" / "metrics.json").write_text("{}\n")
    plots = [folder / name for name in RUN_PLOTS]
    for i, path in enumerate(plots):
        Image.new("RGB", (24, 24), (250, 250 - 60 * i, 250)).save(path)
    return plots


@pytest.fixture
def make_run_folder():
    """Factory: ``make_run_folder(folder, marker="history.csv") -> [plot paths]``."""
    return write_run_folder


@dataclass(frozen=True)
class BadCases:
    """What ``bad_image_folder`` holds, by path relative to its root.

    ``decodable``: files that must decode, with the (H, W) they decode to at full size;
    ``unreadable``: image-named files that cannot be decoded, with a regex for the reason;
    ``ignored``: files that are not images at all (hidden, system, text), with a regex;
    ``mismatched``: files whose extension lies about their format, with the real format.
    """

    decodable: dict[str, tuple[int, int]]
    unreadable: dict[str, str]
    ignored: dict[str, str]
    mismatched: dict[str, str]


BAD_CASES = BadCases(
    decodable={
        "odd/good_0.jpg": (24, 24),
        "odd/good_1.png": (24, 24),
        "odd/png_named.jpg": (20, 30),
        "odd/animated.gif": (16, 16),
        "odd/gray_L.png": (16, 16),
        "odd/palette_transparent.png": (16, 16),
        "odd/rgba.png": (16, 16),
        "odd/gray_alpha_LA.png": (16, 16),
        "odd/cmyk.jpg": (16, 16),
        "odd/gray16.png": (16, 16),
        "odd/rotated_exif6.jpg": (40, 20),  # stored 40 wide x 20 high, shown rotated
        "odd/été photo 1.jpg": (24, 24),
        "odd/big.jpg": (3000, 5000),
        "broken/ok.jpg": (24, 24),
    },
    unreadable={
        "broken/truncated.jpg": r"truncated",
        "broken/corrupt.jpg": r"not a recognised image format",
        "broken/empty.jpg": r"empty file \(0 bytes\)",
        "broken/page2_without_width.tif": r"corrupt image: Missing dimensions",
    },
    ignored={
        "broken/notes.txt": r"not an image",
        "broken/.hidden.jpg": r"hidden or system",
        "broken/Thumbs.db": r"hidden or system",
        "broken/.DS_Store": r"hidden or system",
        "broken/.hidden_dir/inside.jpg": r"hidden or system",
    },
    mismatched={"odd/png_named.jpg": "PNG"},
)


def _noisy(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def _half_transparent(mode: str) -> Image.Image:
    """Left half fully transparent (black stored under it), right half opaque red/gray."""
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, 8:] = (255, 0, 0, 255)
    return Image.fromarray(rgba, "RGBA").convert(mode)


def _tiff_page_without_width() -> bytes:
    """A two-page TIFF whose second page has lost its ImageWidth tag (Pillow raises
    TypeError for it, not OSError)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "TIFF", save_all=True,
                                    append_images=[Image.new("RGB", (16, 16))])
    data = bytearray(buffer.getvalue())
    first = struct.unpack_from("<I", data, 4)[0]
    entries = struct.unpack_from("<H", data, first)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * entries)[0]
    for i in range(struct.unpack_from("<H", data, second)[0]):
        tag = second + 2 + 12 * i
        if struct.unpack_from("<H", data, tag)[0] == 256:  # ImageWidth
            struct.pack_into("<H", data, tag, 65000)  # an unknown tag instead
    return bytes(data)


def _build_bad_folder(root: Path) -> None:
    odd, broken = root / "odd", root / "broken"
    for folder in (odd, broken, broken / ".hidden_dir", root / ".hidden_root_dir"):
        folder.mkdir(parents=True)

    _noisy((24, 24), 1).save(odd / "good_0.jpg")
    _noisy((24, 24), 2).save(odd / "good_1.png")
    _noisy((20, 30), 3).save(odd / "png_named.jpg", format="PNG")
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE)]
    frames[0].save(odd / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    Image.new("L", (16, 16), 100).save(odd / "gray_L.png")
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (8, 0, 16, 16))
    palette.save(odd / "palette_transparent.png", transparency=0)  # index 0 (black): clear
    _half_transparent("RGBA").save(odd / "rgba.png")
    _half_transparent("LA").save(odd / "gray_alpha_LA.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(odd / "cmyk.jpg")  # red in CMYK
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(odd / "gray16.png")
    rotated = Image.new("RGB", (40, 20), RED)
    rotated.paste(BLUE, (20, 0, 40, 20))  # stored: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(odd / "rotated_exif6.jpg", exif=exif.tobytes(), quality=95)
    _noisy((24, 24), 4).save(odd / "été photo 1.jpg")
    Image.new("RGB", (5000, 3000), (30, 120, 60)).save(odd / "big.jpg", quality=50)

    _noisy((24, 24), 5).save(broken / "ok.jpg")
    buffer = io.BytesIO()
    _noisy((64, 64), 6).save(buffer, format="JPEG", quality=95)
    (broken / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (broken / "corrupt.jpg").write_bytes(np.random.default_rng(7).bytes(2000))
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "page2_without_width.tif").write_bytes(_tiff_page_without_width())
    (broken / "notes.txt").write_text("not a picture\n")
    _noisy((24, 24), 8).save(broken / ".hidden.jpg")
    (broken / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(60))
    (broken / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(40))
    _noisy((24, 24), 9).save(broken / ".hidden_dir" / "inside.jpg")
    _noisy((24, 24), 10).save(root / ".hidden_root_dir" / "not_a_class.jpg")


@pytest.fixture(scope="session")
def _bad_folder_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-template") / "bad"
    _build_bad_folder(root)
    return root


@pytest.fixture
def bad_image_folder(_bad_folder_template, tmp_path) -> Path:
    """A fresh copy (so tests may modify it) of the folder of awkward and broken files."""
    return Path(shutil.copytree(_bad_folder_template, tmp_path / "bad"))


@pytest.fixture
def bad_image_cases() -> BadCases:
    """The expected outcome for each file of ``bad_image_folder``."""
    return BAD_CASES
