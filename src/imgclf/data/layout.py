"""Finding splits, classes and image files in a dataset folder, whatever its layout.

Supported layouts, detected in this order:
- explicit ``train`` / ``val`` / ``test`` paths;
- a root holding ``train/`` plus any of ``val/``, ``valid/``, ``validation/``, ``test/``;
  a prefix such as Kaggle's ``seg_train`` counts too (unless two folders would be one
  split that way: ``freight_train/``, ``passenger_train/`` are classes), as do endings
  such as ``train_data``; a doubled folder (``seg_train/seg_train/<class>``) is followed,
  and so is a sole folder around the splits (``archive/seg_train/...``);
- a single folder of class subfolders, which imgclf splits itself.
Hidden folders and linked folders that loop back are neither splits nor classes.
Files are recognised by content: anything that is not hidden or a known system file
is probed, and what is not an image is skipped and counted. A run folder that imgclf
wrote (``imgclf.paths.is_run_folder``) is never a class, a split or a folder to walk.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.config import DATA_PATH_SETTINGS, resolved_paths
from imgclf.data.decode import IMAGE_EXTENSIONS, SYSTEM_FILES, DecodeError, probe
from imgclf.errors import DataError
from imgclf.paths import absolute, is_run_folder

log = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
    "pred": "pred", "predict": "pred", "prediction": "pred", "unlabelled": "pred",
    "unlabeled": "pred",
}
SPLIT_SUFFIXES = ("_set", "-set", " set", "set", "_data", "-data", " data", "_images",
                  "-images", " images", "_imgs", "-imgs")
"""Endings a split folder's name may have: Kaggle's training_set, trainset, train_data."""
TOOL_FOLDERS = frozenset({".git", ".hg", ".svn", ".dvc", ".ipynb_checkpoints", ".idea",
                          ".vscode"})
"""Hidden folders that tools keep beside data: left out like any hidden folder, unnoted."""
FEW_IMAGES = 10
"""A class with fewer training images than this gets a warning."""
RUN_FOLDER = "imgclf run folder, not data"
"""Why a run folder met while walking a folder is left out."""
LOOP = "linked folder that loops back to a folder above it"
"""Why a linked folder is left out, walking or among the classes."""


@dataclass(frozen=True)
class Skipped:
    """A file that was left out of a split, and why."""

    path: Path
    reason: str


@dataclass
class Split:
    """One split's labelled images: ``paths[i]`` belongs to class index ``labels[i]``."""

    name: str
    root: Path | None
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    digests: list[str | None] = field(default_factory=list)
    """Each image's ``file_digest``, once decoded (``decode_split``)."""
    warnings: list[str] = field(default_factory=list)
    """What reading the split found that training warns about and goes on: val or test
    class folders without a readable image (``scan_split``)."""

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices, name: str) -> Split:
        """A new split holding the given positions of this one (skips stay with the parent)."""
        return Split(name, self.root, [self.paths[i] for i in indices],
                     [self.labels[i] for i in indices])


@dataclass
class Layout:
    """Where each split of a dataset lives; ``val`` is None when imgclf must split train."""

    train: Path | None
    """None only for a layout detected without ``need_train`` (evaluating a test split)."""
    val: Path | None = None
    test: Path | None = None
    unlabelled: Path | None = None
    kind: str = "explicit"
    notes: list[str] = field(default_factory=list)
    """What detection decided that a user could not guess: folders ignored, a split
    without class folders taken as unlabelled images."""

    def splits(self) -> dict[str, Path]:
        return {k: v for k, v in (("train", self.train), ("val", self.val),
                                  ("test", self.test)) if v is not None}


def is_hidden_or_system(path: Path, root: Path) -> bool:
    """True for dot-files, files inside dot-folders and OS clutter such as Thumbs.db."""
    rel = path.relative_to(root).parts
    return any(p.startswith(".") or p.startswith("__MACOSX") for p in rel) or (
        path.name.lower() in SYSTEM_FILES
    )


