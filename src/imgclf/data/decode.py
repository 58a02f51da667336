"""Decoding image files into RGB uint8 arrays, recognised by content rather than extension.

Every image becomes 8-bit RGB:
- palette, grayscale, CMYK and 1-bit images are converted;
- 16- and 32-bit grayscale is scaled down to 8 bits by its bit depth (Pillow's own
  conversion clips instead);
- transparency is composited onto a white background, so transparent pixels do not
  turn into whatever colour happens to be stored under them;
- EXIF orientation is applied; animated files (GIF, WebP, APNG) give their first frame.
Large JPEGs are decoded at reduced scale (Pillow's draft mode), so a 5000x3000 photo
costs about as much as a small one.
"""

from __future__ import annotations

import hashlib
import stat
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow refuses images past ~179 megapixels as possible decompression bombs (a file of
# under a megabyte can declare them), and warns past half that. imgclf decodes JPEGs in
# draft mode (at most 1/8 of the pixels) and checks other formats against the same
# refusal below, so Pillow's global guard (and its warning) is replaced by that check.
MAX_PIXELS = 178_956_970  # twice Pillow's default MAX_IMAGE_PIXELS, where it refuses
"""Largest non-JPEG image (in pixels) imgclf will decode in full: Pillow's own refusal, at
which a 16-bit grayscale image takes about 2 GB to decode and convert."""
Image.MAX_IMAGE_PIXELS = None

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".tga", ".avif", ".heic"}
)
SYSTEM_FILES = frozenset({"thumbs.db", ".ds_store", "desktop.ini", "ehthumbs.db", "icon\r"})

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class DecodeError(Exception):
    """A file could not be decoded as an image; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """What an image file's header says, without decoding its pixels."""

    format: str
    mode: str
    width: int
    height: int
    frames: int


@contextmanager
def _open(path: Path):
    """Open an image file; every way it can fail (then or while decoding inside the
    ``with`` block) becomes a DecodeError with a short reason."""
    try:
        st = path.stat()
    except OSError as exc:  # gone, no permission, a link that leads back to itself
        raise DecodeError(path, f"cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):  # read, a pipe could wait forever
        raise DecodeError(path, "not a regular file (a folder, pipe, device or socket)")
    if st.st_size == 0:
        raise DecodeError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                yield im
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(path, "not a recognised image format") from None
    except (FileNotFoundError, PermissionError) as exc:  # gone or closed since its stat
        raise DecodeError(path, f"cannot read: {exc.strerror or exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, KeyError, IndexError,
            ZeroDivisionError, NotImplementedError, struct.error) as exc:
        # Pillow's readers raise all of these on damaged headers (a TIFF page without
        # its width gives TypeError, a bad GIF table IndexError, a DDS file's unknown
        # pixel format NotImplementedError, and so on).
        text = str(exc)
        if "truncated" in text.lower():
            raise DecodeError(path, "truncated file (image data ends early)") from None
        raise DecodeError(path, f"corrupt image: {text or type(exc).__name__}") from None


def file_digest(path: Path) -> str:
    """A digest of the file's bytes: files with the same digest are identical copies."""
    try:
        return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
    except OSError as exc:
        raise DecodeError(path, f"cannot read: {exc.strerror or exc}") from None


def probe(path: Path) -> ImageInfo:
    """Read an image's header: format, mode and size. Raises DecodeError if it is no image."""
    path = Path(path)
    with _open(path) as im:
        return ImageInfo(im.format or "unknown", im.mode, im.width, im.height,
                         getattr(im, "n_frames", 1))


_INTEGER_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class _SampleDepth:
    """How the file stores integer grayscale (Pillow modes ``I;16*`` and ``I``).

    ``bits`` counts the value bits the file states (15 for signed 16-bit samples) when
    its samples are narrower than the 32 bits of Pillow's mode ``I``, and is None
    otherwise; ``unsigned`` marks 32-bit samples that Pillow reads as signed, so values
    from 2**31 up arrive negative.
    """

    bits: int | None
    unsigned: bool = False


def _sample_depth(im: Image.Image) -> _SampleDepth:
    """Read the stored depth from the file's header; call it before any transform, since
    Pillow's transformed copies forget the format and its tags."""
    if im.mode not in _INTEGER_GRAY:
        return _SampleDepth(None)
    if im.mode != "I" or im.format in ("PNG", "PPM"):
        return _SampleDepth(16)  # PNG and PGM hold no grayscale deeper than 16 bits
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (32,))[0]  # BitsPerSample
        signed = im.tag_v2.get(339, (1,))[0] == 2  # SampleFormat
        if bits < 32:
            return _SampleDepth(max(bits - signed, 8))
        return _SampleDepth(None, unsigned=not signed)
    return _SampleDepth(None)


