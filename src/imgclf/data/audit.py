"""A dataset health check before training: counts, sizes, broken files, duplicates, leakage.

``audit_dataset`` finds the splits the way training does (``detect_layout``,
``find_classes``, ``scan_split``), then reads every image file once on a thread pool:
it hashes the bytes, reads the header, and fully decodes the image at 32x32 (JPEGs in
draft mode, so a big photo costs no more than a small one). A full decode is the only way
to catch a truncated file, whose header looks fine.

From that it reports, per split and class: image counts and the class imbalance; image
sizes, modes and formats; files whose extension is not their real format; unreadable files
with the reason; skipped non-image and hidden files; exact duplicates (identical bytes)
within a split, across splits (test images that are also training images) and across
classes (the same picture under two labels); and near-duplicates across splits, found by a
perceptual hash. The report is a plain, JSON-serialisable dict whose file paths are
relative to the dataset root; ``format_audit`` renders it as terminal tables.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.config import whole_number
from imgclf.data.decode import (
    IMAGE_EXTENSIONS,
    DecodeError,
    ImageInfo,
    decode_image,
    file_digest,
    probe,
)
from imgclf.data.layout import (
    Layout,
    Skipped,
    detect_layout,
    find_classes,
    is_hidden_or_system,
    scan_folder,
    scan_split,
    shown,
    small_classes,
    unknown_classes,
)
from imgclf.machine import available_cores
from imgclf.paths import absolute, dataset_paths

log = logging.getLogger(__name__)

THUMBNAIL = 32
"""Side of the grayscale thumbnail the perceptual hash is computed from."""
HASH_SIDE = 8
"""The hash keeps the HASH_SIDE x HASH_SIDE lowest DCT frequencies: a 64-bit hash."""
NEAR_DUPLICATE_DISTANCE = 6
"""Two images are near-duplicates when their 64-bit perceptual hashes differ in at most this
many bits. (Hashes split at the median have 32 bits set, so distances are even.) Re-encoded,
resized or recoloured copies and burst frames land at 0-6; unrelated photos of one kind of
scene sit around 30. On Intel Scenes every cross-split pair at 6 or less is a real copy,
while at 8 two of the five pairs are different scenes."""
FLAT_LEVEL = 1.0
"""Images whose coarse structure varies by less than this many gray levels (blank or
single-colour pictures) get no perceptual hash: its bits would be rounding noise."""
MAX_LISTED_PAIRS = 10_000
"""Near-duplicate pairs listed in the report at most (all are counted)."""
_PAIR_BLOCK = 1 << 22
"""Hash comparisons per vectorised block: bounds the memory of the near-duplicate search."""

_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SPLIT_ORDER = ("train", "val", "test")


def _dct_matrix(n: int, rows: int) -> np.ndarray:
    """The first ``rows`` rows of the orthonormal DCT-II matrix of size n."""
    k = np.arange(rows)[:, None]
    x = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix.astype(np.float32)


_DCT = _dct_matrix(THUMBNAIL, HASH_SIDE)


def perceptual_hash(pixels: np.ndarray) -> int | None:
    """64-bit pHash of a 32x32 image (RGB or grayscale), or None for a flat image.

    The thumbnail's 2-D DCT is cut to its 8x8 lowest frequencies and each coefficient
    becomes one bit: above the median of the 64 or not (as ``imagehash.phash`` does).
    Low frequencies survive re-encoding, resizing and small colour changes, so copies of
    a picture get hashes a few bits apart while unrelated pictures differ in about half.
    """
    gray = np.asarray(pixels, dtype=np.float32)
    if gray.ndim == 3:
        gray = gray @ _GRAY
    if gray.shape != (THUMBNAIL, THUMBNAIL):
        raise ValueError(f"perceptual_hash needs a {THUMBNAIL}x{THUMBNAIL} image, "
                         f"got shape {pixels.shape}")
    coeffs = _DCT @ gray @ _DCT.T
    # Orthonormal DCT keeps energy: this is the pixel std of the low-frequency picture.
    ac_energy = float((coeffs**2).sum() - coeffs[0, 0] ** 2)
    if np.sqrt(max(ac_energy, 0.0) / gray.size) < FLAT_LEVEL:
        return None
    bits = (coeffs > np.median(coeffs)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    # numpy < 2.0 has no bitwise_count: count the bits of each byte by table lookup.
    return _BYTE_POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8)


def hamming_pairs(
    a: np.ndarray, b: np.ndarray, max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (i, j) with popcount(a[i] ^ b[j]) <= max_distance, and those distances.

    ``a`` and ``b`` are uint64 hash arrays. Brute force in vectorised blocks: 10,000 x
    2,000 hashes take a few tens of milliseconds, and memory stays bounded.
    """
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    found_i, found_j, found_d = [], [], []
    if len(a) and len(b):
        step = max(1, _PAIR_BLOCK // len(b))
        for start in range(0, len(a), step):
            dist = _popcount(a[start:start + step, None] ^ b[None, :])
            i, j = np.nonzero(dist <= max_distance)
            found_i.append(i + start)
            found_j.append(j)
            found_d.append(dist[i, j])
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return (np.concatenate(found_i), np.concatenate(found_j),
            np.concatenate(found_d).astype(np.int64))


@dataclass
class _Inspected:
    """What reading one image file found; ``error`` is set when it could not be decoded."""

    digest: str | None = None
    info: ImageInfo | None = None
    phash: int | None = None
    error: str | None = None


def _inspect(path: Path) -> _Inspected:
    result = _Inspected()
    try:
        result.digest = file_digest(path)
        result.info = probe(path)
        result.phash = perceptual_hash(decode_image(path, size=(THUMBNAIL, THUMBNAIL)))
    except DecodeError as exc:
        result.error = exc.reason
    except OSError as exc:
        result.error = f"cannot read: {exc.strerror or exc}"
    return result


def _inspect_all(paths: list[Path], workers: int | None) -> list[_Inspected]:
    workers = workers or available_cores()
    log.info("decoding %d image files with %d thread(s)", len(paths), workers)
    # Pillow releases the GIL while reading and decoding, so threads scale over cores.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_inspect, paths))


@dataclass(frozen=True)
class _Entry:
    """One labelled image file: its split, class name and path."""

    split: str
    cls: str
    path: Path


def _format_family(fmt: str | None) -> str | None:
    return "JPEG" if fmt == "MPO" else fmt  # MPO is a JPEG with extra frames


def _extension_mismatch(path: Path, fmt: str) -> bool:
    expected = Image.registered_extensions().get(path.suffix.lower())
    return _format_family(expected) != _format_family(fmt)


def _number_summary(values: list[int]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _imbalance(counts: dict[str, int]) -> float | None:
    """Largest over smallest class count; None when a class has no readable image."""
    values = list(counts.values())
    if not values or min(values) == 0:
        return None
    return round(max(values) / min(values), 3)


class _Relative:
    """Turns paths into strings relative to the dataset root, with forward slashes."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()


def _report_root(data: Path | None, layout: Layout) -> Path:
    if data is not None:
        return absolute(data)
    roots = [str(absolute(p)) for p in (layout.train, layout.val, layout.test) if p]
    return Path(os.path.commonpath(roots)) if len(roots) > 1 else Path(roots[0]).parent


def _is_unreadable_image(skip: Skipped, split_root: Path) -> bool:
    """A skipped file that was meant to be an image (rather than clutter or a stray file)."""
    return (
        skip.path.suffix.lower() in IMAGE_EXTENSIONS
        and not is_hidden_or_system(skip.path, split_root)
        and skip.path.parent != split_root
    )


def _class_of(path: Path, split_root: Path) -> str:
    return Path(os.path.relpath(path, split_root)).parts[0]


def _split_summary(root, classes, entries, results, skipped, rel) -> dict:
    """Counts, sizes (as stored, before EXIF rotation), modes and formats of readable images."""
    counts = dict.fromkeys(classes, 0)
    infos = []
    for entry, result in zip(entries, results, strict=True):
        if result.error is None:
            counts[entry.cls] += 1
            infos.append(result.info)
    summary = {
        "path": rel(root),
        "images": len(infos),
        "classes": counts,
        "imbalance_ratio": _imbalance(counts),
        "unreadable": sum(r.error is not None for r in results)
        + sum(_is_unreadable_image(s, root) for s in skipped),
        "skipped": sum(not _is_unreadable_image(s, root) for s in skipped),
    }
    if infos:
        sizes = Counter(f"{i.width}x{i.height}" for i in infos)
        summary.update(
            width=_number_summary([i.width for i in infos]),
            height=_number_summary([i.height for i in infos]),
            common_sizes=[{"size": s, "count": n} for s, n in sizes.most_common(5)],
            modes=dict(Counter(i.mode for i in infos).most_common()),
            formats=dict(Counter(i.format for i in infos).most_common()),
        )
    return summary


def _file_record(entry: _Entry, rel) -> dict:
    return {"split": entry.split, "class": entry.cls, "path": rel(entry.path)}


def _exact_duplicates(entries: list[_Entry], results: list[_Inspected], rel) -> dict:
    """Groups of files with identical bytes, sorted into the three kinds that matter."""
    groups: dict[str, list[_Entry]] = defaultdict(list)
    for entry, result in zip(entries, results, strict=True):
        if result.digest is not None:
            groups[result.digest].append(entry)
    within, across, conflicts = [], [], []
    for members in groups.values():
        if len(members) < 2:
            continue
        files = [_file_record(m, rel) for m in members]
        classes = sorted({m.cls for m in members})
        by_split: dict[str, list[_Entry]] = defaultdict(list)
        for m in members:
            by_split[m.split].append(m)
        for split, in_split in by_split.items():
            if len(in_split) > 1:
                within.append({
                    "split": split,
                    "classes": sorted({m.cls for m in in_split}),
                    "files": [_file_record(m, rel) for m in in_split],
                })
        if len(by_split) > 1:
            across.append({
                "splits": [s for s in _SPLIT_ORDER if s in by_split],
                "same_class": len(classes) == 1,
                "files": files,
            })
        if len(classes) > 1:
            conflicts.append({"classes": classes, "files": files})
    return {"within_split": within, "across_splits": across, "label_conflicts": conflicts}


def _near_duplicates(entries: list[_Entry], results: list[_Inspected], rel) -> dict:
    """Pairs in different splits whose perceptual hashes are close, identical files aside."""
    by_split: dict[str, list[int]] = defaultdict(list)
    flat = 0
    for index, (entry, result) in enumerate(zip(entries, results, strict=True)):
        if result.error is not None:
            continue
        if result.phash is None:
            flat += 1
        else:
            by_split[entry.split].append(index)
    names = [s for s in _SPLIT_ORDER if s in by_split]
    found = []
    for pos, first in enumerate(names):
        for second in names[pos + 1:]:
            ia, ib = by_split[first], by_split[second]
            i, j, dist = hamming_pairs(
                np.array([results[k].phash for k in ia], dtype=np.uint64),
                np.array([results[k].phash for k in ib], dtype=np.uint64),
                NEAR_DUPLICATE_DISTANCE,
            )
            for a, b, d in zip(i.tolist(), j.tolist(), dist.tolist(), strict=True):
                ea, eb = ia[a], ib[b]
                if results[ea].digest != results[eb].digest:
                    found.append((d, ea, eb))
    found.sort(key=lambda t: (t[0], str(entries[t[1]].path), str(entries[t[2]].path)))
    pairs = [
        {
            "distance": d,
            "same_class": entries[a].cls == entries[b].cls,
            "a": _file_record(entries[a], rel),
            "b": _file_record(entries[b], rel),
        }
        for d, a, b in found[:MAX_LISTED_PAIRS]
    ]
    return {
        "checked": True,
        "method": f"pHash: {HASH_SIDE * HASH_SIDE}-bit DCT hash of a {THUMBNAIL}x{THUMBNAIL} "
                  "grayscale thumbnail",
        "max_distance": NEAR_DUPLICATE_DISTANCE,
        "found": len(found),
        "different_class": sum(entries[a].cls != entries[b].cls for _, a, b in found),
        "flat_images_not_hashed": flat,
        "pairs": pairs,
    }


def _problems(report: dict) -> list[str]:
    """What training would stop on, which the audit reports instead of stopping."""
    problems = []
    if len(report["classes"]) < 2:
        problems.append(f"one class only ({report['classes'][0]!r}): a classifier needs at "
                        "least two")
    for cls, count in report["splits"]["train"]["classes"].items():
        if not count:
            problems.append(f"class {cls!r} has no readable training image")
    for name in ("val", "test"):
        unknown = report["splits"].get(name, {}).get("unknown_classes")
        if unknown:
            problems.append(f"the {name} split has class folder(s) {unknown} that the "
                            "training split does not have")
        if name in report["splits"] and not report["splits"][name]["images"]:
            problems.append(f"the {name} split holds no labelled image")
    return problems


def _unlabelled_summary(folder: Path, rel) -> dict:
    images, skipped = scan_folder(folder)
    return {
        "path": rel(folder),
        "images": len(images),
        "skipped": len(skipped),
        "skipped_reasons": dict(Counter(s.reason for s in skipped).most_common()),
    }


def audit_dataset(
    data: str | Path | None = None,
    *,
    train: str | Path | None = None,
    val: str | Path | None = None,
    test: str | Path | None = None,
    near_duplicates: bool = True,
    workers: int | None = None,
) -> dict:
    """Check a dataset for everything that would spoil training or evaluation on it.

    ``data`` is a dataset folder in any layout ``detect_layout`` knows, or pass the split
    folders as ``train`` (and ``val``, ``test``). ``workers`` threads read the files (default:
    one per CPU). ``near_duplicates=False`` skips the perceptual-hash comparison across
    splits. Raises DataError where there is nothing to audit (a missing folder, no class
    folders); what else training would stop on (one class, a training class without a
    readable image, a val/test class or split that training lacks or that holds no labelled
    image) is listed under ``problems``, and what training warns about and goes on (a
    class with few training images, a val/test class folder without a readable image)
    under ``warnings``, in training's own words.

    Returns a JSON-serialisable dict (see the module docstring); ``format_audit`` prints it.
    """
    if workers is not None:
        workers = whole_number(workers, "workers (threads reading the files)",
                               " (or left out: one per CPU core)")
    start = time.perf_counter()
    data, train, val, test = dataset_paths(data, train, val, test)
    layout = detect_layout(data, train, val, test)
    classes = find_classes(layout.train)
    rel = _Relative(_report_root(data, layout))

    # A val/test class that training lacks is a problem to list, but its files are
    # audited too (a leak or a broken file hides there as well as anywhere).
    names = {name: classes + unknown_classes(root, classes)
             for name, root in layout.splits().items()}
    splits = {name: scan_split(name, root, names[name], strict=False)
              for name, root in layout.splits().items()}
    entries = [
        _Entry(name, names[name][label], path)
        for name, split in splits.items()
        for path, label in zip(split.paths, split.labels, strict=True)
    ]
    results = _inspect_all([e.path for e in entries], workers)

    report: dict = {
        "root": str(rel.root),
        "layout": layout.kind,
        "layout_notes": layout.notes,
        "classes": classes,
        "splits": {},
        "unlabelled": None,
        "imbalance_ratio": None,
        "extension_mismatches": [],
        "unreadable": [],
        "skipped": [],
    }
    for name, split in splits.items():
        picked = [k for k, e in enumerate(entries) if e.split == name]
        report["splits"][name] = _split_summary(
            split.root, names[name], [entries[k] for k in picked],
            [results[k] for k in picked], split.skipped, rel,
        )
        report["splits"][name]["unknown_classes"] = names[name][len(classes):]
        for skip in split.skipped:
            if _is_unreadable_image(skip, split.root):
                report["unreadable"].append({"split": name, "class": _class_of(skip.path,
                                             split.root), "path": rel(skip.path),
                                             "reason": skip.reason})
            else:
                report["skipped"].append({"split": name, "path": rel(skip.path),
                                          "reason": skip.reason})
    report["imbalance_ratio"] = report["splits"]["train"]["imbalance_ratio"]
    report["problems"] = _problems(report)
    # The training split's entries come first; its warnings count the files that decode.
    readable = [k for k in range(len(splits["train"])) if results[k].error is None]
    report["warnings"] = small_classes(splits["train"].subset(readable, "train"), classes)
    report["warnings"] += [text for split in splits.values() for text in split.warnings]
    for entry, result in zip(entries, results, strict=True):
        if result.error is not None:
            report["unreadable"].append({**_file_record(entry, rel), "reason": result.error})
        elif _extension_mismatch(entry.path, result.info.format):
            report["extension_mismatches"].append({
                **_file_record(entry, rel),
                "extension": entry.path.suffix.lower() or "(none)",
                "format": result.info.format,
            })
    report["unreadable"].sort(key=lambda r: r["path"])
    if layout.unlabelled is not None:
        report["unlabelled"] = _unlabelled_summary(layout.unlabelled, rel)
    report["exact_duplicates"] = _exact_duplicates(entries, results, rel)
    report["near_duplicates"] = (
        _near_duplicates(entries, results, rel) if near_duplicates else {"checked": False}
    )
    report["seconds"] = round(time.perf_counter() - start, 2)
    log.info("audit of %d image files took %.1f s", _audited(report), report["seconds"])
    return report


def _audited(report: dict) -> int:
    """Image files in the labelled splits: readable ones and those that could not be read."""
    return sum(s["images"] + s["unreadable"] for s in report["splits"].values())


# --- terminal rendering -------------------------------------------------------------------

MAX_SHOWN = 10
"""Rows shown per list in the terminal; the JSON report has them all."""


def _table(header: list[str], rows: list[list], indent: str = "  ") -> list[str]:
    """Columns padded to width: the first left-aligned, numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in [header, *rows]]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    numeric = [c > 0 and all(isinstance(r[c], (int, float)) or r[c] is None for r in rows)
               for c in range(len(header))]
    out = []
    for row in cells:
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(row, widths, numeric, strict=True)]
        out.append((indent + "  ".join(parts)).rstrip())
    return out


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _more(total: int) -> list[str]:
    if total <= MAX_SHOWN:
        return []
    return [f"  ... and {total - MAX_SHOWN:,} more (see the JSON report)"]