def _alias(name: str, whole: bool = False) -> str | None:
    """The split a folder name stands for: ``train``, ``training_set``, ``train_data``,
    or, unless ``whole``, by its last word: ``seg_train``."""
    low = name.lower()
    for suffix in SPLIT_SUFFIXES:
        low = low.removesuffix(suffix)
    words = () if whole else (low.rsplit("_", 1)[-1], low.rsplit("-", 1)[-1])
    for candidate in (low, *words):
        if candidate in SPLIT_ALIASES:
            return SPLIT_ALIASES[candidate]
    return None


def _links_back(here: str, target: str) -> bool:
    """Whether a linked folder in the real folder ``here`` whose real path is ``target``
    leads back to ``here`` or a folder above it (walking it would loop)."""
    return _within(here, target)


def _within(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is the real folder ``folder`` or lies inside it."""
    return path == folder or path.startswith(folder + os.sep)


def _left_out(sub: Path) -> str | None:
    """Why the folder ``sub`` is neither a class nor a split, or None when it may be one."""
    if sub.name.startswith("."):
        return "is hidden (its name starts with a dot)"
    if _links_back(os.path.realpath(sub.parent), os.path.realpath(sub)):
        return f"is a {LOOP}"
    if is_run_folder(sub):
        return f"is an {RUN_FOLDER}"
    return None


def _listing(folder: Path) -> list[Path]:
    """What ``folder`` holds; DataError naming it when it cannot be listed (no permission):
    a dataset or split folder read in part would give other figures than the whole."""
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot read the folder {folder}: {exc.strerror or exc}. Give "
                        "this user permission to read it, or leave it out.") from None


def _folders_in(folder: Path) -> list[Path]:
    """The subfolders of ``folder``, sorted, but for macOS zips' ``__MACOSX`` clutter."""
    return sorted(p for p in _listing(folder)
                  if p.is_dir() and not p.name.startswith("__MACOSX"))


def _subdirs(folder: Path) -> list[Path]:
    """The subfolders that may be classes or splits: not hidden, not links back to a folder
    above, not imgclf runs."""
    return [p for p in _folders_in(folder) if _left_out(p) is None]


def _class_folders(split: Path) -> list[Path]:
    """The ``_subdirs`` of a split taken as its classes: each real folder once (``_twins``)."""
    folders = _subdirs(split)
    twins = _twins(folders)
    return [p for p in folders if p not in twins]


def _twins(folders: list[Path]) -> dict[Path, Path]:
    """Each of ``folders`` that is another of them reached through a link, to that other:
    the folder itself rather than a link to it (else the first by name). As classes, both
    would give each of its images two labels. (Two splits that are one folder are a
    warning of ``prepare_data``'s.)"""
    real = {folder: os.path.realpath(folder) for folder in folders}
    first: dict[str, Path] = {}
    for folder in sorted(folders, key=lambda p: (p.is_symlink(), p.name)):
        first.setdefault(real[folder], folder)
    return {p: first[real[p]] for p in folders if first[real[p]] != p}


def _left_out_notes(layout: Layout, root: Path | None) -> list[str]:
    """A note for each folder among the splits or classes of ``layout`` that ``_subdirs``
    or ``_class_folders`` leaves out, named from ``root`` where it lies inside it."""
    notes = []
    splits = (layout.train, layout.val, layout.test)
    for folder in dict.fromkeys(f for f in (root, *splits) if f is not None):
        reasons = {sub: _left_out(sub) for sub in _folders_in(folder)}
        if folder in splits:
            kept = [sub for sub, reason in reasons.items() if reason is None]
            for sub, twin in _twins(kept).items():
                reasons[sub] = f"is {twin.name}/ again, through a link (read once)"
        for sub, reason in reasons.items():
            if reason is not None and sub.name not in TOOL_FOLDERS:
                shown = sub.relative_to(root) if root and sub.is_relative_to(root) else sub
                notes.append(f"{shown}/ {reason}: ignored")
    return notes


def shown(name: str | Path) -> str:
    """A class name, or a class folder's path, as messages and tables show it: quoted when
    the name has spaces at an end, so that 'sea ' does not read as sea."""
    last = name.name if isinstance(name, Path) else name
    return repr(str(name)) if last != last.strip() else str(name)


def _look_alike(name: str) -> str:
    """A class name without its case and runs of spaces: names alike so look one in reports."""
    return " ".join(_same_name(name).split()).casefold()


def _look_alike_notes(layout: Layout) -> list[str]:
    """A note for class folders whose names differ only in case or spaces: in the training
    split, classes that look like one; in another, a folder that is not the training class
    it looks like (an error then names it as a class training lacks)."""
    if layout.train is None:
        return []
    alike: dict[str, list[str]] = {}
    for sub in _class_folders(layout.train):
        alike.setdefault(_look_alike(sub.name), []).append(sub.name)
    notes = [f"the class folders {', '.join(map(repr, names))} in {layout.train} differ only "
             f"in case or spaces: they are {len(names)} classes. Merge them if they are one"
             for names in alike.values() if len(names) > 1]
    exact = {_same_name(name) for names in alike.values() for name in names}
    for split in ("val", "test"):
        root = getattr(layout, split)
        for sub in _class_folders(root) if root is not None else ():
            like = alike.get(_look_alike(sub.name))
            if like and _same_name(sub.name) not in exact:
                notes.append(f"the {split} split's class folder {sub.name!r} differs from the "
                             f"training class {like[0]!r} only in case or spaces: rename it "
                             "to match")
    return notes


def _holds_files(folder: Path) -> bool:
    """Whether ``folder`` itself holds files other than hidden and system ones."""
    return any(p.is_file() and not is_hidden_or_system(p, folder) for p in _listing(folder))


def _follow_doubled(folder: Path) -> Path:
    """Kaggle zips often hold ``seg_train/seg_train/<class>``: step into the inner folder."""
    while True:
        inner = _subdirs(folder)
        if (len(inner) == 1 and not _holds_files(folder)
                and inner[0].name.lower() == folder.name.lower()):
            folder = inner[0]
        else:
            return folder


def _unwrap(folder: Path, need_train: bool) -> tuple[Path, Layout | None]:
    """``folder`` and its split layout (or None), stepping into a sole subfolder that holds
    a whole dataset (an ``archive/`` unzipped around Kaggle's split folders), with a note."""
    root = _follow_doubled(folder)
    layout = _find_splits(root, need_train)
    inner = _subdirs(root)
    if layout is None and len(inner) == 1 and not _holds_files(root):
        wrapped = _follow_doubled(inner[0])
        layout = _find_splits(wrapped, need_train)
        if layout is not None:
            layout.notes.insert(0, f"{root} holds only {inner[0].name}/, a whole dataset "
                                   f"(split folders): it is read from there")
            return wrapped, layout
    return root, layout


def require_folder(name: str, value) -> None:
    """A DataError unless ``value`` (when given) is an existing folder."""
    if value is not None and not Path(value).is_dir():
        raise DataError(f"{name} folder {str(value)!r} does not exist or is not a folder.")


def skipped_hint(skipped: list[Skipped]) -> str:
    """' (3 file(s) skipped: truncated file, ...)' for a message about a folder left empty."""
    if not skipped:
        return ""
    more = ", ..." if len({s.reason for s in skipped}) > 1 else ""
    return f" ({len(skipped)} file(s) skipped: {skipped[0].reason}{more})"


def detect_layout(
    data: Path | None = None,
    train: Path | None = None,
    val: Path | None = None,
    test: Path | None = None,
    need_train: bool = True,
) -> Layout:
    """Work out the layout of ``data`` (or use the explicit split paths). Without
    ``need_train``, split folders without a training split count too (DATA/test/<class>,
    for evaluation). Run folders among the splits or classes are left out, with a note."""
    for name, value in (("data", data), ("train", train), ("val", val), ("test", test)):
        require_folder(name, value)
    root = None
    if train is not None:
        if data is not None:
            raise DataError(
                f"Both a DATA folder ({str(data)!r}) and a train folder ({str(train)!r}; "
                "--train, or data.train in a config file) were given: pass DATA alone, or "
                "--train (with --val/--test) alone."
            )
        layout = Layout(_follow_doubled(Path(train)), val and _follow_doubled(Path(val)),
                        test and _follow_doubled(Path(test)), kind="explicit")
        if _find_splits(layout.train) is not None:
            layout.notes.append(
                f"the training folder {train} looks like a whole dataset (split folders such "
                f"as train/ or seg_train/), yet each of its folders is taken as a class: "
                f"pass it as DATA, not as --train, to use its splits")
    elif data is None:
        raise DataError("No dataset given: pass a DATA folder, or --train (and --val/--test).")
    else:
        root, layout = _unwrap(Path(data), need_train)
        if layout is not None:
            if val is not None:
                layout.val = _follow_doubled(Path(val))
            if test is not None:
                layout.test = _follow_doubled(Path(test))
        elif not _subdirs(root):
            runs = [p.name for p in _folders_in(root) if is_run_folder(p)]
            also = f" (only imgclf run folders, which are not data: {runs})" if runs else ""
            if val is not None or test is not None:
                raise DataError(f"{root} holds no class folders{also}.")
            raise DataError(
                f"{root} holds no class folders{also}. imgclf expects one folder per class "
                "(DATA/<class>/*.jpg) or split folders (DATA/train/<class>/*.jpg)."
                + _unlabelled_hint(root)
            )
        else:
            layout = Layout(root, val and Path(val), test and Path(test), kind="single")
    layout.notes += _left_out_notes(layout, root) + _look_alike_notes(layout)
    return layout


def _find_splits(root: Path, need_train: bool = True) -> Layout | None:
    """The split folders under ``root``, or None when it holds no training split with class
    folders (then it is a folder of classes, one of which may well be called ``train``);
    without ``need_train``, a labelled val or test split is enough."""
    candidates: dict[str, list[Path]] = {}
    flat: list[Path] = []
    notes: list[str] = []
    for sub in _subdirs(root):
        role = _alias(sub.name)
        inner = _follow_doubled(sub) if role else sub
        if role is None:
            notes.append(f"{sub.name}/ is not a split folder (train, val, test, pred): ignored")
        elif role != "pred" and not _subdirs(inner):
            flat.append(inner)
        else:
            candidates.setdefault(role, []).append(inner)
    named = {role: [f for f in folders if _alias(f.name, whole=True)]
             for role, folders in candidates.items()}
    if any(len(f) > 1 for f in candidates.values()) and not any(named.values()):
        return None  # freight_train/, passenger_train/: classes, not two training splits
    labelled: dict[str, Path] = {}
    for role, folders in candidates.items():
        labelled[role] = (named[role] or folders)[0]  # train/ before seg_train/
        notes += [f"{f.name}/ ignored: {labelled[role].name}/ is already the {role} split"
                  for f in folders if f != labelled[role]]
    if "train" not in labelled and (need_train or not labelled.keys() & {"val", "test"}):
        return None
    for folder in flat:  # a test/ of loose images, as competitions ship it
        if "pred" in labelled:
            notes.append(f"{folder.name}/ holds no class folders: ignored")
        else:
            notes.append(f"{folder.name}/ holds no class folders: its images are taken as "
                         "unlabelled, for imgclf predict")
            labelled["pred"] = folder
    return Layout(labelled.get("train"), labelled.get("val"), labelled.get("test"),
                  labelled.get("pred"), kind="splits", notes=notes)


def find_classes(train_root: Path) -> list[str]:
    """Sorted class folder names of the training split; errors for none or empty ones."""
    classes = [p.name for p in _class_folders(train_root)]
    if not classes:
        raise DataError(
            f"No class folders in {train_root}: put each class's images in its own subfolder."
        )
    return classes


def iter_files(root: Path, fenced: tuple[str, ...] = ()):
    """Yield (path, None) for candidate files and (path, reason) for skipped ones, sorted.

    Linked folders are followed, but each real folder is walked once: a link back to a
    folder above (a loop) or to a folder walked already is skipped with its reason, and so
    is a run folder (its plots are images, but not data), ``root`` included, with a warning.
    So is a subfolder (through a link, or a class folder inside this one) that lies in one
    of ``fenced``, the real paths of folders walked apart (the other classes of a split),
    whose images are theirs.
    """
    if is_run_folder(root):  # given as the folder to walk: left out all the same
        log.warning("%s is an %s: left out", root, RUN_FOLDER)
        yield Path(root), RUN_FOLDER
        return
    walked: set[str] = set()
    unread: list[OSError] = []  # folders os.walk could not list, to be named as skipped
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unread.append):
        yield from _unread_folders(unread)
        here = os.path.realpath(dirpath)
        walked.add(here)
        keep = []
        for name in sorted(dirnames):
            target = os.path.realpath(os.path.join(dirpath, name))
            if _links_back(here, target):
                yield Path(dirpath) / name, LOOP
            elif target in walked:
                yield Path(dirpath) / name, "folder reached twice through links (read once)"
            elif any(_within(target, other) for other in fenced):
                yield Path(dirpath) / name, "folder of another class (read as that class)"
            elif is_run_folder(target):
                log.warning("%s is an %s: left out", Path(dirpath) / name, RUN_FOLDER)
                yield Path(dirpath) / name, RUN_FOLDER
            else:
                walked.add(target)
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_hidden_or_system(path, root):
                yield path, "hidden or system file"
            else:
                yield path, None
    yield from _unread_folders(unread)


