"""Running several methods and backbones through the same loop, and ranking them.

Each combination gets its own run folder under the compare folder. Runs share the
decoded-image cache and the frozen-backbone feature cache, so repeating a backbone or a
dataset costs nothing extra. Finished runs (with ``metrics.json``) are skipped when the
command is repeated; a run that fails is recorded with its error and the others go on.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import copy
import csv
import json
import logging
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgclf.config import (
    DATA_PATH_SETTINGS,
    DEFAULT_BACKBONE,
    METHODS,
    TRANSFER_SETTINGS,
    build_config,
    changes_text,
    flat_settings,
    resolved_paths,
    resume_config,
    whole_number,
)
from imgclf.data.layout import other_data, require_folder
from imgclf.data.prepare import prepare_run_data
from imgclf.errors import ConfigError, Interrupted, RunError, RunFolderBusy
from imgclf.history import read_history
from imgclf.leaderboard import SORT_KEYS, evaluated_apart, run_row, write_leaderboard
from imgclf.machine import available_cores, signals_blocked, unblock_signals
from imgclf.models.registry import check_model_name, get_spec
from imgclf.paths import (
    AUDIT_FILE,
    BEST_CHECKPOINT,
    CONFIG_FILE,
    ERROR_FILE,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    LEADERBOARD_FILE,
    METRICS_FILE,
    absolute,
    check_output_folder,
    check_outside_other_runs,
    is_run_folder,
    path_argument,
    read_audit,
    read_run_config,
    read_run_metrics,
    run_folder_lock,
    write_text,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    name: str
    method: str
    model: str


def plan_runs(methods: list[str], backbones: list[str],
              model: str | None = None) -> list[RunPlan]:
    """One run per method (a method named twice runs once), and one per backbone for
    ``transfer``. ``model``, when given, is the network of the scratch and augment runs
    instead of their presets' (``small_cnn_wide`` for augment, say)."""
    if not methods:
        raise ConfigError(f"no methods given; choose from {', '.join(METHODS)}.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")
    if model is not None and set(methods) == {"transfer"}:
        raise ConfigError(f"model {model!r} would be the network of scratch and augment runs, "
                          "and there are none: transfer runs take theirs from --backbones.")
    plans = []
    for method in dict.fromkeys(methods):
        if method == "transfer":
            for backbone in backbones or [DEFAULT_BACKBONE]:
                plans.append(RunPlan(f"transfer-{backbone}", method, backbone))
        else:
            name = model or build_config(method).model.name
            plans.append(RunPlan(f"{method}-{name}", method, name))
    return plans


def name_list(names: str | list[str]) -> list[str]:
    """Names given as a list or as one comma-separated string (``"scratch, transfer"``)."""
    if isinstance(names, str):
        names = names.split(",")
    return [name.strip() for name in names if name.strip()]


def resolve_backbones(spec: str | list[str] | None) -> list[str]:
    """The backbones of ``spec`` (names, as ``name_list`` takes them; none: the default
    one), where ``offline`` means every backbone with ImageNet weights installed on this
    machine."""
    names: list[str] = []
    for item in name_list(spec or DEFAULT_BACKBONE):
        if item == "offline":
            from imgclf.models.weights import offline_backbones

            names += list(offline_backbones())
        else:
            names.append(item)
    return list(dict.fromkeys(names))


def _plan_config(plan: RunPlan, overrides: dict, out: Path):
    """A run's settings, checked (a model that cannot be built, for this data or image
    size, say, fails its run alone)."""
    opts = copy.deepcopy(overrides)
    if plan.method != "transfer":  # a backbone's settings are the transfer runs' alone
        for section, key in _transfer_settings_in(opts):
            del opts[section][key]
        if get_spec(plan.model) is None:  # a timm network, trained from random weights
            opts.setdefault("model", {})["pretrained"] = False
    opts.setdefault("model", {})["name"] = plan.model
    opts["method"] = plan.method  # as an override: it beats a method named in config_file
    opts["out"] = str(out / plan.name)
    return build_config(plan.method, opts.pop("config_file", None), opts)


