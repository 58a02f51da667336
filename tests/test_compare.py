"""Tests for imgclf.compare: runs side by side, the leaderboard, skipping and failures.

One comparison is trained per module on a tiny folder: scratch, transfer with a randomly
initialised mobilenetv2_100, and transfer with a backbone too deep for its images (a run
that fails).
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import re
import shutil

import pytest

from imgclf import compare as compare_module
from imgclf.cli.main import main
from imgclf.compare import compare, name_list, plan_runs, resolve_backbones
from imgclf.errors import ConfigError, DataError, Interrupted, ModelError, RunError
from imgclf.leaderboard import leaderboard_markdown, write_leaderboard

OVERRIDES = {"model": {"pretrained": False, "img_size": 32}, "train": {"epochs": 1}}
RUNS = ["scratch-small_cnn", "transfer-mobilenetv2_100", "transfer-inception_v3"]




@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """(compare folder, dataset folder) after one comparison of three runs."""
    from conftest import single_thread, write_image_folder

    root = tmp_path_factory.mktemp("compare")
    data = write_image_folder(root / "data", {"a": 8, "b": 8}, size=(32, 32), seed=0)
    with pytest.MonkeyPatch.context() as mp, single_thread():
        mp.setenv("IMGCLF_CACHE_DIR", str(root / "cache"))
        out = compare(str(data), ["scratch", "transfer"], ["mobilenetv2_100", "inception_v3"],
                      root / "cmp", OVERRIDES)
    return out, data


def leaderboard(folder) -> list[dict]:
    with open(folder / "leaderboard.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_leaderboard_has_one_row_per_run(compared):
    out, _ = compared
    rows = leaderboard(out)
    assert sorted(r["run"] for r in rows) == sorted(RUNS)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["run"] for r in ok} == set(RUNS[:2])
    for row in ok:
        assert row["img_size"] == "32"
        assert row["epochs"] == "1"
        assert 0 <= float(row["accuracy"]) <= 1
        assert int(row["params_total"]) >= int(row["params_trainable"]) > 0
        assert row["error"] == ""
        metrics = json.loads((out / row["run"] / "metrics.json").read_text())
        assert float(row["accuracy"]) == pytest.approx(metrics["accuracy"])
    by_run = {r["run"]: r for r in rows}
    assert by_run["scratch-small_cnn"]["method"] == "scratch"
    assert by_run["transfer-mobilenetv2_100"]["backbone"] == "mobilenetv2_100"
    # Ranked: finished runs by accuracy, best first, then the failed ones.
    accuracies = [float(r["accuracy"]) for r in ok]
    assert accuracies == sorted(accuracies, reverse=True)
    assert rows[-1]["status"] == "failed"

    markdown = (out / "leaderboard.md").read_text().splitlines()
    assert markdown[0].startswith("| run | method | backbone |")
    assert set(markdown[1]) <= set("|-")
    assert len(markdown) == 2 + len(RUNS)
    assert [line.split(" | ")[0].lstrip("| ") for line in markdown[2:]] == \
        [r["run"] for r in rows]
    assert (out / "audit.json").exists()


def test_failed_run_is_recorded_with_its_error(compared):
    out, _ = compared
    failed = next(r for r in leaderboard(out) if r["run"] == "transfer-inception_v3")
    assert failed["status"] == "failed"
    assert failed["error"].startswith("ModelError: image size 32 is too small for inception_v3")
    assert failed["accuracy"] == ""
    # Its settings as a finished run's row gives them.
    assert (failed["method"], failed["backbone"], failed["img_size"]) == (
        "transfer", "inception_v3", "32")
    assert "Traceback" in (out / "transfer-inception_v3" / "error.txt").read_text()
    assert not (out / "transfer-inception_v3" / "metrics.json").exists()


def test_runs_share_the_resolved_overrides(compared):
    out, _ = compared
    import yaml

    config = yaml.safe_load((out / "transfer-mobilenetv2_100" / "config.yaml").read_text())
    assert config["method"] == "transfer"
    assert config["model"]["pretrained"] is False
    assert config["train"]["optimizer"] == "adamw"  # the transfer preset still applies
    assert config["out"] == str(out / "transfer-mobilenetv2_100")


def test_second_call_keeps_finished_runs_and_retries_failed_ones(compared, tmp_path,
                                                                 monkeypatch):
    source, data = compared
    out = shutil.copytree(source, tmp_path / "cmp")
    stamps = {name: (out / name / "model.pt").stat().st_mtime_ns for name in RUNS[:2]}
    real = compare_module._run_one
    retried = []

    def spy(plan, config, threads, resume=False):
        retried.append(plan.name)
        return real(plan, config, threads, resume)

    monkeypatch.setattr(compare_module, "_run_one", spy)
    compare(str(data), ["scratch", "transfer"], ["mobilenetv2_100", "inception_v3"], out,
            OVERRIDES)
    assert retried == ["transfer-inception_v3"]
    for name, stamp in stamps.items():
        assert (out / name / "model.pt").stat().st_mtime_ns == stamp
    rows = leaderboard(out)
    assert sorted(r["run"] for r in rows) == sorted(RUNS)
    assert {r["run"]: r["status"] for r in rows}["transfer-inception_v3"] == "failed"
    before = {r["run"]: r["accuracy"] for r in leaderboard(source)}
    assert {r["run"]: r["accuracy"] for r in rows} == before


def test_settings_other_than_the_kept_runs_are_an_error(compared, tmp_path):
    source, data = compared
    out = shutil.copytree(source, tmp_path / "cmp")
    changed = {**OVERRIDES, "train": {"epochs": 2}}
    with pytest.raises(ConfigError, match=r"scratch-small_cnn was trained with other settings "
                                          r"\(train\.epochs 2 against 1\); compare into "
                                          r"another --out, or delete that folder to train it "
                                          r"again\.$"):
        compare(str(data), ["scratch"], [], out, changed)
    other = shutil.copytree(data, tmp_path / "other")
    with pytest.raises(ConfigError, match=rf"other settings \(data\.train "
                                          rf"{re.escape(str(other))} against "
                                          rf"{re.escape(str(data))}\); .* \(if the dataset "
                                          r"moved, write its new place in .*config\.yaml to "
                                          r"keep the run\)\.$"):
        compare(str(other), ["scratch"], [], out, OVERRIDES)
    with pytest.raises(ConfigError, match=r"other settings \(data\.workers 0 against none\)"
                                          r"; .* to train it again\.$"):  # no dataset moved
        compare(str(data), ["scratch"], [], out, {**OVERRIDES, "data": {"workers": 0}})
    # The same folder named otherwise, as `imgclf train --train D` names it: kept.
    import yaml

    config_file = out / "scratch-small_cnn" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["data"].update(data=None, train=str(data))
    config_file.write_text(yaml.safe_dump(config))
    compare(str(data), ["scratch"], [], out, OVERRIDES)
    assert leaderboard(out)[0]["status"] == "ok"


@pytest.mark.parametrize("name, damaged, message", [
    ("config.yaml", ": :\n", r"config\.yaml is not valid YAML"),
    ("metrics.json", '{\n  "n_samples": ', r"metrics\.json is not valid JSON .*evaluate the run "
                                          r"again"),
])
def test_a_damaged_file_of_a_kept_run_is_an_error(compared, tmp_path, name, damaged, message):
    source, data = compared
    out = shutil.copytree(source, tmp_path / "cmp")
    (out / "scratch-small_cnn" / name).write_text(damaged)
    with pytest.raises(RunError, match=rf"scratch-small_cnn/{message}"):
        compare(str(data), ["scratch"], [], out, OVERRIDES)


def test_a_kept_run_without_its_history_has_no_epoch_count(compared, tmp_path, caplog):
    source, data = compared
    out = shutil.copytree(source, tmp_path / "cmp")
    (out / "scratch-small_cnn" / "history.csv").write_text("junk\n")
    (out / "transfer-mobilenetv2_100" / "history.csv").unlink()
    compare(str(data), ["scratch", "transfer"], ["mobilenetv2_100"], out, OVERRIDES)
    epochs = {r["run"]: r["epochs"] for r in leaderboard(out)}
    assert epochs == {"scratch-small_cnn": "", "transfer-mobilenetv2_100": ""}
    assert "scratch-small_cnn/history.csv could not be read (it is not a training" in caplog.text
    assert "mobilenetv2_100/history.csv could not be read (No such file" in caplog.text


def test_a_damaged_audit_is_written_anew(compared, tmp_path):
    source, data = compared
    out = shutil.copytree(source, tmp_path / "cmp")
    audit = json.loads((out / "audit.json").read_text())
    (out / "audit.json").write_text('{\n  "root": "/trunc')
    compare(str(data), ["scratch"], [], out, OVERRIDES)
    again = json.loads((out / "audit.json").read_text())
    assert again.pop("seconds") >= 0 and audit.pop("seconds") >= 0
    assert again == audit


def test_the_audit_is_written_again_when_runs_train_on_the_data_again(compared, tmp_path):
    source, data = compared
    out = shutil.copytree(source, tmp_path / "cmp")
    audit = json.loads((out / "audit.json").read_text())
    (out / "audit.json").write_text(json.dumps({**audit, "marker": 1}, indent=2))
    compare(str(data), ["scratch"], [], out, OVERRIDES)  # nothing to train: kept
    assert json.loads((out / "audit.json").read_text())["marker"] == 1
    (out / "scratch-small_cnn" / "metrics.json").unlink()  # as if interrupted: resumed
    compare(str(data), ["scratch"], [], out, OVERRIDES)
    assert "marker" not in json.loads((out / "audit.json").read_text())


def test_interrupted_run_stops_the_comparison_and_is_resumed(compared, tmp_path, monkeypatch):
    source, data = compared
    out = shutil.copytree(source, tmp_path / "cmp")
    (out / "scratch-small_cnn" / "metrics.json").unlink()  # as if stopped after its epochs
    calls = []
    real = compare_module._run_one

    def spy(plan, config, threads, resume=False):
        calls.append((plan.name, resume))
        return real(plan, config, threads, resume)

    monkeypatch.setattr(compare_module, "_run_one", spy)
    compare(str(data), ["scratch"], [], out, OVERRIDES)
    assert calls == [("scratch-small_cnn", True)]
    assert leaderboard(out)[0]["status"] == "ok"

    def interrupted(config, resume=False):
        raise Interrupted("training interrupted")

    monkeypatch.setattr("imgclf.engine.trainer.train", interrupted)
    (out / "scratch-small_cnn" / "metrics.json").unlink()
    with pytest.raises(Interrupted):
        compare(str(data), ["scratch"], [], out, OVERRIDES)
    assert not (out / "scratch-small_cnn" / "error.txt").exists()


def interrupted_training(config, resume=False):
    raise Interrupted("training interrupted")


def test_a_run_at_its_models_own_size_resumes_and_so_does_one_whose_resume_failed(
        tmp_path, make_image_folder, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32))
    out = tmp_path / "cmp"
    overrides = {"train": {"epochs": 1}}  # no image size: small_cnn's 150
    compare(str(data), ["scratch"], [], out, overrides)
    run = out / "scratch-small_cnn"
    (run / "metrics.json").unlink()  # as if stopped after its epochs
    with caplog.at_level(logging.INFO, logger="imgclf.compare"):
        compare(str(data), ["scratch"], [], out, overrides)
    assert "run scratch-small_cnn was interrupted: resuming it from its last epoch" in caplog.text
    assert leaderboard(out)[0]["status"] == "ok"
    # A resume refused (an image written over), then the image put back: resumed again.
    (run / "metrics.json").unlink()
    image = next((data / "a").iterdir())
    original = image.read_bytes()
    image.write_bytes(original + b"\0")
    compare(str(data), ["scratch"], [], out, overrides)
    error = leaderboard(out)[0]["error"]
    assert "some of the data's files were written over" in error
    assert error.endswith(f"To train it from scratch instead, delete {run}.")
    assert (run / "last.pt").exists() and (run / "error.txt").exists()
    image.write_bytes(original)
    # Interrupted on the next try, it is an interrupted run, not a failed one.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("imgclf.engine.trainer.train", interrupted_training)
        with pytest.raises(Interrupted):
            compare(str(data), ["scratch"], [], out, overrides)
    assert not (run / "error.txt").exists()
    (run / "error.txt").write_text("as the refused resume left it\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imgclf.compare"):
        compare(str(data), ["scratch"], [], out, overrides)
    assert ("run scratch-small_cnn failed last time (error.txt says why): resuming it from "
            "its last epoch") in caplog.text
    assert leaderboard(out)[0]["status"] == "ok" and not (run / "error.txt").exists()


def test_output_folder_and_settings_are_checked_before_any_run(tmp_path, make_image_folder,
                                                              capsys):
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32))
    with pytest.raises(RunError, match="imgclf never writes into a dataset"):
        compare(str(data), ["scratch"], [], data / "cmp", OVERRIDES)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    with pytest.raises(RunError, match="already holds other files"):
        compare(str(data), ["scratch"], [], mine, OVERRIDES)
    (mine / "notes.txt").unlink()
    (mine / "leaderboard.csv").write_text("a,b\n")  # the user's, under compare's name
    with pytest.raises(RunError, match="holds leaderboard.csv, which imgclf did not write"):
        compare(str(data), ["scratch"], [], mine, OVERRIDES)
    assert (mine / "leaderboard.csv").read_text() == "a,b\n"
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        compare(str(data), "scratch", [], tmp_path / "cmp", {"train": {"epoch": 1}})
    with pytest.raises(ModelError, match=r"Unknown model .mobilenetv2_10..*Did you mean: .*"
                                         r"mobilenetv2_100"):
        compare(str(data), ["scratch", "transfer"], ["mobilenetv2_10"], tmp_path / "cmp",
                OVERRIDES)
    # Data that no run could train on: one error, before any run.
    broken = make_image_folder(tmp_path / "broken" / "train", {"a": 4, "b": 4}, size=(32, 32))
    make_image_folder(tmp_path / "broken" / "test", {"a": 1, "c": 1}, size=(32, 32))
    with pytest.raises(DataError, match=r"test split .* has class folder\(s\) \['c'\]"):
        compare(str(broken.parent), ["scratch", "augment"], [], tmp_path / "cmp", OVERRIDES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "data", "mine"]
    assert sorted(p.name for p in data.iterdir()) == ["a", "b"]
    argv = ["compare", str(data), "--methods", "transfer", "--backbones", "inception_v3",
            "--img-size", "32", "--out", str(tmp_path / "cmp"), "--no-audit", "-q"]
    assert main(argv) == 2
    assert "error: every run failed" in capsys.readouterr().err
    # Some failed: the leaderboard is written, and the status says not every run trained.
    argv = ["compare", str(data), "--methods", "scratch,transfer", "--backbones",
            "inception_v3", "--img-size", "32", "--epochs", "1", "--out",
            str(tmp_path / "some"), "--no-audit", "-q"]
    assert main(argv) == 1
    assert "error: 1 of 2 runs failed (transfer-inception_v3): the reasons are in the error " \
           "column" in capsys.readouterr().err
    assert [r["status"] for r in leaderboard(tmp_path / "some")] == ["ok", "failed"]


def test_a_backbone_without_weights_stops_the_comparison_before_any_run(
        tmp_path, make_image_folder, monkeypatch):
    from imgclf.errors import WeightsUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # resnet18's weights ship in no pip package
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32))
    with pytest.raises(WeightsUnavailableError, match=r"No pretrained weights for backbone "
                                                      r"'resnet18'"):
        compare(str(data), ["scratch", "transfer"], ["mobilenetv2_100", "resnet18"],
                tmp_path / "cmp", {"model": {"img_size": 32}, "train": {"epochs": 1}})
    assert not (tmp_path / "cmp").exists()  # the scratch run did not train first


def test_a_folder_of_runs_alone_is_compared_into_and_its_runs_kept(compared, tmp_path):
    source, data = compared
    out = tmp_path / "cmp"
    out.mkdir()
    shutil.copytree(source / "scratch-small_cnn", out / "scratch-small_cnn")  # as train left it
    stamp = (out / "scratch-small_cnn" / "model.pt").stat().st_mtime_ns
    compare(str(data), ["scratch"], [], out, OVERRIDES)
    assert (out / "scratch-small_cnn" / "model.pt").stat().st_mtime_ns == stamp
    assert [r["run"] for r in leaderboard(out)] == ["scratch-small_cnn"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes").mkdir()  # a folder, but not a run
    with pytest.raises(RunError, match="already holds other files"):
        compare(str(data), ["scratch"], [], tmp_path / "other", OVERRIDES)
    (tmp_path / "runs").mkdir()  # a run, but not one this comparison would train
    shutil.copytree(source / "scratch-small_cnn", tmp_path / "runs" / "pets")
    with pytest.raises(RunError, match="already holds other files"):
        compare(str(data), ["scratch"], [], tmp_path / "runs", OVERRIDES)


def test_a_comparison_or_run_another_process_trains_is_left_alone(compared, tmp_path):
    from imgclf.errors import RunFolderBusy
    from imgclf.paths import run_folder_lock

    source, data = compared
    out = shutil.copytree(source, tmp_path / "cmp")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with run_folder_lock(out), pytest.raises(RunFolderBusy, match="training into .*cmp: wait"):
        compare(str(data), ["scratch"], [], out, OVERRIDES)
    # A run of it trained by `imgclf train --out cmp/<run>` meanwhile: not recorded as failed.
    shutil.rmtree(out / "transfer-mobilenetv2_100")
    with run_folder_lock(out / "transfer-mobilenetv2_100"), pytest.raises(RunFolderBusy):
        compare(str(data), ["transfer"], ["mobilenetv2_100"], out, OVERRIDES)
    assert not (out / "transfer-mobilenetv2_100" / "error.txt").exists()
    assert {r["run"] for r in leaderboard(out)} == {r["run"] for r in leaderboard(source)}
    assert len(before) > len(list(out.rglob("*")))  # nothing but the removed run changed


def test_leaderboard_keeps_runs_of_an_earlier_comparison(compared, tmp_path):
    source, data = compared
    out = shutil.copytree(source, tmp_path / "cmp")
    compare(str(data), ["scratch"], [], out, OVERRIDES)
    # Both finished runs; the failed one left no finished folder.
    assert sorted(r["run"] for r in leaderboard(out)) == sorted(RUNS[:2])


def test_leaderboard_leaves_out_runs_on_other_data(compared, tmp_path, caplog):
    import yaml

    source, data = compared
    out = shutil.copytree(source, tmp_path / "cmp")
    # As `imgclf train OTHER --out cmp/...` leaves it: a finished run on other images.
    config_file = out / "transfer-mobilenetv2_100" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["data"]["data"] = str(tmp_path / "other-data")
    config_file.write_text(yaml.safe_dump(config))
    (tmp_path / "link").symlink_to(data)  # the same data by another name: not other data
    with caplog.at_level(logging.WARNING, logger="imgclf.compare"):
        compare(str(tmp_path / "link"), ["scratch"], [], out, OVERRIDES)
    assert [r["run"] for r in leaderboard(out)] == ["scratch-small_cnn"]
    assert "run transfer-mobilenetv2_100 in " in caplog.text
    assert (f"was trained on other data (data.data {tmp_path / 'other-data'} against "
            f"{data}): left out of the leaderboard") in caplog.text  # the link followed


def test_runs_evaluated_on_other_images_are_warned_of(compared, tmp_path, caplog):
    from imgclf.report.folders import load_folder

    source, data = compared
    out = shutil.copytree(source, tmp_path / "cmp")
    rows = {row["run"]: row for row in leaderboard(out)}
    assert (rows["scratch-small_cnn"]["split"], rows["scratch-small_cnn"]["n_samples"]) == (
        "val", "4")
    # As a kept run scored before its test images changed.
    metrics_file = out / "transfer-mobilenetv2_100" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "n_samples": 5}))
    with caplog.at_level(logging.WARNING, logger="imgclf.compare"):
        compare(str(data), ["scratch"], [], out, OVERRIDES)
    note = ("the runs were evaluated on different images (val split, 4 images: "
            "scratch-small_cnn; val split, 5 images: transfer-mobilenetv2_100), so their "
            "figures do not compare")
    assert note in caplog.text
    assert any(n.startswith(note) for n in load_folder(out).notes), load_folder(out).notes


def test_a_model_given_is_the_network_of_the_scratch_and_augment_runs():
    plans = plan_runs(["scratch", "augment", "transfer"], ["resnet18"], "small_cnn")
    assert [(p.name, p.model) for p in plans] == [
        ("scratch-small_cnn", "small_cnn"), ("augment-small_cnn", "small_cnn"),
        ("transfer-resnet18", "resnet18")]
    with pytest.raises(ConfigError, match=r"model 'small_cnn' would be the network of scratch "
                                          r"and augment runs, and there are none"):
        plan_runs(["transfer"], ["resnet18"], "small_cnn")


def test_compare_command_refuses_backbones_without_transfer(tmp_path, make_image_folder,
                                                            capsys):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 24))
    argv = ["compare", str(data), "--methods", "scratch", "--backbones", "resnet18",
            "--out", str(tmp_path / "cmp")]
    assert main(argv) == 2
    assert "error: settings of transfer runs alone (backbones (--backbones)) are given, and " \
           "the methods (scratch) have no transfer run" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()
    with pytest.raises(ConfigError, match=r"\(backbones \(--backbones\)\) are given"):
        compare(str(data), "scratch", "resnet18", tmp_path / "cmp")  # as from Python
    assert not (tmp_path / "cmp").exists()


def test_a_backbones_settings_go_to_the_transfer_runs_alone(tmp_path):
    overrides = {"data": {"data": str(tmp_path)}, "train": {"finetune": 1, "epochs": 2},
                 "model": {"head": "linear", "dropout": 0.3, "img_size": 32}}
    plans = plan_runs(["scratch", "transfer"], ["mobilenetv2_100"])
    scratch, transfer = (compare_module._plan_config(p, overrides, tmp_path) for p in plans)
    assert (scratch.model.head, scratch.model.dropout, scratch.train.finetune) == (
        "reference", 0.2, None)  # the defaults, which imgclf's own networks accept
    assert (transfer.model.head, transfer.model.dropout, transfer.train.finetune) == (
        "linear", 0.3, "1")  # as --finetune gives it
    assert scratch.model.img_size == transfer.model.img_size == 32  # the others go to all
    # A timm network as the scratch run's trains from random weights; transfer's do not.
    plans = plan_runs(["scratch", "transfer"], ["mobilenetv2_100"], "mobilenetv2_100")
    scratch, transfer = (compare_module._plan_config(p, overrides, tmp_path) for p in plans)
    assert (scratch.model.pretrained, transfer.model.pretrained) == (False, True)
    with pytest.raises(ConfigError, match=r"settings of transfer runs alone \(model.head, "
                                          r"model.dropout, train.finetune\) are given, and the "
                                          r"methods \(scratch\) have no transfer run"):
        compare(str(tmp_path), ["scratch"], [], tmp_path / "cmp", overrides)


def test_unknown_sort_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot sort the leaderboard by 'bogus'; choose one "
                                          r"of accuracy, "):
        compare("data", ["scratch"], [], tmp_path / "cmp", sort_by="bogus")
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("workers", [0, -2, 1.5])
def test_workers_under_one_are_an_error(tmp_path, workers):
    with pytest.raises(ConfigError, match=rf"workers \(runs trained at a time\) must be a whole "
                                          rf"number, at least 1 \(1: one after another\), got "
                                          rf"{workers}"):
        compare("data", ["scratch"], [], tmp_path / "cmp", workers=workers)
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("sort_by, ranked", [
    ("accuracy", ["a", "b", "c", "failed"]),
    ("f1_macro", ["b", "a", "c", "failed"]),  # c has no macro F1: after those with one
    ("log_loss", ["c", "a", "b", "failed"]),  # lower is better
])
def test_leaderboard_is_ranked_by_the_sort_key_and_names_it(tmp_path, sort_by, ranked):
    rows = [{"run": "failed", "status": "failed", "error": "RuntimeError: boom"},
            {"run": "a", "status": "ok", "accuracy": 0.9, "f1_macro": 0.5, "log_loss": 0.3},
            {"run": "b", "status": "ok", "accuracy": 0.8, "f1_macro": 0.7, "log_loss": 0.4},
            {"run": "c", "status": "ok", "accuracy": 0.7, "f1_macro": None, "log_loss": 0.2}]
    write_leaderboard(rows, tmp_path, sort_by)
    written = leaderboard(tmp_path)
    assert [r["run"] for r in written] == ranked
    assert {r["ranked_by"] for r in written} == {sort_by}
    header = (tmp_path / "leaderboard.md").read_text().splitlines()[0]
    assert header.startswith("| run | method | backbone |") and header.endswith("| ranked_by |")


def test_top_k_columns_come_in_order_of_k(tmp_path):
    rows = [{"run": "a", "status": "ok", "accuracy": 0.9, "top_10": 1.0, "top_3": 0.95},
            {"run": "b", "status": "ok", "accuracy": 0.8, "top_5": 0.9}]
    write_leaderboard(rows, tmp_path)
    header = (tmp_path / "leaderboard.md").read_text().splitlines()[0]
    assert header.endswith("| top_3 | top_5 | top_10 | ranked_by |")


def test_each_run_warns_of_the_data_once(tmp_path, make_image_folder, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32), seed=2)
    with caplog.at_level(logging.WARNING, logger="imgclf"):
        compare(str(data), ["scratch", "augment"], None, tmp_path / "cmp",
                {"model": {"img_size": 32}, "train": {"epochs": 1}})
    warned = collections.Counter(r.message for r in caplog.records
                                 if "training image(s); results for it" in r.message)
    assert warned and set(warned.values()) == {2}  # in each of the two runs


def test_compare_command(tmp_path, make_image_folder, capsys):
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32), seed=2)
    out = tmp_path / "cmp"
    argv = ["compare", str(data), "--methods", "scratch", "--out", str(out), "--epochs", "1",
            "--img-size", "32", "--no-audit", "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| scratch-small_cnn | scratch | small_cnn | 32 |" in printed
    assert f"leaderboard: {out / 'leaderboard.csv'}" in printed
    assert [r["run"] for r in leaderboard(out)] == ["scratch-small_cnn"]
    assert not (out / "audit.json").exists()


def test_plan_runs():
    plans = plan_runs(["scratch", "augment", "transfer"], ["a_net", "b_net"])
    assert [(p.name, p.method, p.model) for p in plans] == [
        ("scratch-small_cnn", "scratch", "small_cnn"),
        ("augment-small_cnn_wide", "augment", "small_cnn_wide"),
        ("transfer-a_net", "transfer", "a_net"),
        ("transfer-b_net", "transfer", "b_net"),
    ]
    assert [p.model for p in plan_runs(["transfer"], [])] == ["tf_efficientnet_lite0"]
    with pytest.raises(ConfigError, match=r"unknown method\(s\) \['distill'\]"):
        plan_runs(["scratch", "distill"], [])
    assert [p.name for p in plan_runs(["scratch", "scratch"], [])] == ["scratch-small_cnn"]
    with pytest.raises(ConfigError, match=r"no methods given; choose from scratch, augment, "):
        plan_runs([], [])


def test_resolve_backbones(monkeypatch):
    assert resolve_backbones(None) == ["tf_efficientnet_lite0"]
    assert resolve_backbones(" a, b ,a,") == ["a", "b"]
    from imgclf.models import weights

    monkeypatch.setattr(weights, "offline_backbones", lambda: {"x_net": "pkg", "a": "pkg"})
    assert resolve_backbones("a,offline") == ["a", "x_net"]
    assert resolve_backbones(["offline"]) == ["x_net", "a"]  # as the Python API passes them


def test_methods_and_backbones_as_one_string_of_names(tmp_path):
    assert name_list(" scratch, transfer ,") == ["scratch", "transfer"]
    assert name_list(["augment "]) == ["augment"]
    with pytest.raises(ConfigError, match=r"unknown method\(s\) \['distill'\]"):
        compare(str(tmp_path), "scratch, distill", "mobilenetv2_100", tmp_path / "cmp")


def test_offline_backbones_from_python(tmp_path, monkeypatch):
    from imgclf.models import weights

    monkeypatch.setattr(weights, "offline_backbones", lambda: {"installed_net": "pkg"})
    with pytest.raises(ModelError, match="Unknown model 'installed_net'"):  # expanded
        compare(str(tmp_path), "transfer", "offline", tmp_path / "cmp")


def test_each_run_keeps_its_method_over_a_config_file(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6}, size=(32, 32), seed=2)
    settings = tmp_path / "settings.yaml"
    settings.write_text("method: transfer\ntrain:\n  patience: 7\n")
    out = compare(str(data), ["scratch"], [], tmp_path / "cmp",
                  {"config_file": str(settings), "model": {"img_size": 32},
                   "train": {"epochs": 1}}, audit=False)
    import yaml

    config = yaml.safe_load((out / "scratch-small_cnn" / "config.yaml").read_text())
    assert config["method"] == "scratch"
    assert config["train"]["optimizer"] == "adam"  # the scratch preset, not transfer's
    assert config["train"]["patience"] == 7  # the file's other settings still apply
    assert leaderboard(out)[0]["method"] == "scratch"


def test_workers_train_runs_in_parallel_processes(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data", {"a": 8, "b": 8}, size=(32, 32), seed=4)
    out = compare(str(data), ["scratch", "transfer"], ["mobilenetv2_100"], tmp_path / "cmp",
                  OVERRIDES, workers=2, audit=False)
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert sorted(r["run"] for r in rows) == ["scratch-small_cnn", "transfer-mobilenetv2_100"]
    assert all(r["status"] == "ok" for r in rows), rows
    for row in rows:
        assert (out / row["run"] / "model.pt").exists()


@pytest.mark.parametrize("when, how", [
    ("training", "Ctrl-C"),  # SIGINT to every process of the job, as a terminal sends it
    ("starting", "Ctrl-C"),  # while the workers load PyTorch
    ("training", "SIGTERM"),  # to the command alone (`kill PID`): it passes it on
])
def test_an_interruption_stops_the_workers_runs_and_starts_no_other(tmp_path, make_image_folder,
                                                                    when, how):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = make_image_folder(tmp_path / "data", {"a": 8, "b": 8}, size=(32, 32), seed=4)
    out = tmp_path / "cmp"
    # Three runs for two workers, long enough to be under way when interrupted.
    argv = [sys.executable, "-m", "imgclf", "compare", str(data), "--methods",
            "scratch,augment,transfer", "--no-pretrained", "--img-size", "32", "--epochs",
            "5000", "--patience", "0", "--workers", "2", "--out", str(out), "--no-audit"]
    env = {**os.environ, "IMGCLF_CACHE_DIR": str(tmp_path / "cache")}
    command = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                               start_new_session=True)  # its own group, as a terminal's job
    try:
        deadline = time.monotonic() + 120
        ready = out / "scratch-small_cnn" / "last.pt" if when == "training" else out
        while not ready.exists():
            assert command.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        if when == "starting":
            time.sleep(0.5)  # the folder, then the workers, which load PyTorch for seconds
        if how == "Ctrl-C":
            os.killpg(command.pid, signal.SIGINT)
        else:
            command.terminate()
        _, err = command.communicate(timeout=120)
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
    err = err.decode()
    assert command.returncode == 130, err
    assert "Traceback" not in err
    if when == "training":  # starting, the command itself may not have handed them out yet
        assert "comparison interrupted during runs scratch-small_cnn, augment-small_cnn_wide" \
            in err
    assert "interrupted" in err
    assert not (out / "transfer-tf_efficientnet_lite0").exists()  # never started
    assert not (out / "scratch-small_cnn" / "metrics.json").exists()
    assert not (out / "augment-small_cnn_wide" / "metrics.json").exists()


def test_an_interrupted_comparison_says_which_runs_saved_their_progress(tmp_path):
    from imgclf.compare import _comparison_interrupted

    started, starting = tmp_path / "scratch-small_cnn", tmp_path / "augment-small_cnn_wide"
    started.mkdir()
    (started / "last.pt").write_bytes(b"")
    assert str(_comparison_interrupted([started])) == (
        "comparison interrupted during run scratch-small_cnn, whose progress is saved: run "
        "the same imgclf compare command again to go on from there.")
    assert str(_comparison_interrupted([starting])) == (
        "comparison interrupted during run augment-small_cnn_wide, before it saved any "
        "progress: run the same imgclf compare command again to start it.")
    assert str(_comparison_interrupted([started, starting])) == (
        "comparison interrupted during runs scratch-small_cnn, augment-small_cnn_wide: the "
        "progress of scratch-small_cnn is saved, augment-small_cnn_wide had saved none yet. "
        "Run the same imgclf compare command again to go on.")
    assert "before any run started" in str(_comparison_interrupted([]))



def test_an_interruption_outside_any_run_says_the_finished_runs_are_kept(tmp_path,
                                                                         monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_module, "plan_runs", interrupted)
    with pytest.raises(Interrupted, match=r"^comparison interrupted; its finished runs are "
                                          r"kept: run the same imgclf compare command again"):
        compare(str(tmp_path), "scratch", None, tmp_path / "cmp")


def test_a_failed_runs_error_stays_in_its_leaderboard_row():
    rows = [{"run": "a", "status": "failed",
             "error": "RuntimeError: Error(s) in loading state_dict:\n\tsize | <mismatch>"},
            {"run": "b", "status": "ok", "accuracy": 0.5}]
    lines = leaderboard_markdown(rows, ["run", "status", "error", "accuracy"]).splitlines()
    assert lines[2:] == [
        "| a | failed | RuntimeError: Error(s) in loading state_dict: size \\| \\<mismatch> |  |",
        "| b | ok |  | 0.5000 |"]