def _unread_folders(errors: list[OSError]):
    """(folder, reason) for each folder in ``errors`` that could not be listed (no
    permission to read it, say), emptying the list: its files are unknown, not absent."""
    while errors:
        exc = errors.pop(0)
        yield Path(exc.filename), f"cannot read folder: {exc.strerror or exc}"


def scan_files(folder: Path, fenced: tuple[str, ...] = ()):
    """Yield the files under ``folder`` (recursively) in the order ``iter_files`` walks them
    (with ``fenced``): (path, None) for an image, recognised by content, and (path, reason)
    for a file skipped."""
    for path, reason in iter_files(folder, fenced):
        if reason is None:
            try:
                probe(path)
            except DecodeError as exc:
                reason = exc.reason
                if path.suffix.lower() not in IMAGE_EXTENSIONS and reason.startswith("not a "):
                    reason = f"not an image ({reason})"
        yield path, reason


def scan_folder(folder: Path, fenced: tuple[str, ...] = ()) -> tuple[list[Path],
                                                                       list[Skipped]]:
    """Image files under ``folder`` (recursively) by content, and the files skipped with
    why; ``fenced`` as ``iter_files`` takes it."""
    images: list[Path] = []
    skipped: list[Skipped] = []
    for path, reason in scan_files(folder, fenced):
        if reason is None:
            images.append(path)
        else:
            skipped.append(Skipped(path, reason))
    return images, skipped


