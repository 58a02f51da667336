"""Tests for imgclf.paths: the cache folder, writing files whole, telling run folders."""

from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from imgclf import paths
from imgclf.errors import ConfigError, RunError
from imgclf.paths import (
    PREDICTION_FIELDS,
    RUN_MARKERS,
    cache_dir,
    check_output_file,
    check_output_folder,
    class_of_column,
    is_run_folder,
    open_for_writing,
    probability_columns,
    run_folder_lock,
    unescaped,
    write_text,
)

UNDECODABLE = b"cls\xff".decode("utf-8", "surrogateescape")  # as os.listdir gives it


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir("images") == tmp_path / "c" / "images"
    assert (tmp_path / "c" / "images").is_dir()


def killed_pid(python: str) -> int:
    """The id of a process that has ended."""
    import subprocess

    process = subprocess.Popen([python, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_writers_leftover_goes_from_the_cache_once_it_is_old(tmp_path, monkeypatch):
    import subprocess
    import sys

    folder = tmp_path / "c" / "images"
    folder.mkdir(parents=True)
    killed = subprocess.run(  # killed while it writes a cache file: no clean-up runs
        [sys.executable, "-c",
         "import os, signal, sys; from imgclf.paths import written_whole\n"
         "with written_whole(sys.argv[1]) as tmp:\n"
         "    tmp.write_bytes(b'x' * 1000); os.kill(os.getpid(), signal.SIGKILL)",
         str(folder / "key.npy")])
    assert killed.returncode == -9
    [leftover] = folder.iterdir()
    # A live writer's file, and another imgclf file, old alike; and a leftover named as
    # imgclf named them before its names had a random part.
    mine = folder / f".other.tmp{os.getpid()}-0a1b2c3d.npy"
    kept = folder / "key2.npy"
    older = folder / f".key3.tmp{killed_pid(sys.executable)}.npy"
    no_process = folder / f".key4.tmp{10**30}-ab.npy"  # no process has such an id
    for path in (mine, kept, older, no_process):
        path.write_bytes(b"y")
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "c"))
    cache_dir("images")
    assert leftover.exists()  # written to a moment ago: maybe a writer this one cannot see
    hour_ago = time.time() - 3700
    for path in (leftover, mine, kept, older, no_process):
        os.utime(path, (hour_ago, hour_ago))
    monkeypatch.setattr(paths, "_SWEPT", set())  # as a later process
    cache_dir("images")
    assert sorted(folder.iterdir()) == sorted([mine, kept])


def test_file_appears_whole_and_in_new_folders(tmp_path):
    path = tmp_path / "new" / "folder" / "out.json"
    with open_for_writing(path) as fh:
        fh.write("{")
        assert not path.exists()  # nothing at the name until the block ends
        fh.write("}")
    assert path.read_text() == "{}"
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_failure_leaves_the_old_file_and_no_partial_one(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), open_for_writing(path) as fh:
        fh.write("new")
        raise RuntimeError("stopped half way")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_undecodable_file_names_are_escaped_and_json_reads_them_back(tmp_path):
    write_text(tmp_path / "m.json", json.dumps({"classes": [UNDECODABLE]}, ensure_ascii=False))
    raw = (tmp_path / "m.json").read_bytes()
    raw.decode("utf-8")  # valid UTF-8
    assert json.loads(raw)["classes"] == [UNDECODABLE]