def _transfer_settings_in(opts: dict) -> list[tuple[str, str]]:
    """The ``TRANSFER_SETTINGS`` that ``opts`` (overrides, by section) gives, as
    (section, key) pairs."""
    pairs = [tuple(dotted.split(".")) for dotted in TRANSFER_SETTINGS]
    return [(section, key) for section, key in pairs if key in opts.get(section, {})]


def _run_one(plan: RunPlan, config, threads: int | None, resume: bool = False) -> dict:
    """Train one run by ``config`` (``_plan_config``'s) in this process, or in a worker on
    ``threads`` threads; returns its leaderboard row. An interrupted run stops the
    comparison (its last.pt lets the next one resume it)."""
    in_worker = threads is not None
    if in_worker:
        import torch

        torch.set_num_threads(threads)
    from imgclf.engine.trainer import train

    run_dir = Path(config.out)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # an earlier attempt's, resumed after
    try:
        with _stopping_run() if in_worker else contextlib.nullcontext():
            train(config, resume=resume)
    except RunFolderBusy:  # the run is not this comparison's to record (nor Interrupted)
        raise
    except Exception as exc:  # a failed run is recorded and the comparison goes on
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / ERROR_FILE, traceback.format_exc())
        # The next comparison resumes it again: say how to start over instead.
        again = f" To train it from scratch instead, delete {run_dir}." if resume else ""
        log.error("run %s failed: %s%s", plan.name, exc, again)
        return run_row(plan.name, config.to_dict(), None, None, status="failed",
                       error=f"{type(exc).__name__}: {exc}{again}")
    return row_from_run(run_dir)