def _same_name(name: str) -> str:
    """A class name as compared across splits: the same letters in the same Unicode form
    (macOS and some archives write 'é' as 'e' plus an accent, which looks identical)."""
    return unicodedata.normalize("NFC", name)


def unknown_classes(root: Path, classes: list[str]) -> list[str]:
    """The class folders of ``root`` that are not among ``classes``."""
    known = {_same_name(c) for c in classes}
    return sorted(p.name for p in _class_folders(root) if _same_name(p.name) not in known)


def scan_split(name: str, root: Path, classes: list[str], strict: bool = True,
               source: str = "the training split") -> Split:
    """Read one labelled split; class folders not in ``classes`` (those of ``source``) and
    training classes without a readable image are errors, unless ``strict`` is False
    (the audit lists them, and leaves the unknown folders out). Another split's class
    folder without a readable image is a line in ``warnings``, logged when ``strict``
    (the audit reports the lines instead)."""
    folders = {_same_name(p.name): p for p in _class_folders(root)}
    unknown = unknown_classes(root, classes)
    if unknown and strict:
        # A folder of classes evaluated whole is named after itself.
        where = f"{name} split {root}" if name in ("train", "val", "test") else root
        raise DataError(
            f"{where} has class folder(s) {unknown} that {source} does not have "
            f"(its classes: {classes}). Rename or remove them"
            + (", or add them to the training data." if source == "the training split"
               else "." + _unlabelled_hint(root))
        )
    split = Split(name, root)
    # Each image, one label, whatever order the classes are walked in: no class folder's
    # walk enters another's (through a link, or a class folder inside it); a class folder
    # inside another is walked whole as its own.
    real = {folder: os.path.realpath(folder) for folder in folders.values()}
    for index, cls in enumerate(classes):
        folder = folders.get(_same_name(cls))
        fenced = tuple(path for other, path in real.items()
                       if other != folder and not (folder and _within(real[folder], path)))
        images, skipped = scan_folder(folder, fenced) if folder is not None else ([], [])
        split.skipped.extend(skipped)
        if folder is not None and not images and name == "train" and strict:
            raise DataError(
                f"Class folder {shown(folder)} holds no readable images"
                f"{skipped_hint(skipped)}. Add images or remove the folder."
            )
        if not images and name != "train":
            why = (f"class folder {shown(folder)} holds no readable images"
                   f"{skipped_hint(skipped)}"
                   if folder is not None else f"{root} has no folder of class {cls!r}")
            split.warnings.append(f"{why}: the {name} split has no image of class {cls!r}")
            if strict:
                log.warning("%s", split.warnings[-1])
        split.paths.extend(images)
        split.labels.extend([index] * len(images))
    loose = [p for p in _listing(root) if p.is_file() and not p.name.startswith(".")]
    split.skipped.extend(Skipped(p, "file outside any class folder") for p in loose)
    return split