def _format_counts(report: dict) -> list[str]:
    names = list(report["splits"])
    columns = [report["splits"][n] for n in names]
    unknown = [cls for c in columns for cls in c.get("unknown_classes", [])]
    rows = [[shown(cls), *(c["classes"].get(cls) for c in columns)]
            for cls in [*report["classes"], *dict.fromkeys(unknown)]]
    rows.append(["total", *(c["images"] for c in columns)])
    rows.append(["unreadable", *(c["unreadable"] for c in columns)])
    rows.append(["skipped", *(c["skipped"] for c in columns)])
    rows.append(["imbalance", *(c["imbalance_ratio"] for c in columns)])
    lines = ["Images per class (imbalance = largest / smallest class)"]
    lines += _table(["class", *names], rows)
    if report["unlabelled"] is not None:
        u = report["unlabelled"]
        lines.append(f"  unlabelled {u['path']}/: {u['images']:,} image(s)"
                     + (f", {u['skipped']:,} skipped" if u["skipped"] else ""))
    return lines


def _format_sizes(report: dict) -> list[str]:
    rows = []
    for name, s in report["splits"].items():
        if not s["images"]:
            continue
        span = lambda d: f"{d['min']}/{d['median']:g}/{d['max']}"  # noqa: E731
        rows.append([
            name, span(s["width"]), span(s["height"]),
            ", ".join(f"{c['size']} ({c['count']:,})" for c in s["common_sizes"][:3]),
            ", ".join(f"{k} {v:,}" for k, v in s["modes"].items()),
            ", ".join(f"{k} {v:,}" for k, v in s["formats"].items()),
        ])
    return ["Image sizes (min/median/max), modes and formats"] + _table(
        ["split", "width", "height", "most common sizes", "modes", "formats"], rows)


