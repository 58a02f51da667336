"""Tests for the ``imgclf`` command: the parser, help texts, exit codes and error output."""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys

import pytest
import torch

import imgclf
from imgclf.cli.main import build_parser, main
from imgclf.engine import loop

CORE_COMMANDS = {"audit", "train", "evaluate", "predict", "compare", "models", "export"}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder: a default run folder (runs/...) must not land in the repo."""
    monkeypatch.chdir(tmp_path)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


SUBCOMMANDS = sorted(subparsers(build_parser()))


# --- the parser and its help --------------------------------------------------------------------


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: imgclf")
    assert CORE_COMMANDS <= set(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        assert f"    {name} " in text, name


def test_no_command_prints_help_and_returns_0(capsys):
    assert main([]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: imgclf")
    assert all(name in text for name in SUBCOMMANDS)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"imgclf {imgclf.__version__}"


def test_every_subcommand_has_a_summary():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: a.help for a in sub._choices_actions}
    assert set(summaries) == set(SUBCOMMANDS)
    assert all(text and text.strip() for text in summaries.values()), summaries


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_takes_verbose_and_quiet(command):
    options = {o for a in subparsers(build_parser())[command]._actions for o in a.option_strings}
    assert {"-v", "--verbose", "-q", "--quiet"} <= options


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_option_has_help_text(command):
    parser = subparsers(build_parser())[command]
    missing = [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not (action.help and action.help.strip() and action.help != argparse.SUPPRESS)
    ]
    assert missing == [], f"imgclf {command}: options without help: {missing}"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_help_renders(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: imgclf {command}")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_shows_no_config_keys_as_values(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    usage = capsys.readouterr().out
    # "--epochs EPOCHS", not "--epochs TRAIN.EPOCHS" (the config key it sets)
    assert not re.search(r"--[\w-]+ [A-Z_]+\.[A-Z_]+", usage), usage


@pytest.mark.parametrize("command", ["train", "compare"])
def test_help_defaults_are_the_method_presets(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "learning rate (default: by method, scratch 0.001, augment 0.001, transfer 0.0003)" \
        in text
    assert "optimiser (default: by method, scratch adam, augment adam, transfer adamw)" in text
    assert "schedule (default: by method, scratch plateau, augment plateau, transfer none;" \
        in text
    assert "never stop early; default: by method, scratch 3, augment 5, transfer 3)" in text
    assert "maximum epochs (default 30;" in text


def test_python_dash_m_imgclf_help():
    result = subprocess.run([sys.executable, "-m", "imgclf", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: imgclf")
    assert "train" in result.stdout


def test_ctrl_c_while_the_command_loads_exits_quietly(monkeypatch, capsys):
    """The console script loads PyTorch for a few seconds before main(); Ctrl-C then
    must end the command as it does later on, with 130 and no traceback."""
    from imgclf.cli import run

    class CtrlC:  # a meta path finder that is interrupted while importing the commands
        def find_spec(self, name, path=None, target=None):
            if name == "imgclf.cli.main":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "imgclf.cli.main")
    monkeypatch.setattr(sys, "meta_path", [CtrlC(), *sys.meta_path])
    assert run(["--version"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_while_the_process_exits_after_its_command_is_ignored():
    # Python's clean-up at exit (multiprocessing joins compare's workers there) must run
    # whole: a Ctrl-C then printed a traceback from within an atexit callback.
    probe = ("import atexit, os, signal, time\n"
             "def cleanup():\n"
             "    os.kill(os.getpid(), signal.SIGINT)\n"
             "    time.sleep(0.2)\n"
             "    print('clean-up ran whole', flush=True)\n"
             "atexit.register(cleanup)  # as multiprocessing's, registered on its import\n"
             "from imgclf.cli import run\n"
             "run(['--version'])\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "clean-up ran whole"
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


# --- errors: status 2, one 'error:' line, no traceback ------------------------------------------


def assert_clean_error(capsys, pattern: str) -> None:
    captured = capsys.readouterr()
    last = captured.err.rstrip("\n").splitlines()[-1]  # after any logged warnings
    assert last.startswith("error: "), captured.err
    assert pattern in last
    assert "Traceback" not in captured.err + captured.out


def test_train_refuses_a_run_folder_another_training_holds(tmp_path, make_image_folder,
                                                           capsys):
    from imgclf.paths import run_folder_lock

    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 24))
    with run_folder_lock(tmp_path / "run"):  # as a training started a moment earlier
        assert main(["train", str(data), "--epochs", "1", "--out", str(tmp_path / "run"),
                     "-q"]) == 2
    assert_clean_error(capsys, f"another imgclf process is training into {tmp_path / 'run'}")
    assert not (tmp_path / "run").exists()


def test_train_on_a_missing_folder(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing")]) == 2
    assert_clean_error(capsys, "does not exist")
    assert not (tmp_path / "runs").exists()  # no empty run folder left behind


@pytest.mark.parametrize("argv, setting", [
    (["audit", ""], "data is an empty path"),
    (["audit", ".", "--val", " "], "val is an empty path"),
    (["train", ""], "data.data is an empty path"),
    (["train", "--train", ""], "data.train is an empty path"),
    (["train", ".", "--out", ""], "out is an empty path"),
    (["compare", "", "--methods", "scratch", "--out", "cmp"], "data.data is an empty path"),
    (["audit", "a", "--json", ""], "the output file is an empty path"),
    (["audit", "", "--json", "r.json"], "data is an empty path"),
    (["compare", ".", "--methods", "scratch", "--out", ""], "out is an empty path"),
    (["evaluate", "", "."], "a run (its folder or model file) is an empty path"),
    (["train", ".", "--config", ""], "config is an empty path"),
    (["report", ""], "the folder to report on is an empty path"),
])
def test_an_empty_path_is_an_error_not_the_current_folder(tmp_path, make_image_folder, capsys,
                                                         argv, setting):
    # As an unset shell variable gives it: `imgclf audit "$DATA"`. The current folder
    # (tmp_path, by the in_tmp fixture) is a dataset that would be taken instead.
    make_image_folder(tmp_path, {"a": 3, "b": 3}, size=(24, 24))
    before = sorted(tmp_path.rglob("*"))
    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {setting}") and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before


def test_train_without_data(capsys, monkeypatch):
    assert main(["train"]) == 2
    assert_clean_error(capsys, "no dataset given")
    # A mistake in what was given: under torchrun, the machine's first process alone says so.
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["train"]) == 2
    assert capsys.readouterr().err == ""


def test_train_with_an_invalid_value(tmp_path, capsys):
    assert main(["train", str(tmp_path), "--epochs", "0"]) == 2
    assert_clean_error(capsys, "train.epochs must be >= 1, got 0")


def test_train_with_an_unknown_model(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 24))
    assert main(["train", str(data), "--model", "small_cn", "-q"]) == 2
    assert_clean_error(capsys, "Did you mean: small_cnn")


def test_resume_without_out(capsys):
    assert main(["train", "--resume"]) == 2
    assert_clean_error(capsys, "resuming needs --out RUN_DIR")


def test_model_and_backbone_naming_different_models_is_an_error(capsys):
    for argv in (["--backbone", "resnet18", "--model", "small_cnn"],
                 ["--model", "small_cnn", "--backbone", "resnet18"]):
        with pytest.raises(SystemExit) as exit_:
            main(["train", "data", *argv])
        assert exit_.value.code == 2
        assert "names another model than the one given before it" in capsys.readouterr().err
    args = build_parser().parse_args(["train", "d", "--backbone", "resnet18", "--model",
                                      "resnet18"])
    assert getattr(args, "model.name") == "resnet18"  # the same model twice is fine


def test_bad_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "data", "--optimizer", "adagrad"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'adagrad'" in capsys.readouterr().err


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_an_unknown_option_is_reported_with_the_commands_usage(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--no-such-option"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: imgclf {command} "), err
    assert f"imgclf {command}: error: " in err


def test_compare_does_not_take_split_folders(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "data", "--train", "x", "--out", "cmp"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: imgclf compare ")
    assert "imgclf compare: error: unrecognized arguments: --train x" in err
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "compare takes no --train, --val or --test" in " ".join(capsys.readouterr().out.split())


# --- a run through the command line -------------------------------------------------------------


def test_train_interrupt_and_resume(tmp_path, make_image_folder, monkeypatch, capsys):
    make_image_folder(tmp_path / "data" / "train", {"a": 6, "b": 6}, size=(32, 32), seed=0)
    make_image_folder(tmp_path / "data" / "test", {"a": 2, "b": 2}, size=(32, 32), seed=1)
    real = loop.train_one_epoch
    calls = []

    def interrupting(phase, rt, desc):
        calls.append(desc)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(phase, rt, desc)

    monkeypatch.setattr(loop, "train_one_epoch", interrupting)
    argv = ["train", "data", "--out", "run", "--epochs", "2", "--img-size", "32", "-q"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "training interrupted" in err and "--resume" in err and "Traceback" not in err

    # The run folder moved, and resumed from another folder: it goes on where it is now.
    (tmp_path / "run").rename(tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    moved = tmp_path / "moved"
    assert main(["train", "--resume", "--out", str(moved), "-q"]) == 0
    captured = capsys.readouterr()
    # -q drops the log, not the results: the test metrics and the run folder
    results, folder = captured.out.rsplit("run folder: ", 1)
    assert folder == f"{moved}\n" and "accuracy" not in captured.err
    assert json.loads(results) == {
        k: v for k, v in json.loads((moved / "metrics.json").read_text()).items()
        if k in ("split", "n_samples", "accuracy", "balanced_accuracy", "f1_macro",
                 "cohen_kappa", "mcc", "roc_auc")}
    assert json.loads(results)["split"] == "test"
    with open(moved / "history.csv", newline="") as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["1", "2"]
    assert calls == ["train 1/2", "train 2/2", "train 2/2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "elsewhere", "moved"]


def test_resume_errors(tmp_path, make_image_folder, capsys):
    assert main(["train", "--resume", "--out", str(tmp_path / "nowhere")]) == 2
    assert_clean_error(capsys, "cannot resume: ")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("method: scratch\n")
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--epochs", "9"]) == 2
    assert_clean_error(capsys, "a resumed run goes on with the settings it was started with")
    (tmp_path / "run" / "config.yaml").write_text(": :\n")
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "-q"]) == 2
    assert_clean_error(capsys, f"{tmp_path / 'run' / 'config.yaml'} is not valid YAML")


def test_train_with_a_damaged_weights_file(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 24))
    (tmp_path / "junk.pth").write_text("junk\n")
    assert main(["train", str(data), "--method", "transfer", "--epochs", "1", "--img-size", "32",
                 "--out", "run", "-q", "--weights", "junk.pth"]) == 2
    assert_clean_error(capsys, "junk.pth' cannot be read as a state dict (damaged, not a "
                               "file torch.save wrote, or one holding more than tensors")


def test_run_folder_errors(tmp_path, make_image_folder, monkeypatch, capsys):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 24))
    (tmp_path / "file.csv").write_text("x\n")
    assert main(["train", str(data), "--out", str(tmp_path / "file.csv"), "-q"]) == 2
    assert_clean_error(capsys, "is a file; give a folder for the results")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "history.csv").write_text("mine\n")
    assert main(["train", str(data), "--out", str(mine), "-q"]) == 2
    assert_clean_error(capsys, "already holds other files")
    assert (mine / "history.csv").read_text() == "mine\n"
    monkeypatch.chdir(data)  # the default runs/... would land inside the dataset
    assert main(["train", ".", "-q"]) == 2
    assert_clean_error(capsys, "imgclf never writes into a dataset: choose --out elsewhere")
    assert sorted(p.name for p in data.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError(
    "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
    "to allocate 2559180865536 bytes"), torch.OutOfMemoryError(
    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 139.8 GiB")])
def test_running_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys, error):
    def allocate(*args, **kwargs):
        raise error

    monkeypatch.setattr("imgclf.data.audit.audit_dataset", allocate)
    assert main(["audit", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    gpu = isinstance(error, torch.OutOfMemoryError)
    assert err.startswith(f"error: out of {'the GPU' if gpu else 'memory'}")
    assert "Traceback" not in err
    assert "try a smaller --img-size or --batch-size, or fewer images" in err


def test_file_system_errors_are_one_line(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 24))
    (tmp_path / "report.json").mkdir()
    assert main(["audit", str(data), "--json", str(tmp_path / "report.json"), "-q"]) == 2
    assert_clean_error(capsys, f"{tmp_path / 'report.json'} is a folder: give a file name "
                               f"such as {tmp_path / 'report.json' / 'audit.json'}.")
    (tmp_path / "file").write_text("not a folder\n")
    assert main(["audit", str(data), "--json", str(tmp_path / "file" / "a.json"), "-q"]) == 2
    assert capsys.readouterr().out == ""  # refused before the images were read
    assert main(["audit", str(data), "--json", str(tmp_path / "file" / "a.json"), "-q"]) == 2
    assert_clean_error(capsys, f"{tmp_path / 'file' / 'a.json'} cannot be written "
                               f"({tmp_path / 'file'}: is a file, not a folder)")


def test_a_reader_that_stops_ends_the_command_quietly(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 24))
    # As `imgclf audit DATA | head -1`, with the reader gone before the first line.
    command = subprocess.Popen([sys.executable, "-m", "imgclf", "audit", str(data), "-q"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    command.stdout.close()
    stderr = command.stderr.read().decode()
    assert command.wait(timeout=120) == 141
    assert stderr == ""


def test_sigterm_stops_training_as_ctrl_c_does(tmp_path, make_image_folder):
    import os
    import signal
    import time

    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32))
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "imgclf", "train", str(data), "--out", str(run),
            "--epochs", "5000", "--patience", "0", "--img-size", "32", "-q"]
    # numba compiles the fused kernels afresh in the first epoch, where SIGTERM lands: it
    # ignores exceptions raised in its callbacks, and one from the signal hung the process.
    env = {**os.environ, "IMGCLF_CACHE_DIR": str(tmp_path / "cache"),
           "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "PYTHONFAULTHANDLER": "1"}
    command = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists():
            assert command.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        command.terminate()  # SIGTERM, as `kill` or a batch scheduler sends
        try:
            _, err = command.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # where it is stuck: faulthandler's stacks
            command.send_signal(signal.SIGABRT)
            stacks = command.communicate()[1].decode().split("\nExtension modules")[0]
            pytest.fail(f"no exit after SIGTERM:\n{stacks[-6000:]}")
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode == 130
    err = err.decode()
    assert "training interrupted; " in err
    assert f"last.pt. Continue with `imgclf train --resume --out {run}`" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in run.iterdir() if "tmp" in p.name) == []
    before = signal.getsignal(signal.SIGTERM)
    assert main(["models", "small_cnn"]) == 0
    assert signal.getsignal(signal.SIGTERM) == before  # put back when the command ends


def test_a_broken_pipe_other_than_stdout_is_an_error(monkeypatch, capsys):
    def broken(args):  # a command whose own pipe broke (stdout is fine)
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args",
                        lambda self, argv: (argparse.Namespace(func=broken), []))
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "error: Broken pipe\n"


def test_audit_json_is_never_written_into_the_dataset(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 24))
    image = next((data / "a").iterdir())
    before = image.read_bytes()
    for out, message in ((data / "audit.json", "would be inside the dataset"),
                         (image, "this file is written as .json")):
        assert main(["audit", str(data), "--json", str(out), "-q"]) == 2
        assert_clean_error(capsys, message)
    assert image.read_bytes() == before and not (data / "audit.json").exists()
    assert main(["audit", str(data), "--json", str(tmp_path / "audit.json"), "-q"]) == 0


def test_audit_json_never_writes_over_a_users_file(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 24))
    mine = tmp_path / "aud.json"
    mine.write_text('{"user":1}\n')
    assert main(["audit", str(data), "--json", str(mine), "-q"]) == 2
    assert capsys.readouterr().out == ""  # refused before the images were read
    assert main(["audit", str(data), "--json", str(mine), "-q"]) == 2
    assert_clean_error(capsys, f"{mine} exists and is not an audit report that imgclf wrote; "
                               "give the output another name, or move that file away.")
    assert mine.read_text() == '{"user":1}\n'
    ours = tmp_path / "audit.json"
    for _ in range(2):  # imgclf's own report is written again
        assert main(["audit", str(data), "--json", str(ours), "-q"]) == 0
    assert json.loads(ours.read_text())["classes"] == ["a", "b"]


def test_quiet_keeps_the_results_and_drops_the_log(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 24))
    assert main(["audit", str(data)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Dataset ") and "audit of 6 image files" in captured.err
    assert main(["audit", str(data), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Dataset ") and captured.err == ""


def test_quiet_hides_progress_bars(monkeypatch):
    from imgclf.cli.common import setup_logging

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    batches = [1, 2]
    setup_logging(0)
    assert loop._progress(batches, "train 1/1") is not batches
    setup_logging(-1)
    assert loop._progress(batches, "train 1/1") is batches


def test_verbose_is_imgclfs_debug_lines_and_twice_the_libraries_too():
    import logging

    from imgclf.cli.common import setup_logging

    imgclf_log, library_log = logging.getLogger("imgclf.data"), logging.getLogger("matplotlib")
    try:
        setup_logging(1)
        assert imgclf_log.isEnabledFor(logging.DEBUG)
        assert library_log.isEnabledFor(logging.INFO)
        assert not library_log.isEnabledFor(logging.DEBUG)
        setup_logging(2)
        assert library_log.isEnabledFor(logging.DEBUG)
        setup_logging(0)
        assert not imgclf_log.isEnabledFor(logging.DEBUG)
        assert imgclf_log.isEnabledFor(logging.INFO)
    finally:
        setup_logging(0)


def test_models_command_lists_the_small_cnns(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "small_cnn " in out and "small_cnn_wide" in out


def test_models_pattern_filters_every_list_and_prints_no_empty_section(capsys):
    assert main(["models", "tf_efficientnet_lite*"]) == 0
    out = capsys.readouterr().out
    assert "imgclf networks" not in out  # none of its own networks matches
    offline = out.split("backbones with ImageNet weights")[1].split("timm models matching")[0]
    assert "tf_efficientnet_lite0" in offline and "mobilenetv2_100" not in offline
    assert "timm models matching 'tf_efficientnet_lite*'" in out
    assert main(["models", "small_cnn*"]) == 0
    out = capsys.readouterr().out
    assert "small_cnn_wide" in out
    assert "backbones with ImageNet weights" not in out and "timm models matching" not in out
    assert main(["models", "no_such_net*"]) == 0
    assert capsys.readouterr().out.startswith("no model name matches 'no_such_net*'")


def test_evaluate_refuses_a_cache_folder_inside_the_runs_training_data(
        tmp_path, make_image_folder, capsys, monkeypatch):
    data = make_image_folder(tmp_path / "data", {"a": 4, "b": 4}, size=(24, 24), seed=1)
    other = make_image_folder(tmp_path / "other", {"a": 2, "b": 2}, size=(24, 24), seed=2)
    run = tmp_path / "run"
    assert main(["train", str(data), "--epochs", "1", "--img-size", "24", "--out", str(run),
                 "-q"]) == 0
    capsys.readouterr()
    before = sorted(data.rglob("*"))
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(data / "cache"))
    assert main(["evaluate", str(run), str(other), "--out", str(tmp_path / "ev"), "-q"]) == 2
    assert_clean_error(capsys, f"the cache folder {data / 'cache'} is inside the dataset "
                               f"{data}; imgclf never writes into a dataset")
    assert sorted(data.rglob("*")) == before


def test_a_cache_folder_inside_the_dataset_is_refused(tmp_path, make_image_folder, capsys,
                                                      monkeypatch):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 24))
    before = sorted(data.rglob("*"))
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(data / "cache"))
    for command in (["train", str(data), "--epochs", "1", "--out", str(tmp_path / "run")],
                    ["compare", str(data), "--methods", "scratch", "--out", str(tmp_path / "c")]):
        assert main(command) == 2
        assert_clean_error(capsys, f"the cache folder {data / 'cache'} is inside the dataset "
                                   f"{data}; imgclf never writes into a dataset")
    assert sorted(data.rglob("*")) == before