def _unlabelled_hint(root: Path) -> str:
    """For a folder with image files outside any class folder: they have no label, and
    ``imgclf predict`` is what classifies such images."""
    try:
        loose = sum(1 for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in IMAGE_EXTENSIONS)
    except OSError:
        return ""
    return (f" Its {loose} image file(s) outside any class folder have no label: to classify "
            "unlabelled images, use `imgclf predict RUN FOLDER`.") if loose else ""


def small_classes(split: Split, classes: list[str]) -> list[str]:
    """A line for every class with very few training images (under ``FEW_IMAGES``; a class
    with none is an error, or in the audit a problem)."""
    counts = Counter(split.labels)
    return [f"class {classes[i]!r} has only {counts.get(i, 0)} training image(s); results "
            "for it will be unreliable"
            for i in range(len(classes)) if 0 < counts.get(i, 0) < FEW_IMAGES]


def warn_small_classes(split: Split, classes: list[str], logged=()) -> list[str]:
    """Log (and return) a warning for every class with very few training images, except
    the lines among ``logged``."""
    warnings = small_classes(split, classes)
    for text in warnings:
        if text not in logged:
            log.warning("%s", text)
    return warnings


def summarize(split: Split) -> str:
    """'train/ (8741 images, 6 classes)' for the one-line layout report."""
    n_cls = len(set(split.labels)) if split.labels else 0
    if split.root is None:
        label = split.name
    else:
        folder = absolute(split.root).name
        # --test some/folder, --val other/test: say which role the folder plays (train
        # comes first, so a folder of classes needs no "train" before its name)
        role = _alias(folder)
        plain = role == split.name or (role is None and split.name == "train")
        label = f"{folder}/" if plain else f"{split.name} {folder}/"
    text = f"{label} ({len(split)} images, {n_cls} classes"
    if split.skipped:
        text += f", {len(split.skipped)} skipped"
    return text + ")"


