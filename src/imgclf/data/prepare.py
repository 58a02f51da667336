"""From a dataset folder to labelled splits ready for training: layout, classes, split, scan."""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from imgclf.config import Config
from imgclf.data.cache import load_images
from imgclf.data.layout import (
    Layout,
    Skipped,
    Split,
    detect_layout,
    find_classes,
    scan_files,
    scan_split,
    shown,
    skipped_hint,
    summarize,
    warn_small_classes,
)
from imgclf.errors import DataError, RunError
from imgclf.paths import absolute, dataset_paths, open_for_writing

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Classes and labelled splits (train, val, maybe test), plus what was left out and why."""

    classes: list[str]
    layout: Layout
    splits: dict[str, Split]
    val_source: str
    warnings: list[str] = field(default_factory=list)
    """What the layout left out, and splits that are one folder."""
    few: list[str] = field(default_factory=list)
    """A line for each class with few training images (``small_classes``)."""

    @property
    def skipped(self) -> list[tuple[str, Skipped]]:
        return [(name, s) for name, split in self.splits.items() for s in split.skipped]

    @property
    def found(self) -> str:
        """'found train/ (8741 images, 6 classes), test/ (...)': each folder's images as
        they stand now, a validation set split off training counted with its folder."""
        splits = dict(self.splits)
        if self.val_source != "split":
            train, val = splits["train"], splits.pop("val")
            splits["train"] = Split("train", train.root, train.paths + val.paths,
                                    train.labels + val.labels, train.skipped + val.skipped)
        return _found_line(splits, self.layout)

    def summary(self) -> str:
        """The one-line report: the found line, then how validation was drawn."""
        if self.val_source != "split":
            return f"{self.found}; validation: {self.val_source}"
        return self.found

    def contents(self) -> dict:
        """What a resumed run checks it still trains on: the classes, the number of files,
        a digest of each split's files (by their path within the split's folder, so a
        dataset named by another path still matches) with their classes, and one of their
        sizes (an image written over with another is caught; a copy of the dataset is not
        refused for its files' new times). ``listing`` holds each file's split, path (its
        class folder in it) and size, to name what changed (``_entries`` reads it);
        ``trained_on`` is a digest of the training and validation files' alone, which
        model.pt keeps without the listing."""
        digest, sizes, trained_on, listing = (hashlib.sha256(), hashlib.sha256(),
                                              hashlib.sha256(), [])
        for name, split in sorted(self.splits.items()):
            for path, label in zip(split.paths, split.labels, strict=True):
                relative = os.path.relpath(path, split.root) if split.root else str(path)
                size = _size(path)
                digest.update(f"{name}\0{label}\0{relative}\n".encode(errors="surrogateescape"))
                sizes.update(f"{size}\n".encode())
                listing.append(f"{name}\0{relative}\0{size}")
                if name != "test":
                    trained_on.update(f"{listing[-1]}\n".encode(errors="surrogateescape"))
        # The listing as one string: a checkpoint saves and loads it at once, where a list
        # of a million entries would take seconds.
        return {"classes": list(self.classes),
                "files": sum(len(split) for split in self.splits.values()),
                "digest": digest.hexdigest(), "sizes": sizes.hexdigest(),
                "trained_on": trained_on.hexdigest(), "listing": "\0".join(listing)}

    def check_resumable(self, began: dict | None, now: dict | None = None) -> None:
        """RunError unless the data holds the training and validation files that a run
        began with (``began``, from ``contents`` as its checkpoint saved it; None for a
        checkpoint without the record); other test files are a warning (with the run's
        listing: older checkpoints refuse them too). ``now`` is this data's ``contents()``
        where the caller has it already (it reads every file's size)."""
        if began is None:
            return
        now = now if now is not None else self.contents()
        if began["classes"] != now["classes"]:
            raise RunError(f"cannot resume: the run began with the classes "
                           f"{', '.join(began['classes'])}; the data now has "
                           f"{', '.join(now['classes'])}. Restore the dataset as it was, or "
                           "start a new run (another --out).")
        then = None if began.get("listing") is None else _entries(began["listing"])
        found = _entries(now["listing"])
        if then is not None and began.get("trained_on") == now["trained_on"]:
            # The test images alone, which training does not see (the checkpoint's record
            # is of the data its session last trained on).
            changed = _changes(then, found)[2:]
            tested = [any(name == "test" for name, _, _ in entries) for entries in (then, found)]
            if tested[0] != tested[1]:
                raise RunError(f"cannot resume: the data's test split was "
                               f"{'removed' if tested[0] else 'added'} since the run last "
                               f"trained ({changed}), so its figures would be on another split "
                               "than it began to be judged on. Restore the dataset as it was, "
                               "or start a new run (another --out).")
            if changed:
                log.warning("the test split changed since the run last trained (%s): its "
                            "figures will be on the test images as they are now", changed)
            return
        if then is not None:  # name the training and validation files alone
            then, found = map(_training_entries, (then, found))
            files = f"{len(then)} training and validation files then, {len(found)} now"
        else:
            files = f"{began['files']} files then, {now['files']} now"
        changed = _changes(then, found)
        if began["digest"] != now["digest"]:
            raise RunError(f"cannot resume: the data's files, or how they are split into "
                           f"training and validation, changed since the run began "
                           f"({files}{changed}), so it would go on training and validating on "
                           "other images. Restore the dataset as it was, or start a new run "
                           "(another --out).")
        if began.get("sizes", now["sizes"]) != now["sizes"]:  # not in older checkpoints
            raise RunError(f"cannot resume: some of the data's files were written over since "
                           f"the run began (the same names, other sizes{changed}), so it would "
                           "go on training and validating on other images. Restore the dataset "
                           "as it was, or start a new run (another --out).")

    def recount(self) -> None:
        """After decoding dropped files: the report and the small-class warnings again,
        counting only the images that decoded. DataError for a class left without any."""
        counts = Counter(self.splits["train"].labels)
        for index, name in enumerate(self.classes):
            if not counts[index]:
                raise DataError(f"no training image of class {name!r} could be decoded; "
                                "`imgclf audit` lists the files that fail, with their "
                                "reasons. Replace them, or remove the class folder.")
        log.info("after decoding, %s", self.summary())
        self.few = warn_small_classes(self.splits["train"], self.classes, logged=self.few)


SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}


def _entries(listing: str) -> list[tuple[str, str, int]]:
    """(split, path in its folder, size) of each file in a ``contents`` listing."""
    parts = listing.split("\0") if listing else []
    return list(zip(parts[0::3], parts[1::3], map(int, parts[2::3]), strict=True))


def _training_entries(entries: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    return [entry for entry in entries if entry[0] != "test"]


def training_changes(began: dict | None, now: dict) -> str:
    """``_changes`` between the training and validation files of two ``contents`` records
    (empty where ``began`` has no listing)."""
    if began is None or began.get("listing") is None:
        return ""
    return _changes(*(_training_entries(_entries(record["listing"]))
                      for record in (began, now)))


def _changes(began: list | None, now: list, shown: int = 3) -> str:
    """'; gone: forest/x.jpg (training); ...': the files that differ between two
    ``_entries`` lists, each by its path in its split's folder, a few of each kind named;
    empty without the run's listing (older checkpoints)."""
    if began is None:
        return ""
    then = {(name, relative): size for name, relative, size in began}
    found = {(name, relative): size for name, relative, size in now}
    # A file gone from training and new in validation, or back: validation drawn otherwise.
    left = {relative for name, relative in then.keys() - found.keys() if name != "test"}
    arrived = {relative: name for name, relative in found.keys() - then.keys() if name != "test"}
    moved = left & arrived.keys()
    kinds: dict[str, list[str]] = {"gone": [], "new": [], "moved": [], "of another size": []}
    for key in sorted(then.keys() | found.keys(), key=lambda key: key[1]):
        name, relative = key
        if name != "test" and relative in moved:
            if key in then:
                kinds["moved"].append(f"{relative} ({SPLIT_WORDS[name]} to "
                                      f"{SPLIT_WORDS[arrived[relative]]})")
        elif key not in found:
            kinds["gone"].append(f"{relative} ({SPLIT_WORDS[name]})")
        elif key not in then:
            kinds["new"].append(f"{relative} ({SPLIT_WORDS[name]})")
        elif then[key] != found[key]:
            kinds["of another size"].append(f"{relative} ({SPLIT_WORDS[name]})")
    return "".join(f"; {kind}: {', '.join(files[:shown])}"
                   + (f" and {len(files) - shown} more" if len(files) > shown else "")
                   for kind, files in kinds.items() if files)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # gone since the scan: decoding reports it
        return -1


def _found_line(splits: dict[str, Split], layout: Layout) -> str:
    text = "found " + ", ".join(summarize(s) for s in splits.values())
    if layout.unlabelled is not None:
        text += f", {absolute(layout.unlabelled).name}/ (unlabelled, for predict)"
    return text


def split_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split, str]:
    """Seeded split of ``fraction`` of ``train`` for validation; returns (train, val, how
    it was drawn). Stratified, as scikit-learn's train_test_split, when every class has
    images enough for both sides; otherwise one image of each class stays in training, and
    validation is drawn at random from the rest. Either way no class goes unlearnt."""
    if len(train) < 2:
        raise DataError(f"training split has {len(train)} image(s); need at least 2 to split.")
    indices = np.arange(len(train))
    labels = np.asarray(train.labels)
    counts = Counter(train.labels)
    n_val = math.ceil(fraction * len(train))  # as train_test_split rounds
    if not 0 < n_val < len(train):
        raise DataError(f"a validation fraction of {fraction:g} leaves no images on one side "
                        f"of {len(train)} training images; choose one between 0 and 1 that "
                        "does, or give a val/ folder.")
    if min(counts.values()) >= 2 and min(n_val, len(train) - n_val) >= len(counts):
        tr, va = train_test_split(indices, test_size=n_val, stratify=labels, random_state=seed)
        tr, va = _every_class_trained(tr, va, labels, seed)
        how = "stratified"
    else:
        why = ("some class has a single image" if min(counts.values()) < 2 else
               f"it cannot hold every one of {len(counts)} classes on both sides")
        tr, va, n_val = _keeping_one_per_class(indices, labels, n_val, seed)
        how = "random, one image of each class kept for training"
        log.warning("a %g%% validation split of %d images cannot be stratified (%s): "
                    "%d validation images drawn at random, each class keeping one or more "
                    "for training", 100 * fraction, len(train), why, n_val)
    new_train = train.subset(sorted(tr), "train")
    new_train.skipped = train.skipped
    return new_train, train.subset(sorted(va), "val"), how


def _every_class_trained(tr: np.ndarray, va: np.ndarray, labels: np.ndarray,
                         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split with one image of each class it left out of training (scikit-learn
    rounds each class's share: at large fractions a small class can go to validation whole)
    moved there from validation, and one of the class with most training images moved the
    other way, so that both sides keep their sizes."""
    missing = sorted(set(labels.tolist()) - set(labels[tr].tolist()))
    if not missing:
        return tr, va
    rng = np.random.default_rng(seed)
    tr, va = list(tr), list(va)
    for c in missing:
        counts = Counter(labels[tr].tolist())
        largest = max(sorted(counts), key=counts.__getitem__)
        to_train = int(rng.choice([i for i in va if labels[i] == c]))
        to_val = int(rng.choice([i for i in tr if labels[i] == largest]))
        va.remove(to_train)
        tr.append(to_train)
        tr.remove(to_val)
        va.append(to_val)
    log.info("the stratified validation split took every image of %d class(es): one image "
             "of each moved back to training, and as many of the largest classes' to "
             "validation", len(missing))
    return np.array(tr), np.array(va)


def _keeping_one_per_class(indices: np.ndarray, labels: np.ndarray, n_val: int,
                           seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(train, val, validation size): one image of each class drawn for training, then
    validation drawn at random from the rest."""
    rng = np.random.default_rng(seed)
    kept = np.array([rng.choice(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    rest = np.setdiff1d(indices, kept)
    if not len(rest):
        raise DataError(f"every class of the {len(indices)} training images has a single "
                        "image: none is left for validation. Add images, or give a val/ "
                        "folder.")
    n_val = min(n_val, len(rest))
    tr, va = (train_test_split(rest, test_size=n_val, random_state=seed)
              if n_val < len(rest) else ([], rest))
    return np.concatenate([kept, tr]).astype(int), np.asarray(va), n_val


def prepare_data(
    data: str | Path | None = None,
    *,
    train: str | Path | None = None,
    val: str | Path | None = None,
    test: str | Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 42,
    classes: list[str] | None = None,
) -> PreparedData:
    """Find the layout, classes and images; split off validation when the data has none.

    ``classes`` fixes the class list (from a trained run); otherwise it is the sorted
    class folder names of the training split.
    """
    layout = detect_layout(*dataset_paths(data, train, val, test))
    for note in layout.notes:
        log.warning("%s", note)
    if not classes:
        classes = find_classes(layout.train)
        if len(classes) < 2:
            raise DataError(
                f"{layout.train} holds one class folder ({classes[0]!r}): a classifier needs "
                "at least two classes, each in its own folder."
            )
    classes = list(classes)
    splits = {"train": scan_split("train", layout.train, classes)}
    for name in ("val", "test"):
        root = getattr(layout, name)
        if root is not None:
            splits[name] = scan_split(name, root, classes)
            if not len(splits[name]):
                raise DataError(
                    f"the {name} split {root} holds no labelled images"
                    f"{skipped_hint(splits[name].skipped)}. Put its images in class folders "
                    "as in the training split; for unlabelled images use imgclf predict."
                )
    warnings = list(layout.notes)
    roots = {name: Path(root).resolve() for name, root in layout.splits().items()}
    for i, (a, root_a) in enumerate(roots.items()):
        for b, root_b in list(roots.items())[i + 1:]:
            if root_a == root_b:
                text = (f"the {a} and {b} splits are the same folder ({root_a}): the {b} "
                        f"figures will not tell how the model does on new images")
                log.warning("%s", text)
                warnings.append(text)
    if "val" in splits:
        val_source = "split"
    else:
        splits["train"], splits["val"], how = split_validation(splits["train"], val_fraction,
                                                               seed)
        val_source = f"{100 * val_fraction:g}% of train ({how}, seed {seed})"
        drawn = set(splits["val"].labels)
        absent = [shown(name) for index, name in enumerate(classes) if index not in drawn]
        if absent:  # too few images to stratify: validation drawn at random
            text = (f"the validation images hold no image of class(es) {', '.join(absent)}: "
                    "the validation figures, and early stopping on them, leave "
                    f"{'it' if len(absent) == 1 else 'them'} out")
            log.warning("%s", text)
            warnings.append(text)
    few = warn_small_classes(splits["train"], classes)  # the images it will learn from
    for name, split in splits.items():
        if split.skipped:
            log.warning("%s: %d file(s) skipped", name, len(split.skipped))
    return PreparedData(classes, layout, splits, val_source, warnings, few)


def prepare_run_data(config: Config, classes: list[str] | None = None) -> PreparedData:
    """``prepare_data`` as a run's configuration says (its data section and seed). Training
    and ``evaluate --split val``, which draws a run's held-out validation images again, both
    go through here, so that they draw the same images."""
    d = config.data
    return prepare_data(d.data, train=d.train, val=d.val, test=d.test,
                        val_fraction=d.val_fraction, seed=config.seed, classes=classes)


def write_skipped(skipped: list[tuple[str, Skipped]], path: Path) -> None:
    """``skipped.csv``: split, path and reason of each file left out (a header alone when
    none was)."""
    with open_for_writing(path, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["split", "path", "reason"])
        writer.writerows((split, str(absolute(s.path)), s.reason) for split, s in skipped)
    if skipped:
        log.info("%d skipped file(s) listed with their reasons in %s", len(skipped), path)


def copies_of_training_images(splits: dict[str, Split]) -> dict[str, int]:
    """For validation and test: how many of their decoded images are byte-for-byte copies
    of a training image (``imgclf audit`` names them). Such copies flatter the figures:
    the model has seen them."""
    seen = {d for d in splits["train"].digests if d is not None}
    return {name: sum(d in seen for d in splits[name].digests)
            for name in ("val", "test") if name in splits}


def decode_split(split: Split, size: int, interpolation: str, use_cache: bool = True):
    """Decode a split at ``size``; files that fail are moved to ``split.skipped``.

    Returns (uint8 array (N, size, size, 3), labels array); ``split.paths`` and
    ``split.labels`` are trimmed to the images that decoded.
    """
    decoded = load_images(split.paths, (size, size), interpolation, use_cache=use_cache)
    if decoded.failures:
        failed = [Skipped(p, r) for p, r in decoded.failures.items()]
        if not decoded.paths:
            raise DataError(f"none of the images of the {split.name} split {split.root} could "
                            f"be decoded{skipped_hint(failed)}; `imgclf audit` lists them "
                            "with their reasons.")
        split.skipped.extend(failed)
        split.paths, split.labels = decoded.paths, [split.labels[i] for i in decoded.kept]
        for skip in failed:
            log.warning("skipped %s: %s", skip.path, skip.reason)
    split.digests = decoded.digests
    return decoded.array, np.asarray(split.labels, dtype=np.int64), decoded.key


def find_unlabelled(paths: list[str | Path]) -> list[tuple[Path, str | None]]:
    """Every file among ``paths`` once, in the order found (folders are walked, flat or
    nested): (path, None) for an image file, (path, reason) for a file skipped."""
    found: dict[Path, tuple[Path, str | None]] = {}
    for item in map(Path, paths):
        if item.is_dir():
            entries = scan_files(item)
        elif item.exists():
            entries = [(item, None)]
        else:
            entries = [(item, "no such file or folder")]
        for path, reason in entries:
            # A file given twice, or inside two of the folders given, is listed once; like
            # iter_files, a folder is known by its real path, a file by its name in it.
            found.setdefault(Path(os.path.realpath(path.parent)) / path.name, (path, reason))
    return list(found.values())