def test_a_folder_is_not_a_file_name(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder, not a file name"):
        write_text(tmp_path, "x")


def test_a_failure_names_the_file_asked_for_not_the_temporary_one(tmp_path, monkeypatch):
    def read_only(file, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(file))

    monkeypatch.setattr("imgclf.paths.open", read_only, raising=False)
    with pytest.raises(OSError, match="Read-only file system") as info:
        write_text(tmp_path / "predictions.csv", "x")
    assert info.value.filename == str(tmp_path / "predictions.csv")
    assert info.value.errno == errno.EROFS
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("marker", RUN_MARKERS)
def test_a_run_folder_is_config_yaml_with_a_model_or_history(tmp_path, make_run_folder, marker):
    make_run_folder(tmp_path / "run", marker)
    assert is_run_folder(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").unlink()  # plots and a marker alone: maybe data
    assert not is_run_folder(tmp_path / "run")


def test_what_is_not_a_run_folder(tmp_path, make_run_folder):
    make_run_folder(tmp_path / "run")
    (tmp_path / "run" / "history.csv").unlink()  # a run that failed before training
    assert not is_run_folder(tmp_path / "run")
    assert not is_run_folder(tmp_path / "run" / "evaluate-test")  # metrics.json, plots
    (tmp_path / "photos" / "config.yaml").mkdir(parents=True)  # folders, not files
    (tmp_path / "photos" / "model.pt").mkdir()
    assert not is_run_folder(tmp_path / "photos")
    assert not is_run_folder(tmp_path / "nowhere")


def test_a_linked_class_folder_is_part_of_the_dataset(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "forest"
    elsewhere.mkdir(parents=True)
    (tmp_path / "data" / "train" / "sea").mkdir(parents=True)
    (tmp_path / "data" / "train" / "forest").symlink_to(elsewhere)
    with pytest.raises(RunError, match="would be inside the dataset"):
        check_output_folder(elsewhere / "run", [tmp_path / "data"], lambda names: True)
    with pytest.raises(ConfigError, match="would be inside the dataset"):
        check_output_file(elsewhere / "p.csv", (".csv",), [tmp_path / "data"])
    check_output_folder(tmp_path / "elsewhere" / "run", [tmp_path / "data"], lambda names: True)


def test_an_output_folder_that_cannot_be_created_is_refused_before_any_work(tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # the superuser may write into a read-only folder, not into /sys
        read_only = Path("/sys")
    with pytest.raises(ConfigError, match=rf"run cannot be written \({read_only}: Permission "
                                          r"denied\); choose another place"):
        check_output_folder(read_only / "new" / "run", [], lambda names: True)
    assert not (read_only / "new").exists()
    check_output_folder(tmp_path / "a" / "run", [], lambda names: True)
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob("**/tmp*"))


def test_an_output_file_that_cannot_be_created_is_refused_before_any_work(tmp_path):
    # A read-only folder: the superuser may write into one, not into /sys.
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:
        read_only = Path("/sys")
    with pytest.raises(ConfigError, match=rf"cannot be written \({read_only}: Permission denied"):
        check_output_file(read_only / "new" / "p.csv", (".csv",))
    assert not (read_only / "new").exists()
    # Folders still missing under a writable one are fine, and stay uncreated until written.
    check_output_file(tmp_path / "a" / "b" / "p.csv", (".csv",))
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob("**/tmp*"))


def test_a_file_name_that_is_not_utf8_reads_back_from_what_was_written(tmp_path):
    image = Path(os.fsdecode(os.fsencode(tmp_path) + b"/se\xe9.jpg"))
    image.write_bytes(b"x")
    write_text(tmp_path / "paths.csv", f"path\n{image}\n")
    written = (tmp_path / "paths.csv").read_text(encoding="utf-8").splitlines()[1]
    assert written.endswith("se\\udce9.jpg") and not Path(written).exists()
    assert Path(unescaped(written)) == image and Path(unescaped(written)).exists()
    assert unescaped("plain\\u00e9 name") == "plain\\u00e9 name"


def test_an_existing_file_is_written_over_only_when_imgclf_wrote_it(tmp_path):
    mine = tmp_path / "notes.html"
    mine.write_text("<p>my notes</p>\n")
    page = ("<!DOCTYPE html>\n<html",)
    with pytest.raises(ConfigError, match=f"^{mine} exists and is not a report that imgclf "
                                          r"wrote; give the output another name, or move that "
                                          r"file away\.$"):
        check_output_file(mine, (".html",), starts=page, what="a report")
    with pytest.raises(ConfigError, match="exists and is not a file that imgclf wrote"):
        check_output_file(mine, (".html",))  # without starts, no existing file is written over
    assert mine.read_text() == "<p>my notes</p>\n"
    mine.write_text("<!DOCTYPE html>\n<html lang='en'>\n")
    assert check_output_file(mine, (".html",), starts=page, what="a report") == mine
    assert check_output_file(tmp_path / "new.html", (".html",)) == tmp_path / "new.html"


def test_a_run_folder_is_locked_for_one_training_at_a_time(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    with run_folder_lock(tmp_path / "runs" / "a"):
        for same in (tmp_path / "runs" / "a", tmp_path / "link" / "a"):
            with pytest.raises(RunError, match=r"another imgclf process is training into "
                                               r".*/a: wait for it"), run_folder_lock(same):
                pass
        with run_folder_lock(tmp_path / "runs" / "b"):  # another folder: free
            pass
    with run_folder_lock(tmp_path / "runs" / "a"):  # released
        pass
    assert not (tmp_path / "runs" / "a").exists()  # the lock lives in the cache folder


def test_a_run_folder_is_locked_when_the_cache_folder_cannot_be_written_to(tmp_path,
                                                                            monkeypatch):
    (tmp_path / "cache").write_text("a file, not a folder")  # no folder can be made in it
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with run_folder_lock(tmp_path / "run"):
        with pytest.raises(RunError, match="another imgclf process is training"), \
                run_folder_lock(tmp_path / "run"):
            pass
    assert list((tmp_path / "tmp" / "imgclf-locks").glob("*.lock"))


@pytest.mark.parametrize("classes", [
    ["a", "label"], ["a", "label (probability)"], ["label", "label (probability)"],
    ["x (probability)", "x"], ["path (probability) (probability)", "path (probability)"]])
def test_probability_columns_are_unique_and_read_back_as_their_classes(classes):
    columns = probability_columns(classes)
    assert len(set(columns)) == len(classes)
    assert not set(columns) & set(PREDICTION_FIELDS)
    assert [class_of_column(c) for c in columns] == classes
