"""Decoded, resized uint8 images, paid for once.

``load_images`` decodes a list of files at a target size into one (N, H, W, 3) uint8
array, stored as a ``.npy`` file in the user cache folder under a key made of every
file's identity (absolute path, byte size, modification time) and the target size and
resampling. Later epochs and later runs read that file instead of decoding again; it is
read into memory when it fits comfortably, and memory-mapped otherwise. Files that fail
to decode are reported with their reason and their rows are left out. Each file's digest
is kept beside the array, so that copies across splits are found without reading the
files again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.data.decode import DecodeError, decode_image, file_digest
from imgclf.machine import available_cores
from imgclf.paths import cache_dir, cache_writable, first_line, written_whole

log = logging.getLogger(__name__)

CACHE_VERSION = 3
"""Part of every key: raised whenever ``decode_image`` gives different pixels for a file
(2: 32-bit grayscale scaled by the range it holds; 3: a PNG's colour key made white, as
its other transparency), so no stale arrays are reused."""
IN_MEMORY_FRACTION = 0.25
"""Arrays up to this fraction of physical memory are read into RAM; larger ones are mapped."""


@dataclass
class DecodedImages:
    """Images that decoded (``array[i]`` is ``paths[i]``), and the failures with reasons."""

    array: np.ndarray
    paths: list[Path]
    kept: list[int]
    failures: dict[Path, str]
    key: str
    """Identifies what ``array`` holds: the cache entry's key, and which of its files failed
    (one of them decoding on a later run changes it, and so keys what is computed from it)."""
    digests: list[str | None]
    """``file_digest`` of each of ``paths`` (None where the file could not be read again)."""


def file_identity(path: Path) -> tuple[str, int, int]:
    """What identifies a file's content cheaply: absolute path, size, mtime in ns."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def cache_key(paths: list[Path], size: tuple[int, int], interpolation: str) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, list(size), interpolation]).encode())
    for path in paths:
        digest.update(repr(file_identity(path)).encode())
    return digest.hexdigest()[:32]


def _rows_on_disk(array: np.ndarray, rows: list[int], folder: Path,
                  chunk: int = 1024) -> np.ndarray:
    """``array[rows]`` of a cached array too large for memory, as a map of a nameless
    temporary file beside it (else in the system's temporary folder): the copy stays on
    disk, not in RAM, and its space is freed with the array. Where no such file can be made
    or given its space (a full disk), the rows are copied into memory, with a warning."""
    shape = (len(rows), *array.shape[1:])
    if not rows:
        return np.empty(shape, array.dtype)
    out, why = None, ""
    for place in (folder, None):  # beside the cache, else the system's temporary folder
        try:
            with tempfile.TemporaryFile(dir=place) as fh:  # the map keeps its own handle
                if hasattr(os, "posix_fallocate"):  # the space now, not a crash later
                    os.posix_fallocate(fh.fileno(), 0, int(np.prod(shape)) * array.itemsize)
                out = np.memmap(fh, dtype=array.dtype, mode="w+", shape=shape)
            break
        except OSError as exc:
            why = first_line(exc)
    if out is None:
        log.warning("the decoded images could not be copied to disk (%s): they are read "
                    "into memory instead", why)
        return np.ascontiguousarray(array[rows])
    for start in range(0, len(rows), chunk):
        out[start:start + chunk] = array[rows[start:start + chunk]]
    return out


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _decode_all(paths, size, interpolation, out: np.ndarray) -> dict[int, str]:
    failures: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            out[i] = decode_image(paths[i], size, interpolation)
        except DecodeError as exc:
            failures[i] = exc.reason

    # Pillow releases the GIL while decoding and resizing, so threads scale over cores.
    with ThreadPoolExecutor(max_workers=available_cores()) as pool:
        list(pool.map(work, range(len(paths)), chunksize=32))
    return failures


def _digests(paths: list[Path], failures: dict[int, str]) -> list[str | None]:
    """The files' digests (reading them again is cheap: the system still caches them)."""

    def digest(i: int) -> str | None:
        if i in failures:
            return None
        try:
            return file_digest(paths[i])
        except DecodeError:
            return None

    with ThreadPoolExecutor(max_workers=available_cores()) as pool:
        return list(pool.map(digest, range(len(paths)), chunksize=64))


def _write_meta(meta_file: Path, meta: dict) -> None:
    with written_whole(meta_file) as tmp:
        tmp.write_text(json.dumps(meta))