def data_folders(config: dict) -> dict[str, str] | None:
    """Where a run config's (as its config.yaml holds it) images come from: the training,
    validation and test folders its data settings find (``detect_layout``), as
    ``data.train``, ``data.val`` and ``data.test``, links followed; so ``DATA`` and
    ``--train DATA/train --test DATA/test`` name the same folders. None where the settings
    find no dataset (it moved, say)."""
    section = config.get("data") if isinstance(config.get("data"), dict) else {}
    try:
        layout = detect_layout(*(Path(section[key]) if section.get(key) else None
                                 for key in ("data", "train", "val", "test")))
    except (DataError, OSError):
        return None
    return {f"data.{split}": str(folder.resolve()) for split in ("train", "val", "test")
            if (folder := getattr(layout, split)) is not None}


def other_data(one: dict, other: dict) -> dict[str, tuple[str | None, str | None]]:
    """Where two run configs (as their config.yaml holds them) take images from other
    folders: the splits (``data_folders``) whose folders differ, or, where either finds no
    dataset, the ``DATA_PATH_SETTINGS`` that name others; each with the two folders, in
    the order of their keys. Runs on other data are not ranked together."""
    found = data_folders(one), data_folders(other)
    if None in found:
        found = tuple({key: path for key, path in resolved_paths(config).items()
                       if key in DATA_PATH_SETTINGS} for config in (one, other))
    mine, theirs = found
    return {key: (mine.get(key), theirs.get(key)) for key in sorted(mine.keys() | theirs.keys())
            if mine.get(key) != theirs.get(key)}

