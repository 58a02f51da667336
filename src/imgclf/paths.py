"""Where imgclf keeps its caches (never inside a user's dataset), how it writes files and
reads them back, and how a run folder is told from a folder of data.

Files that imgclf wrote earlier, or that a user hands it, are read back through
``read_text``, ``read_mapping``, ``read_run_config`` and ``load_torch_file``: a damaged one
raises one of imgclf's errors naming the file and how to mend it, never a parser's
traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pickle
import re
import struct
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import platformdirs

from imgclf.errors import ConfigError, ImgclfError, RunError, RunFolderBusy

log = logging.getLogger(__name__)

CACHE_ENV = "IMGCLF_CACHE_DIR"

CONFIG_FILE = "config.yaml"
"""The resolved settings: the first file training writes into a run folder."""
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
"""A run's or an evaluation's results: the last file each writes."""
AUDIT_FILE = "audit.json"
"""The dataset audit that ``imgclf audit`` and ``compare`` write."""
BEST_CHECKPOINT = "best.pt"
"""The weights of the epoch that scored best so far, while a run trains."""
LAST_CHECKPOINT = "last.pt"
"""The state after the last whole epoch, which ``--resume`` continues from."""
TRAINING_CHECKPOINTS = (BEST_CHECKPOINT, LAST_CHECKPOINT)
"""Saved after every epoch while a run trains; ``MODEL_FILE`` appears when it finishes."""
HISTORY_FILE = "history.csv"
"""One row per epoch trained: losses, accuracies, learning rate, seconds."""
RUN_MARKERS = (MODEL_FILE, *TRAINING_CHECKPOINTS, HISTORY_FILE, METRICS_FILE)
"""Files of a run that has trained; with ``CONFIG_FILE`` beside one, a folder is a run."""
LEADERBOARD_FILE = "leaderboard.csv"
"""What marks a compare folder."""
LEADERBOARD_MD = "leaderboard.md"
"""The leaderboard as a Markdown table, beside ``LEADERBOARD_FILE``."""
PREDICTIONS_FILE = "predictions.csv"
"""An evaluation's predictions, one row per image."""
SKIPPED_FILE = "skipped.csv"
"""The image files a run or an evaluation could not read, and why."""
ERROR_FILE = "error.txt"
"""The traceback of a compare run that failed."""
LEARNING_CURVES_FILE = "learning_curves.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
ROC_CURVES_FILE = "roc_curves.png"
RUN_FILES = frozenset({CONFIG_FILE, *RUN_MARKERS, LEADERBOARD_FILE, PREDICTIONS_FILE,
                       SKIPPED_FILE, AUDIT_FILE})
"""Files that training, evaluation and comparison write into their folders under names an
output file could have: written over, reports, comparisons and resuming could no longer
read them."""
PREDICTION_FIELDS = ("path", "label", "predicted", "confidence", "error")
"""The columns of predictions files (evaluation's, predict's) besides one per class."""


PROBABILITY = " (probability)"


def probability_columns(classes: list[str]) -> list[str]:
    """A predictions file's probability columns, one per class and named by it; a class
    named like one of ``PREDICTION_FIELDS``, or ending in ``" (probability)"``, is
    ``<class> (probability)``, so that a reader by column name (pandas,
    ``csv.DictReader``) finds every column and each reads back as its class."""
    return [c + PROBABILITY if c in PREDICTION_FIELDS or c.endswith(PROBABILITY) else c
            for c in classes]


def class_of_column(column: str) -> str:
    """The class of a probability column (``probability_columns`` read back)."""
    name = column.removesuffix(PROBABILITY)
    return name if name in PREDICTION_FIELDS or name.endswith(PROBABILITY) else column


SIGNATURES = {
    METRICS_FILE: '{\n  "n_samples": ',
    PREDICTIONS_FILE: "path,label,predicted,confidence,",
    LEADERBOARD_FILE: "run,method,backbone,",
    LEADERBOARD_MD: "| run | method | backbone |",
    AUDIT_FILE: '{\n  "root": ',
}
"""How each of imgclf's result files begins: how imgclf tells its own files from a user's
files of the same name before it writes over them."""