_STOP = threading.Event()
"""Set in a compare worker once Ctrl-C or SIGTERM has reached it."""
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _start_worker() -> None:
    """A compare worker's Ctrl-C and SIGTERM (Ctrl-C reaches every process of the command;
    the parent passes its own interruption on as SIGTERM) are noted while it starts or
    waits, and stop its run while it trains (``_stopping_run``)."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _note_stop)
    unblock_signals(*_STOP_SIGNALS)  # a signal that came while it imported is noted now


def _note_stop(signum, frame) -> None:
    _STOP.set()


def _stop_run(signum, frame) -> None:
    _note_stop(signum, frame)
    for other in _STOP_SIGNALS:  # a second signal must not break the first one's saving
        signal.signal(other, _note_stop)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stopping_run():
    """In a worker: the first Ctrl-C or SIGTERM within the block stops the run, as in the
    parent process; one that came while the worker was starting stops it at once."""
    if _STOP.is_set():
        raise Interrupted("the comparison was interrupted before this run began")
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _stop_run)
    try:
        yield
    finally:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, _note_stop)


def row_from_run(run_dir: Path) -> dict:
    """The leaderboard row of a finished run folder; RunError when its metrics.json or
    config.yaml cannot be read (a history that cannot be read leaves its epochs empty)."""
    metrics = read_run_metrics(run_dir / METRICS_FILE)
    _, config = read_run_config(run_dir / CONFIG_FILE)
    try:
        epochs = len(read_history(run_dir / HISTORY_FILE))
    except (OSError, csv.Error, ValueError) as exc:
        log.warning("%s could not be read (%s): the leaderboard leaves the run's epochs "
                    "empty", run_dir / HISTORY_FILE, getattr(exc, "strerror", None) or exc)
        epochs = None
    return run_row(run_dir.name, config, metrics, epochs)


def compare(
    data: str,
    methods: str | list[str],
    backbones: str | list[str] | None,
    out: str | Path,
    overrides: dict | None = None,
    sort_by: str = "accuracy",
    workers: int = 1,
    audit: bool = True,
) -> Path:
    """Train every combination, then write leaderboard.csv and leaderboard.md in ``out``.
    ``methods`` and ``backbones`` are lists or comma-separated names (``resolve_backbones``:
    ``offline`` is every backbone whose weights are installed)."""
    try:
        return _compare(data, methods, backbones, out, overrides, sort_by, workers, audit)
    except Interrupted:  # in a run: it says what was saved
        raise
    except KeyboardInterrupt:  # between runs, or before the first: nothing is lost
        raise Interrupted("comparison interrupted; its finished runs are kept: run the same "
                          "imgclf compare command again to go on.") from None


def _compare(data: str, methods: str | list[str], backbones: str | list[str] | None,
             out: str | Path, overrides: dict | None, sort_by: str, workers: int,
             audit: bool) -> Path:
    if sort_by not in SORT_KEYS:
        raise ConfigError(f"cannot sort the leaderboard by {sort_by!r}; choose one of "
                          f"{', '.join(SORT_KEYS)}.")
    workers = whole_number(workers, "workers (runs trained at a time)",
                           " (1: one after another)")
    methods = name_list(methods)
    out = path_argument(out, "out")
    overrides = copy.deepcopy(overrides or {})
    overrides.setdefault("data", {})["data"] = data
    plans = plan_runs(methods, resolve_backbones(backbones),
                      overrides.get("model", {}).get("name"))
    given = [f"{section}.{key}" for section, key in _transfer_settings_in(overrides)]
    if backbones and name_list(backbones):
        given.insert(0, "backbones (--backbones)")
    if given and "transfer" not in methods:
        raise ConfigError(f"settings of transfer runs alone ({', '.join(given)}) are given, "
                          f"and the methods ({', '.join(methods)}) have no transfer run: leave "
                          "them out, or add transfer.")
    for name in dict.fromkeys(plan.model for plan in plans):
        check_model_name(name)  # a misspelt backbone stops the comparison before any run
    # Settings that cannot work stop the comparison before any run.
    configs = {plan.name: _plan_config(plan, overrides, out) for plan in plans}
    require_folder("data", data)
    # An earlier comparison's folder, or one of this comparison's runs alone (trained with
    # `imgclf train --out OUT/<run>`, to be kept).
    planned = {plan.name for plan in plans}
    check_output_folder(out, (data,), lambda names: bool(
        names & {LEADERBOARD_FILE, AUDIT_FILE}) or (
        names <= planned and all(is_run_folder(out / n) for n in names)))
    check_outside_other_runs(out, None, "choose --out outside any run folder")
    if not all((out / name / METRICS_FILE).exists() for name in planned):
        # Data that no run could train on: one DataError, not a failed run each. Its
        # warnings are each run's to log.
        data_log = logging.getLogger("imgclf.data")
        level = data_log.level
        data_log.setLevel(logging.ERROR)
        try:
            prepare_run_data(configs[plans[0].name])
        finally:
            data_log.setLevel(level)
        _check_weights(plans, configs, out)
    out.mkdir(parents=True, exist_ok=True)
    with run_folder_lock(out):  # one comparison at a time in ``out``
        return _train_and_rank(plans, configs, data, out, sort_by, workers, audit)


def _check_weights(plans: list[RunPlan], configs: dict, out: Path) -> None:
    """Pretrained weights that no source holds (``pretrained_state_dict``) stop the
    comparison before any run, as a misspelt backbone does; a run that finished, or resumes
    with the weights its last.pt holds, needs none."""
    from imgclf.models.weights import pretrained_state_dict

    checked = set()
    for plan in plans:
        config, run_dir = configs[plan.name], out / plan.name
        wanted = (config.model.name, config.model.weights)
        if plan.method != "transfer" or not config.model.pretrained or wanted in checked \
                or (run_dir / METRICS_FILE).exists() or (run_dir / LAST_CHECKPOINT).exists():
            continue
        checked.add(wanted)
        pretrained_state_dict(*wanted)


def _train_and_rank(plans: list[RunPlan], configs: dict, data: str, out: Path, sort_by: str,
                    workers: int, audit: bool) -> Path:
    """``compare``'s work once its settings and folder are checked: keep the finished
    runs, train the others, and write the leaderboard."""
    rows: dict[str, dict] = {}
    todo, resumable = [], set()
    for plan in plans:
        run_dir = out / plan.name
        if (run_dir / CONFIG_FILE).exists():
            changed = _changed_settings(run_dir, configs[plan.name])
            if changed:
                moved = (f" (if the dataset moved, write its new place in "
                         f"{run_dir / CONFIG_FILE} to keep the run)"
                         if changed.keys() & set(DATA_PATH_SETTINGS) else "")
                shown = dict(list(changed.items())[:4])
                raise ConfigError(
                    f"{run_dir} was trained with other settings ({changes_text(shown)}); "
                    f"compare into another --out, or delete that folder to train it "
                    f"again{moved}."
                )
        if (run_dir / METRICS_FILE).exists():
            log.info("run %s already finished: kept", plan.name)
            rows[plan.name] = row_from_run(run_dir)
            continue
        if (run_dir / LAST_CHECKPOINT).exists():
            # Interrupted, or failed (a refused resume, say): its saved epochs are kept.
            how = (f"failed last time ({ERROR_FILE} says why)"
                   if (run_dir / ERROR_FILE).exists() else "was interrupted")
            log.info("run %s %s: resuming it from its last epoch", plan.name, how)
            resumable.add(plan.name)
            # With its own settings, as `imgclf train --resume` does: the ones asked for,
            # as checked above, with the image size it resolved where none was asked for.
            configs[plan.name] = resume_config(run_dir, [])
        elif run_dir.exists():
            _clear_unfinished(run_dir)
        todo.append(plan)
    audit_file = out / AUDIT_FILE
    # Audited again for runs trained now, which train on the data as it is now.
    if audit and (todo or _audited_root(audit_file) != str(absolute(data))):
        from imgclf.data.audit import audit_dataset

        write_text(audit_file, json.dumps(audit_dataset(Path(data)), indent=2))
    if workers <= 1:
        for plan in todo:
            log.info("run %s", plan.name)
            try:
                rows[plan.name] = _run_one(plan, configs[plan.name], None,
                                           plan.name in resumable)
            except Interrupted:
                raise _comparison_interrupted([Path(configs[plan.name].out)]) from None
            write_leaderboard(list(rows.values()), out, sort_by)
    else:
        _train_in_workers(todo, configs, resumable, workers, rows,
                          lambda: write_leaderboard(list(rows.values()), out, sort_by))
    ordered = [rows[p.name] for p in plans] + _earlier_runs(out, set(rows),
                                                             configs[plans[0].name])
    apart = evaluated_apart(ordered)
    if apart:
        log.warning("%s", apart)
    write_leaderboard(ordered, out, sort_by)
    return out


def _train_in_workers(todo: list[RunPlan], configs: dict, resumable: set[str], workers: int,
                      rows: dict[str, dict], finished: Callable[[], None]) -> None:
    """Train ``todo`` in ``workers`` processes, putting each run's row in ``rows`` and
    calling ``finished`` as it ends. Each worker is handed one run at a time, so that after
    Ctrl-C no further run starts: the workers' own runs stop at it, saving their progress,
    and idle workers leave it to this process, which passes its own interruption (SIGTERM,
    say) on to them."""
    threads = max(1, available_cores() // workers)
    waiting, running = list(todo), {}
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker) as pool:
        try:
            while waiting or running:
                while waiting and len(running) < workers:
                    plan = waiting.pop(0)
                    # A worker it starts begins with Ctrl-C and SIGTERM blocked, until
                    # ``_start_worker`` handles them: killed while it imports, it would
                    # leave the pool to a race in its shutdown (CPython gh-132969: a
                    # traceback from the pool's thread, or a hang).
                    with signals_blocked(*_STOP_SIGNALS):
                        future = pool.submit(_run_one, plan, configs[plan.name], threads,
                                             plan.name in resumable)
                    running[future] = plan
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    rows[running[future].name] = future.result()
                    del running[future]
                    finished()
        except KeyboardInterrupt:  # Ctrl-C here, or a run's Interrupted
            for worker in multiprocessing.active_children():
                os.kill(worker.pid, signal.SIGTERM)
            pool.shutdown(cancel_futures=True)  # the running runs save and stop first
            raise _comparison_interrupted(
                [Path(configs[plan.name].out) for plan in running.values()]) from None


def _comparison_interrupted(run_dirs: list[Path]) -> Interrupted:
    """What an interruption during the runs in ``run_dirs`` left, and how to go on."""
    if not run_dirs:
        return Interrupted("comparison interrupted before any run started: run the same "
                           "imgclf compare command again.")
    names = [run_dir.name for run_dir in run_dirs]
    saved = [run_dir.name for run_dir in run_dirs if (run_dir / LAST_CHECKPOINT).exists()]
    unsaved = [name for name in names if name not in saved]
    during = f"comparison interrupted during {_runs(names)}"
    if not unsaved:
        return Interrupted(f"{during}, whose progress is saved: run the same imgclf compare "
                           "command again to go on from there.")
    if not saved:
        return Interrupted(f"{during}, before {'it' if len(names) == 1 else 'they'} saved any "
                           "progress: run the same imgclf compare command again to start "
                           f"{'it' if len(names) == 1 else 'them'}.")
    return Interrupted(f"{during}: the progress of {', '.join(saved)} is saved, "
                       f"{', '.join(unsaved)} had saved none yet. Run the same imgclf compare "
                       "command again to go on.")


def _runs(names: list[str]) -> str:
    return f"{'run' if len(names) == 1 else 'runs'} {', '.join(names)}"


def _audited_root(audit_file: Path) -> str | None:
    """The dataset an earlier comparison's ``audit.json`` describes; None when there is
    none, or it cannot be read (it is then written anew)."""
    if not audit_file.is_file():
        return None
    try:
        return read_audit(audit_file).get("root")
    except RunError:
        return None


def _earlier_runs(out: Path, named: set[str], config) -> list[dict]:
    """Leaderboard rows of finished runs an earlier comparison left in ``out`` that this
    one did not ask for: the leaderboard, like the report, shows every run in the folder,
    but for runs on other data than ``config``'s (one of this comparison's runs), whose
    figures are on other images."""
    rows, ours = [], config.to_dict()
    for run_dir in sorted(p for p in out.iterdir() if p.is_dir() and p.name not in named):
        if not ((run_dir / METRICS_FILE).exists() and (run_dir / CONFIG_FILE).exists()):
            continue
        other = other_data(read_run_config(run_dir / CONFIG_FILE)[1], ours)
        if other:
            log.warning("run %s in %s was trained on other data (%s): left out of the "
                        "leaderboard", run_dir.name, out, changes_text(other))
        else:
            rows.append(row_from_run(run_dir))
    return rows


def _changed_settings(run_dir: Path, config) -> dict[str, tuple]:
    """The settings in which ``run_dir``'s saved config differs from ``config``, each with
    ``config``'s value and the saved one (``changes_text``), where the run folder itself
    may be; the data compares by the folders its settings find (``other_data``: ``DATA``
    and ``--train DATA/train --test DATA/test`` alike), other paths with their links
    followed, and an image size left to the model matches the one the run resolved."""
    saved_tree, wanted_tree = read_run_config(run_dir / CONFIG_FILE)[1], config.to_dict()
    saved, wanted = ({key: value for key, value in {**flat_settings(tree),
                                                    **resolved_paths(tree)}.items()
                      if key != "out" and key not in DATA_PATH_SETTINGS}
                     for tree in (saved_tree, wanted_tree))
    if wanted.get("model.img_size") is None:
        wanted["model.img_size"] = saved.get("model.img_size")
    changed = {k: (wanted.get(k), saved.get(k)) for k in saved.keys() | wanted.keys()
               if saved.get(k) != wanted.get(k)}
    changed.update(other_data(wanted_tree, saved_tree))
    return dict(sorted(changed.items()))


def _clear_unfinished(run_dir: Path) -> None:
    """A run without metrics.json that saved no epoch (last.pt) failed or was interrupted
    before: start it again from scratch."""
    for name in (BEST_CHECKPOINT, ERROR_FILE):
        (run_dir / name).unlink(missing_ok=True)