def load_cached_array(path: Path, shape: tuple[int, ...], dtype: np.dtype | None = None,
                      mmap: bool = False) -> np.ndarray | None:
    """The array a cache file holds, when its shape begins with ``shape`` and its values
    are ``dtype``; None, with a warning, when the file is damaged (truncated, written over,
    of another shape), so that the caller computes the array again and writes it over."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        fits = array.shape[:len(shape)] == tuple(shape)
        problem = None if fits else f"shape {array.shape} where {tuple(shape)} was expected"
        if fits and dtype is not None and array.dtype != dtype:
            problem = f"{array.dtype} values where {np.dtype(dtype)} was expected"
    except (OSError, ValueError, EOFError) as exc:
        problem = first_line(exc)
    if problem is None:
        return array
    _warn_damaged(path, problem)
    return None


def _warn_damaged(path: Path, problem: str) -> None:
    log.warning("the cache file %s is damaged (%s): computed again", path, problem)


def _read_cached_images(data_file: Path, meta_file: Path,
                        shape: tuple[int, ...]) -> tuple[np.ndarray, list[str], dict] | None:
    """A cache entry of decoded images (array, file digests, failures by row), or None when
    it is missing or damaged."""
    if not (data_file.exists() and meta_file.exists()):
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        failures = {int(k): str(v) for k, v in meta["failures"].items()}
        digests = [str(d) for d in meta["digests"]]
        if len(digests) != shape[0]:
            raise ValueError(f"{len(digests)} digests for {shape[0]} images")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        _warn_damaged(meta_file, f"no {exc}" if isinstance(exc, KeyError) else first_line(exc))
        return None
    array = load_cached_array(data_file, shape, np.uint8, mmap=True)
    return None if array is None else (array, digests, failures)


def _decode_failures_again(paths: list[Path], size: tuple[int, int], interpolation: str,
                           cached: tuple[np.ndarray, list, dict], data_file: Path,
                           meta_file: Path) -> tuple[np.ndarray, list, dict]:
    """A cache entry's images that failed to decode, tried again: a file made readable
    since, or of a format whose Pillow plugin was installed since, leaves the cache key as
    it was. Those that decode now are written into the entry when the cache can be written,
    and are (array, digests, failures) in any case."""
    array, digests, failures = cached
    rows = sorted(failures)
    decoded = np.empty((len(rows), *array.shape[1:]), dtype=np.uint8)
    still = _decode_all([paths[i] for i in rows], size, interpolation, decoded)
    fixed = [j for j in range(len(rows)) if j not in still]
    if not fixed:
        return cached
    log.info("%d image(s) that had failed to decode now decode", len(fixed))
    failures = {rows[j]: reason for j, reason in still.items()}
    digests = list(digests)
    for j, digest in zip(fixed, _digests([paths[rows[j]] for j in fixed], {}), strict=True):
        digests[rows[j]] = digest
    rewritten = [rows[j] for j in fixed]
    try:
        entry = np.load(data_file, mmap_mode="r+") if cache_writable(data_file.parent) else None
    except OSError:  # the folder can be written, the entry not
        entry = None
    if entry is None:
        array = np.array(array)
        array[rewritten] = decoded[fixed]
        return array, digests, failures
    entry[rewritten] = decoded[fixed]
    entry.flush()  # the rows first: a row the record lists as failed is never read
    _write_meta(meta_file, {"failures": failures, "shape": entry.shape, "digests": digests})
    del entry
    return np.load(data_file, mmap_mode="r"), digests, failures


def _contents_key(key: str, failures: dict[int, str]) -> str:
    if not failures:
        return key  # as it was before failures counted: features cached then stay valid
    failed = json.dumps(sorted(failures)).encode()
    return f"{key[:16]}{hashlib.sha256(failed + key.encode()).hexdigest()[:16]}"


def load_images(
    paths: list[Path],
    size: tuple[int, int],
    interpolation: str = "bilinear",
    use_cache: bool = True,
) -> DecodedImages:
    """Decode ``paths`` at ``size`` (height, width), through the on-disk cache."""
    paths = [Path(p) for p in paths]
    key = cache_key(paths, size, interpolation)
    folder = cache_dir("images")
    data_file, meta_file = folder / f"{key}.npy", folder / f"{key}.json"
    shape = (len(paths), size[0], size[1], 3)
    cached = _read_cached_images(data_file, meta_file, shape) if use_cache else None
    if cached is not None:
        array, digests, failures = cached
        log.debug("image cache hit %s (%d images)", key, len(paths))
        if failures:
            array, digests, failures = _decode_failures_again(
                paths, size, interpolation, cached, data_file, meta_file)
    else:
        use_cache = use_cache and cache_writable(folder)
        log.info("decoding %d images at %dx%d%s", len(paths), *size,
                 " (cached for later runs)" if use_cache else "")
        if use_cache:
            with written_whole(data_file) as tmp:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                failures = _decode_all(paths, size, interpolation, array)
                array.flush()
                del array
            digests = _digests(paths, failures)
            _write_meta(meta_file, {"failures": failures, "shape": shape, "digests": digests})
            array = np.load(data_file, mmap_mode="r")
        else:
            array = np.empty(shape, dtype=np.uint8)
            failures = _decode_all(paths, size, interpolation, array)
            digests = _digests(paths, failures)
    kept = [i for i in range(len(paths)) if i not in failures]
    if array.nbytes <= IN_MEMORY_FRACTION * _physical_memory():
        array = np.ascontiguousarray(array[kept]) if failures else np.array(array)
    elif failures:  # mapped from the cache (else in memory already)
        array = _rows_on_disk(array, kept, folder) if isinstance(array, np.memmap) \
            else np.ascontiguousarray(array[kept])
    return DecodedImages(
        array=array,
        paths=[paths[i] for i in kept],
        kept=kept,
        failures={paths[i]: reason for i, reason in failures.items()},
        key=_contents_key(key, failures),
        digests=[digests[i] for i in kept],
    )