def _format_files(title: str, records: list[dict], describe) -> list[str]:
    if not records:
        return [f"{title}: none"]
    lines = [f"{title}: {len(records):,}"]
    lines += [f"  {describe(r)}" for r in records[:MAX_SHOWN]]
    return lines + _more(len(records))


def _format_skipped(records: list[dict]) -> list[str]:
    if not records:
        return ["Skipped files (hidden, system, not images): none"]
    reasons = Counter(r["reason"] for r in records)
    lines = [f"Skipped files (hidden, system, not images): {len(records):,}"]
    lines += [f"  {n:,} x {reason}" for reason, n in reasons.most_common()]
    lines += [f"  {r['path']}: {r['reason']}" for r in records[:MAX_SHOWN]]
    return lines + _more(len(records))


def _format_exact(dups: dict) -> list[str]:
    within, across, conflicts = dups["within_split"], dups["across_splits"], dups["label_conflicts"]
    if not (within or across or conflicts):
        return ["Exact duplicates (identical files): none"]
    leaked_other = sum(not g["same_class"] for g in across)
    lines = ["Exact duplicates (identical files)"]
    shown: list[set] = []  # the files of each group listed so far
    for title, groups in (
        (f"across splits (leakage), {leaked_other:,} under a different class", across),
        ("across classes (label conflicts)", conflicts),
        ("within a split", within),
    ):
        if not groups:  # the kinds found are listed; the heading says when none is
            continue
        # A group is listed once, under its first heading: a label conflict within a split
        # is also a duplicate within that split, and leakage may be a label conflict too.
        fresh = []
        for group in groups:
            files = {(f["split"], f["path"]) for f in group["files"]}
            if not any(files <= earlier for earlier in shown):
                fresh.append(group)
                shown.append(files)
        heading = f"  {title}: {len(groups):,} group(s)"
        if len(fresh) < len(groups):
            heading += f", {len(groups) - len(fresh):,} of them listed above"
        lines.append(heading)
        lines += ["    " + "  =  ".join(f"{f['split']}:{f['path']}" for f in g["files"])
                  for g in fresh[:MAX_SHOWN]]
        lines += ["  " + line for line in _more(len(fresh))]
    return lines