def begins_with(path: Path, *signatures: str) -> bool:
    """Whether the file ``path`` begins with one of ``signatures`` (False when unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            start = fh.read(max(map(len, signatures), default=0))
    except OSError:
        return False
    return any(start.startswith(signature) for signature in signatures)


def written_by_imgclf(path: Path) -> bool:
    """Whether the file ``path`` begins as imgclf writes a file of its name (``SIGNATURES``);
    False for a file that cannot be read, and for names without a signature."""
    return path.name in SIGNATURES and begins_with(path, SIGNATURES[path.name])


def results_folder(folder: Path) -> bool:
    """A folder of imgclf's results: a run (``config.yaml``), or one holding a metrics file
    or a leaderboard that imgclf wrote (an evaluation, a comparison)."""
    return (folder / CONFIG_FILE).is_file() or any(
        written_by_imgclf(folder / name) for name in (METRICS_FILE, LEADERBOARD_FILE))


def cache_root() -> Path:
    """The user cache folder, as ``cache_dir`` finds it, without creating it."""
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("imgclf"))


def cache_dir(subdir: str | None = None) -> Path:
    """The user cache folder (``$IMGCLF_CACHE_DIR`` or the platform's), created on demand
    where it can be (``cache_writable`` tells whether it was); the first time a process
    asks for a folder, the temporary files that killed processes left in it go."""
    root = cache_root()
    path = root / subdir if subdir else root
    with contextlib.suppress(OSError):  # a read-only cache still serves what it holds
        path.mkdir(parents=True, exist_ok=True)
    if path not in _SWEPT:
        _SWEPT.add(path)
        _remove_leftovers(path)
    return path


_SWEPT: set[Path] = set()
# As ``written_whole`` names them (older ones had no random part).
_LEFTOVER = re.compile(r"^\..*\.tmp(\d+)(-[0-9a-f]+)?(\.[^.]*)?$")
LEFTOVER_AGE = 3600.0
"""Seconds since a temporary file was last written, past which a dead process's is removed."""


def _remove_leftovers(folder: Path) -> None:
    """Remove ``written_whole``'s temporary files in ``folder`` whose process is gone (killed
    before it could clean up) and that have not been written to for ``LEFTOVER_AGE``: a
    decoded split's can be gigabytes. The age spares a live writer in another container
    that shares the folder, whose process this one cannot see."""
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _LEFTOVER.match(entry.name)
            with contextlib.suppress(OSError):
                if match and now - entry.stat().st_mtime > LEFTOVER_AGE \
                        and not _process_alive(int(match[1])):
                    os.unlink(entry.path)
                    log.debug("removed %s, left by a process that was stopped", entry.path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no process's id
        return False
    except OSError:  # another user's process, say
        return True
    return True


_UNWRITABLE: set[Path] = set()


def cache_writable(folder: Path) -> bool:
    """Whether imgclf can add files to the cache folder ``folder``. If not, a warning says
    so (once per folder) and the caller goes on without keeping its results."""
    if os.access(folder, os.W_OK):
        return True
    if folder not in _UNWRITABLE:
        _UNWRITABLE.add(folder)
        log.warning("the cache folder %s cannot be written to: imgclf goes on without keeping "
                    "its results there (point %s at a writable folder to keep decoded images "
                    "and features for later runs)", folder, CACHE_ENV)
    return False


@contextmanager
def run_folder_lock(run_dir: Path):
    """Held while a run trains into ``run_dir`` (or a comparison into its folder), so that a
    second training into the same folder, started before the first has written anything
    there, is refused instead of mixing the two runs' files. The lock is a file in the
    cache folder named for the run folder's real path, locked with ``flock``: the system
    releases it when the process ends, however it ends. Where the cache folder cannot be
    written to, the lock file is in the system's temporary folder; where neither can be,
    or there is no ``flock`` (Windows), nothing is locked (with a warning)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    import hashlib

    name = hashlib.sha256(os.fsencode(run_dir.resolve())).hexdigest()[:32]
    lock = None
    for folder in (cache_dir("locks"), Path(tempfile.gettempdir()) / "imgclf-locks"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = open(folder / f"{name}.lock", "a")  # noqa: SIM115 (held below)
            break
        except OSError:
            continue
    if lock is None:
        log.warning("neither the cache folder nor the temporary folder can be written to: "
                    "a second imgclf process training into %s would not be stopped", run_dir)
        yield
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(f"another imgclf process is training into {run_dir}: wait "
                                "for it to finish, or choose another --out.") from None
        yield


@contextmanager
def written_whole(path: Path):
    """A temporary path beside ``path``, with its suffix, for a writer to fill: renamed to
    ``path`` when the block ends, removed if the block fails or is interrupted, so that the
    file is there whole or not at all."""
    path = Path(path)
    # The process id tells a leftover (``_remove_leftovers``); the random part, a writer in
    # another container sharing the folder under the same id.
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}-{os.urandom(4).hex()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def open_for_writing(path: str | Path, newline: str | None = None):
    """Write a text file whole or not at all: through a temporary file beside it, renamed
    into place when the block ends, removed if it fails; parent folders are created.

    UTF-8, with file-name bytes that are not UTF-8 (Python's ``\\udcXX`` surrogates) written
    as ``\\udcXX`` escapes: the file stays valid UTF-8, and JSON reads them back as they were.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file name", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        with written_whole(path) as tmp, open(tmp, "w", encoding="utf-8",
                                              errors="backslashreplace", newline=newline) as fh:
            yield fh
    except OSError as exc:
        # The temporary file is a detail: a failure to create, fill or rename it (read-only
        # folder, full disk) is reported against the file that was asked for.
        if exc.filename not in (None, str(tmp)):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def unescaped(text: str) -> str:
    """A file name as ``open_for_writing`` wrote it, with its ``\\udcXX`` escapes turned back
    into the bytes that are not UTF-8 they stand for (as Python's surrogates)."""
    return re.sub(r"\\udc([89a-f][0-9a-f])", lambda m: chr(0xDC00 + int(m[1], 16)), text)


def write_text(path: str | Path, text: str) -> None:
    """``Path.write_text`` through ``open_for_writing``."""
    with open_for_writing(path) as fh:
        fh.write(text)


def read_text(path: Path) -> str:
    """The text of ``path``, bytes that are not UTF-8 replaced; RunError when it cannot be
    read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}.") from None


def read_mapping(path: Path, parse: Callable[[str], object], error: type[Exception],
                 file_format: str, contents: str, invalid_fix: str,
                 type_fix: str) -> tuple[str, dict]:
    """The text of a file imgclf wrote and the mapping it holds; RunError if it holds none.

    ``parse`` reads the text and raises ``error`` on text that is not ``file_format``;
    ``contents`` names what the mapping holds, the fixes say how to mend the file.
    """
    text = read_text(path)
    try:
        value = parse(text)
    except error as exc:
        raise RunError(f"{path} is not valid {file_format} ({parse_problem(exc)}); "
                       f"{invalid_fix}.") from None
    if not isinstance(value, dict):
        held = "nothing" if value is None else type(value).__name__
        raise RunError(f"{path} holds {held}, not a mapping of {contents}; {type_fix}.")
    return text, value


def parse_problem(exc: Exception) -> str:
    """What a parser found wrong, and where, on one line (YAML's messages span several)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return first_line(exc)


def first_line(exc: Exception) -> str:
    """An exception's message on one line: its first, or the exception's type if it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_run_config(path: Path) -> tuple[str, dict]:
    """The text of a run's ``config.yaml`` and the settings it holds (not yet checked
    against the config dataclasses); RunError when it is unreadable or damaged."""
    import yaml

    return read_mapping(
        path, yaml.safe_load, yaml.YAMLError, "YAML", "config sections",
        invalid_fix="it is written by `imgclf train`: train the run again or repair the file",
        type_fix="train the run again or repair the file")


def read_run_metrics(path: Path) -> dict:
    """The metrics a run's or an evaluation's ``metrics.json`` holds; RunError when it is
    unreadable or damaged."""
    return read_mapping(
        path, json.loads, json.JSONDecodeError, "JSON", "metrics",
        invalid_fix="evaluate the run again with `imgclf evaluate` or train it again",
        type_fix="evaluate the run again")[1]


def read_audit(path: Path) -> dict:
    """The report an ``audit.json`` holds; RunError when it is unreadable or damaged."""
    return read_mapping(
        path, json.loads, json.JSONDecodeError, "JSON", "audit results",
        invalid_fix="write it again with `imgclf audit DATA --json FILE`",
        type_fix="write it again with `imgclf audit DATA --json FILE`")[1]


# What torch.load raises for a file it did not write, or one damaged since: the unpickler
# meets bytes that are no pickle (no common type), the zip reader a broken archive.
_TORCH_LOAD_ERRORS = (pickle.UnpicklingError, EOFError, LookupError, RuntimeError, ValueError,
                      struct.error)


def load_torch_file(path: Path, damaged: ImgclfError) -> object:
    """What ``torch.save`` wrote to ``path``, read onto the CPU as plain data only
    (``weights_only``); raises ``damaged``, which names the file and the fix, when the file
    is damaged or not one that torch saved. A file that cannot be opened raises OSError."""
    import torch

    try:
        with warnings.catch_warnings():
            # torch warns that a TorchScript archive is one before refusing to read it;
            # ``damaged`` says it better.
            warnings.filterwarnings("ignore", ".*looks like a TorchScript archive", UserWarning)
            # ... and that a plain pickle (not torch.save's archive) asks for an issue to be
            # filed with PyTorch before its unpickler refuses it.
            warnings.filterwarnings("ignore", ".*Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as exc:
        raise damaged from exc


def path_argument(value, what: str, error: type[ImgclfError] = ConfigError) -> Path:
    """``value``, an argument or setting that names a file or folder, as a Path; ``error``
    naming it ``what`` when it is neither a str nor a path, or is empty (an unset shell
    variable, say), which Path would take as the current folder."""
    if not isinstance(value, str | os.PathLike):
        raise error(f"{what} is a file or folder, given as a str or Path; got "
                    f"{type(value).__name__} {value!r}.")
    if not os.fspath(value).strip():
        raise error(f"{what} is an empty path: name a file or folder, or leave it out.")
    return Path(value)


def optional_path(value: str | os.PathLike | None, what: str) -> Path | None:
    """``path_argument`` for a setting that may be left out (None)."""
    return None if value is None else path_argument(value, what)


def dataset_paths(data, train=None, val=None, test=None) -> tuple[Path | None, ...]:
    """A dataset folder and its split folders as given (any may be left out), as Paths."""
    given = {"data": data, "train": train, "val": val, "test": test}
    return tuple(optional_path(value, name) for name, value in given.items())


def absolute(path: str | Path) -> Path:
    """``path`` from the root, with ``.`` and ``..`` worked out as a shell does (``..``
    given as a dataset is named after its folder, not ".."); links are kept, not followed."""
    return Path(os.path.abspath(path))


def is_run_folder(folder: str | Path) -> bool:
    """True for a folder that imgclf training wrote: ``config.yaml`` and at least one of
    ``RUN_MARKERS``. Its plots are images, but never data: dataset layouts and folder walks
    leave such a folder out (with its evaluation folders inside it)."""
    folder = Path(folder)
    try:
        return (folder / CONFIG_FILE).is_file() and any(
            (folder / name).is_file() for name in RUN_MARKERS)
    except OSError:  # a folder that cannot be entered (no permission): none that imgclf wrote
        return False


def enclosing_run(path: str | Path) -> Path | None:
    """The nearest run folder that ``path`` would lie in (not ``path`` itself), if any."""
    return next((folder for folder in absolute(path).parents if is_run_folder(folder)), None)


def check_outside_other_runs(path: str | Path, own: Path | None, fix: str,
                             error: type[ImgclfError] = RunError) -> None:
    """Raise ``error`` for a ``path`` inside a run folder other than ``own`` (the run whose
    output it is, or a folder inside it; None for a new run or comparison): that run's
    reports would show it as the run's own. ``fix`` says where to write instead. The path
    is checked as given and with its links followed."""
    if own is not None and not is_run_folder(own):  # a model.pt kept in a subfolder
        own = enclosing_run(own) or own
    for where in (path, Path(path).resolve()):
        inside = enclosing_run(where)
        if inside is not None and (own is None or inside.resolve() != Path(own).resolve()):
            raise error(f"{path} would be inside {inside}, the folder of another run; {fix}.")


def run_datasets(folder: str | Path) -> list[Path]:
    """The dataset folders that the run ``folder`` (or each run of a compare folder) was
    trained on, as its config.yaml names them; none where there is no readable config."""
    folder = Path(folder)
    found = []
    for config in [folder / CONFIG_FILE, *sorted(folder.glob(f"*/{CONFIG_FILE}"))]:
        try:
            data = read_run_config(config)[1].get("data")
        except RunError:
            continue  # none, or a damaged one, which the commands that need it report
        if isinstance(data, dict):
            found += [Path(data[k]) for k in ("data", "train", "val", "test")
                      if isinstance(data.get(k), str)]
    return found


def folder_holding(path: Path, datasets):
    """The first of ``datasets`` (folders, or None) that ``path`` lies inside, or None, as
    imgclf walks them: through the links in their first levels too."""
    real = path.resolve()
    return next((d for d in datasets if d is not None
                 and any(real.is_relative_to(place) for place in _dataset_places(d))), None)


def _dataset_places(dataset) -> list[Path]:
    """The real folders a dataset spans: itself, and where its linked folders lead, three
    levels down (split, Kaggle's doubled split, class), as imgclf follows them."""
    places, level = [Path(dataset).resolve()], [Path(dataset)]
    for _ in range(3):
        below = []
        for folder in level:
            with contextlib.suppress(OSError):
                for entry in os.scandir(folder):
                    if entry.is_dir():
                        below.append(Path(entry.path))
                        if entry.is_symlink():
                            places.append(Path(entry.path).resolve())
        level = below
    return places


def check_output_file(path: str | Path, suffixes, datasets=(), example: str = "",
                      starts: tuple[str, ...] = (), what: str = "a file") -> Path:
    """Refuse an output file before any work is done: a folder, a name without one of
    ``suffixes`` (when given), one of ``RUN_FILES`` in a run or compare folder, a place
    inside one of ``datasets`` (imgclf never writes into a dataset), or an existing file
    that does not begin with one of ``starts``, as imgclf writes ``what`` (with no
    ``starts``, no existing file is written over): a user's file is never lost, while the
    command can be run again over its own output. ``example`` is a good file name, for the
    messages. Returns ``path`` as a ``Path``."""
    path = path_argument(path, "the output file")
    example = example or (f"output{suffixes[0]}" if suffixes else "output")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: give a file name such as {path / example}.")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(f"{path}: this file is written as {' or '.join(suffixes)}; name it "
                          f"accordingly, e.g. {path.with_name(example)}.")
    folder = path.absolute().parent
    if path.name in RUN_FILES and results_folder(folder):
        written = ("would replace the {} that imgclf wrote into" if path.exists() else
                   "is the name of the {} that imgclf writes into")
        raise ConfigError(f"{path} {written.format(path.name)} {folder}; give this file "
                          f"another name, e.g. {path.with_name('new-' + path.name)}.")
    dataset = folder_holding(path, datasets)
    if dataset is not None:
        raise ConfigError(f"{path} would be inside the dataset {dataset}; imgclf never "
                          "writes into a dataset: choose a place outside it.")
    if path.exists() and not (starts and begins_with(path, *starts)):
        raise ConfigError(f"{path} exists and is not {what} that imgclf wrote; give the "
                          "output another name, or move that file away.")
    _check_writable(path)
    return path


def _check_writable(path: Path, folder: Path | None = None) -> None:
    """Refuse a file (or, with ``folder`` the path itself, a folder) that cannot be created
    where it is asked for (a read-only folder or file system, a file where a folder should
    be), by creating and removing a temporary file in the nearest folder that exists from
    ``folder`` (the file's) up: ``os.access`` cannot tell for the superuser or on a
    read-only mount. Folders still missing are left for the writer to create."""
    folder = (folder or path.parent).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder")
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"{path} cannot be written ({folder}: {exc.strerror or exc}); "
                          "choose another place.") from None


def check_output_folder(folder: str | Path, datasets, is_ours) -> None:
    """Refuse an output folder that is a file, lies inside one of ``datasets`` (imgclf never
    writes into a dataset), holds a file under one of imgclf's names that imgclf did not
    write (``SIGNATURES``), or holds files that ``is_ours`` (given the set of entry names)
    does not recognise as imgclf's own from an earlier run of the same command. The cache
    folder, which the same commands write decoded images into, may not lie inside one of
    ``datasets`` either."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunError(f"--out {folder} is a file; give a folder for the results.")
    dataset = folder_holding(folder, datasets)
    if dataset is not None:
        raise RunError(f"the output folder {folder} would be inside the dataset {dataset}; "
                       "imgclf never writes into a dataset: choose --out elsewhere.")
    dataset = folder_holding(cache_root(), datasets)
    if dataset is not None:
        raise ConfigError(f"the cache folder {cache_root()} is inside the dataset {dataset}; "
                          f"imgclf never writes into a dataset: point {CACHE_ENV} elsewhere.")
    _check_writable(folder, folder)  # now, not after the data is read
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    theirs = [name for name in names & SIGNATURES.keys()
              if not written_by_imgclf(folder / name)]
    if theirs:
        raise RunError(f"{folder} holds {', '.join(sorted(theirs))}, which imgclf did not "
                       "write, and would write over: choose another --out.")
    if names and not is_ours(names):
        raise RunError(f"{folder} already holds other files; imgclf writes into a new or "
                       "empty folder, or one it wrote before: choose another --out.")