def _integer_gray_to_8bit(arr: np.ndarray, depth: _SampleDepth) -> np.ndarray:
    """Scale integer grayscale to 8 bits by its depth, so full white stays white.

    A stated depth is used as it is: 16-bit PNG, PGM and TIFF files divide by 65535, as
    torchvision's and scikit-image's uint16 conversions do (and signed 16-bit TIFF by
    32767). A 32-bit sample says little about its range: Pillow's own ``convert("I")``
    gives 0..255 and an int32 array saved as TIFF often holds 16-bit data, so scaling
    every mode ``I`` image by 2**31 (as the dtype-driven libraries do) would turn them
    black. Their depth is therefore the smallest of 8, 16 and 32 bits that holds the
    image's largest value, as scikit-image's ``img_as_ubyte`` keeps an int32 image within
    0..255 as 8-bit. The price is that such an image whose values all lie below 256 (or
    65536) is scaled as 8-bit (or 16-bit) data even if its dataset is deeper. Negative
    values clip to 0.
    """
    # One copy wide enough for the samples (and for 32-bit ones read as unsigned), worked
    # on in place: a large image costs a few times its own size.
    arr = arr.astype(np.int64 if arr.dtype.itemsize > 2 else np.int32)
    bits = depth.bits
    if bits is None:
        if depth.unsigned:
            arr &= 0xFFFF_FFFF
        full = 32 if depth.unsigned else 31  # int32's largest value is 2**31 - 1
        top = int(arr.max(initial=0))
        bits = next(b for b in (8, 16, full) if top < 1 << b)
    np.clip(arr, 0, (1 << bits) - 1, out=arr)
    arr >>= bits - 8
    return arr.astype(np.uint8)


def _to_rgb(im: Image.Image, depth: _SampleDepth) -> Image.Image:
    keyed = "transparency" in im.info  # a colour key (PNG's tRNS): pixels of it are clear
    if keyed and im.mode in ("1", "L", "RGB"):
        im = im.convert("RGBA")
    if im.mode == "RGB":
        return im
    if im.mode in (*_INTEGER_GRAY, "F"):
        arr = np.asarray(im)
        if im.mode == "F":
            scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
            arr8 = np.clip(np.nan_to_num(arr) * scale, 0, 255).astype(np.uint8)
        else:
            arr8 = _integer_gray_to_8bit(arr, depth)
            if keyed:  # clear, so the white background
                arr8 = np.where(arr == im.info["transparency"], 255, arr8).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def decode_image(
    path: Path,
    size: tuple[int, int] | None = None,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Decode ``path`` to an RGB uint8 array of shape (H, W, 3).

    With ``size`` = (height, width) the image is resized to exactly that shape
    (aspect ratio is not kept, as in Keras' ``image_dataset_from_directory``).
    Raises DecodeError for empty, unrecognised, truncated, corrupt or oversized files.
    """
    path = Path(path)
    with _open(path) as im:
        im.seek(0)
        # Phone cameras write multi-picture JPEGs that Pillow calls MPO.
        if im.format in ("JPEG", "MPO") and size is not None:
            side = max(size)
            im.draft("RGB", (side, side))
        elif im.width * im.height > MAX_PIXELS:
            raise DecodeError(
                path,
                f"too large to decode ({im.width}x{im.height} {im.format}, "
                f"limit {MAX_PIXELS:,} pixels); downscale it first",
            )
        im.load()
        depth = _sample_depth(im)
        im = ImageOps.exif_transpose(im)
        im = _to_rgb(im, depth)
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), RESAMPLING[interpolation], reducing_gap=3.0)
        return np.asarray(im, dtype=np.uint8)