def _format_near(near: dict) -> list[str]:
    if not near.get("checked"):
        return ["Near-duplicates across splits: not checked"]
    title = f"Near-duplicates across splits (pHash distance <= {near['max_distance']} bits)"
    if not near["found"]:
        return [f"{title}: none"]
    lines = [f"{title}: {near['found']:,} pair(s), "
             f"{near['different_class']:,} of them under a different class"]
    lines += [f"  d={p['distance']}  {p['a']['split']}:{p['a']['path']}  ~  "
              f"{p['b']['split']}:{p['b']['path']}" for p in near["pairs"][:MAX_SHOWN]]
    return lines + _more(near["found"])


def format_audit(report: dict) -> str:
    """The audit report as readable terminal tables and lists (the first few of each)."""
    lines = [
        f"Dataset {report['root']}",
        f"  layout: {report['layout']}; {len(report['classes'])} "
        f"class{'' if len(report['classes']) == 1 else 'es'}; "
        f"{_audited(report):,} image files audited in {report['seconds']:g} s",
        *(f"  note: {note}" for note in report["layout_notes"]),
        *(f"  problem (training stops on it): {problem}" for problem in report["problems"]),
        *(f"  warning: {text}" for text in report["warnings"]),
        "",
        *_format_counts(report),
        "",
        *_format_sizes(report),
        "",
        *_format_files("Extension mismatches", report["extension_mismatches"],
                       lambda r: f"{r['path']}: named {r['extension']}, is {r['format']}"),
        *_format_files("Unreadable files", report["unreadable"],
                       lambda r: f"{r['path']}: {r['reason']}"),
        *_format_skipped(report["skipped"]),
        "",
        *_format_exact(report["exact_duplicates"]),
        *_format_near(report["near_duplicates"]),
    ]
    return "\n".join(lines)
