"""End-to-end tests for imgclf.engine.trainer (and the loop under it) on tiny image folders.

Every run trains on 32 px images of 2-3 colour classes for 1-3 epochs; transfer runs use
a randomly initialised mobilenetv2_100 (no weights needed) at 32 px.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import imgclf
from imgclf.config import build_config, load_config
from imgclf.engine import loop, trainer
from imgclf.engine.checkpoints import load_checkpoint
from imgclf.engine.trainer import train
from imgclf.errors import ConfigError, DataError, Diverged, Interrupted, RunError
from imgclf.models import onnx
from imgclf.models.factory import Classifier, Preprocessing
from imgclf.paths import cache_dir
from imgclf.predict import Predictor

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                   "phase"]
TIMING_KEYS = {"train_seconds", "inference_images_per_second"}
BACKBONE = {"name": "mobilenetv2_100", "pretrained": False, "img_size": 32}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REAL_TRAIN_ONE_EPOCH = loop.train_one_epoch




@pytest.fixture
def split_data(tmp_path, make_image_folder):
    """train/ (3 classes x 8) and test/ (3 classes x 3), 32 px, different pixels each."""
    root = tmp_path / "data"
    make_image_folder(root / "train", {"a": 8, "b": 8, "c": 8}, size=(32, 32), seed=0)
    make_image_folder(root / "test", {"a": 3, "b": 3, "c": 3}, size=(32, 32), seed=1)
    return root


@pytest.fixture
def flat_data(tmp_path, make_image_folder):
    """One folder of 2 classes x 10 images, no splits: imgclf splits off validation."""
    return make_image_folder(tmp_path / "flat", {"cat": 10, "dog": 10}, size=(32, 32), seed=3)


def scratch(data, out, epochs: int = 2, **options):
    """A tiny scratch run; ``options`` are merged into the config sections."""
    sections = {"model": {"img_size": 32}, "train": {"epochs": epochs}}
    for key, value in options.items():
        sections[key] = {**sections.get(key, {}), **value} if isinstance(value, dict) else value
    return imgclf.train(data, **sections, out=out)


def scratch_config(data, out, **train):
    """The config of a tiny scratch run on ``data`` into ``out``, ``train`` its settings."""
    return build_config("scratch", None, {"data": {"data": str(data)}, "out": str(out),
                                          "model": {"img_size": 32}, "train": train})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def without_timings(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def history_without_seconds(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in read_csv(run / "history.csv")]


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- a scratch run and everything it writes ----------------------------------------------------


def test_scratch_run_writes_config_history_metrics_checkpoints_and_plots(split_data, tmp_path):
    out = tmp_path / "run"  # a Path, as a Python caller would pass it
    run = scratch(split_data, out, epochs=2, train={"amp": "off"})
    assert Path(run) == out

    config = load_config(out / "config.yaml")
    assert config.method == "scratch"
    assert config.model.name == "small_cnn"
    assert config.model.img_size == 32
    assert config.train.epochs == 2
    assert config.data.data == str(split_data)
    assert config.out == str(out)

    history = read_csv(out / "history.csv")
    assert list(history[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert {r["phase"] for r in history} == {"train"}
    for row in history:
        assert 0 <= float(row["accuracy"]) <= 1 and 0 <= float(row["val_accuracy"]) <= 1
        assert float(row["loss"]) > 0 and float(row["val_loss"]) > 0
        assert float(row["lr"]) == pytest.approx(1e-3)

    metrics = metrics_of(out)
    assert metrics["split"] == "test"
    assert "note" not in metrics
    assert metrics["n_samples"] == 9
    assert metrics["skipped_files"] == 0
    assert sum(map(sum, metrics["confusion_matrix"])) == 9
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "precision_weighted"):
        assert 0 <= metrics[key] <= 1, key  # fractions, not percentages
    predictions = read_csv(out / "predictions.csv")
    assert len(predictions) == 9
    assert {Path(p["path"]).parent.parent.name for p in predictions} == {"test"}
    correct = sum(p["label"] == p["predicted"] for p in predictions)
    assert metrics["accuracy"] == pytest.approx(correct / 9)
    assert metrics["parameters"]["total"] >= metrics["parameters"]["trainable"] > 0

    for name in ("model.pt", "best.pt", "last.pt"):
        ckpt = load_ckpt(out / name)  # plain data only
        assert ckpt["classes"] == ["a", "b", "c"]
        assert ckpt["preprocessing"]["img_size"] == 32
        assert ckpt["model_config"]["name"] == "small_cnn"
        assert ckpt["model_config"]["num_classes"] == 3
    last = load_ckpt(out / "last.pt")
    assert last["epoch"] == 2 and len(last["history"]) == 2 and "optimizer" in last
    assert "optimizer" not in load_ckpt(out / "model.pt")

    # model.pt is what was evaluated: predicting the test images reproduces predictions.csv.
    predictor = Predictor(out, device="cpu")
    predicted = {str(p.path): p for p in predictor.predict([split_data / "test"])}
    for row in predictions:
        p = predicted[row["path"]]
        assert p.predicted == row["predicted"]
        assert p.confidence == pytest.approx(float(row["confidence"]), abs=1e-4)

    for plot in ("learning_curves.png", "confusion_matrix.png", "roc_curves.png"):
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC, plot
    assert read_csv(out / "skipped.csv") == []


def test_model_pt_holds_the_best_epoch_unless_told_otherwise(split_data, tmp_path):
    best_run = scratch(split_data, tmp_path / "best", epochs=3,
                       train={"monitor": "val_accuracy", "patience": 0})
    best, model = load_ckpt(best_run / "best.pt"), load_ckpt(best_run / "model.pt")
    assert same_weights(best["model"], model["model"])
    history = read_csv(best_run / "history.csv")
    top = max(float(r["val_accuracy"]) for r in history)
    first_top = next(int(r["epoch"]) for r in history if float(r["val_accuracy"]) == top)
    assert best["epoch"] == first_top

    last_run = scratch(split_data, tmp_path / "last", epochs=2, train={"restore_best": False})
    assert same_weights(load_ckpt(last_run / "last.pt")["model"],
                        load_ckpt(last_run / "model.pt")["model"])


def test_early_stopping_and_best_checkpoint_share_the_rule(split_data, tmp_path):
    # min_delta so large that nothing after the first epoch counts as better.
    run = scratch(split_data, tmp_path / "run", epochs=6,
                  train={"patience": 2, "min_delta": 100.0})
    history = read_csv(run / "history.csv")
    assert len(history) == 3  # the first epoch, then two without improvement
    assert load_ckpt(run / "best.pt")["epoch"] == 1
    assert same_weights(load_ckpt(run / "best.pt")["model"], load_ckpt(run / "model.pt")["model"])


def test_without_test_split_metrics_are_on_val_with_a_note(flat_data, tmp_path):
    run = scratch(flat_data, tmp_path / "run", epochs=1)
    metrics = metrics_of(run)
    assert metrics["split"] == "val"
    assert "no test split" in metrics["note"]
    assert metrics["n_samples"] == 4  # 20% of 20, stratified
    assert "validation: 20% of train" in metrics["data_summary"]
    predictions = read_csv(run / "predictions.csv")
    assert sorted(p["label"] for p in predictions) == ["cat", "cat", "dog", "dog"]


def test_same_seed_gives_same_split_and_metrics(flat_data, tmp_path):
    runs = [scratch(flat_data, tmp_path / name, epochs=2, seed=seed, train={"device": "cpu"})
            for name, seed in (("one", 7), ("two", 7), ("other", 8))]
    one, two, other = runs

    def split_of(run):
        return sorted(p["path"] for p in read_csv(run / "predictions.csv"))

    assert split_of(one) == split_of(two)
    assert without_timings(metrics_of(one)) == without_timings(metrics_of(two))
    assert history_without_seconds(one) == history_without_seconds(two)
    assert same_weights(load_ckpt(one / "model.pt")["model"], load_ckpt(two / "model.pt")["model"])
    assert split_of(other) != split_of(one)  # the seed drives the split


# --- interruption and resume --------------------------------------------------------------------


class InterruptAfter:
    """A loader that raises KeyboardInterrupt after ``steps`` batches (Ctrl-C mid-epoch)."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps = loader, steps

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.steps:
                raise KeyboardInterrupt
            yield batch


def stop_when(monkeypatch, name: str, when: Callable[..., bool]) -> None:
    """Make the loop's function ``name`` raise KeyboardInterrupt (Ctrl-C) when called with
    arguments for which ``when`` holds."""
    real = getattr(loop, name)

    def stopping(*args, **kwargs):
        if when(*args, **kwargs):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, name, stopping)


def train_interrupted(monkeypatch, config, n: int) -> None:
    """Train ``config`` with Ctrl-C on the loop's ``n``-th epoch (``interrupt_on_call``),
    as a user leaves a run to resume; the test's patches are undone after."""
    interrupt_on_call(monkeypatch, n)
    with pytest.raises(Interrupted):
        train(config)
    monkeypatch.undo()


def interrupt_on_call(monkeypatch, n: int, steps: int = 0) -> list[str]:
    """Make the loop's ``train_one_epoch`` raise KeyboardInterrupt on its ``n``-th call,
    after training on ``steps`` batches of it; returns the list of phase names it was
    called for."""
    calls: list[str] = []

    def fake(phase, rt, desc):
        calls.append(phase.name)
        if len(calls) == n:
            phase = dataclasses.replace(phase,
                                        train_loader=InterruptAfter(phase.train_loader, steps))
        return REAL_TRAIN_ONE_EPOCH(phase, rt, desc)

    monkeypatch.setattr(loop, "train_one_epoch", fake)
    return calls


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_history_records_the_rate_each_epoch_started_at(split_data, tmp_path, schedule):
    run = scratch(split_data, tmp_path / "run", epochs=3,
                  train={"schedule": schedule, "lr": 0.01, "tta": "off", "patience": 0,
                         "batch_size": 4})
    rates = [float(r["lr"]) for r in read_csv(run / "history.csv")]
    # one-cycle starts at lr / 25 and rises (over the first 30% of its steps: several
    # batches an epoch, so that its first step lies in that rise); cosine starts at lr
    first = 0.01 / 25 if schedule == "onecycle" else 0.01
    assert rates[0] == pytest.approx(first)
    assert (rates[1] > rates[0]) is (schedule == "onecycle")


def test_the_plateau_schedule_follows_the_mode_early_stopping_follows(split_data, tmp_path,
                                                                    monkeypatch):
    from imgclf.engine import trainer

    modes = []

    def spy(optimizer, name, epochs, steps_per_epoch, mode):
        modes.append((name, mode))
        return make_scheduler(optimizer, name, epochs, steps_per_epoch, mode)

    make_scheduler = trainer.make_scheduler
    monkeypatch.setattr(trainer, "make_scheduler", spy)
    scratch(split_data, tmp_path / "run", epochs=1,
            train={"schedule": "plateau", "monitor": "val_loss", "mode": "max", "tta": "off"})
    assert modes == [("plateau", "max")]


def test_one_cycle_over_a_single_step_trains_it_at_a_useful_rate():
    from imgclf.engine.trainer import make_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    _, per_batch = make_scheduler(optimizer, "onecycle", epochs=1, steps_per_epoch=1,
                                  mode="min")
    assert per_batch and optimizer.param_groups[0]["lr"] > 0.005


def test_a_run_that_diverges_at_once_stops_with_the_fix(split_data, tmp_path):
    with pytest.raises(Diverged, match=r"training diverged in epoch \d: the .* (became "
                                            r"(nan|inf)|stopped being finite).*Lower the "
                                            r"learning rate "
                                            r"\(--lr; this phase's was 1e\+30\) and train "
                                            r"again, into another --out or after deleting "
                                            r".*run \(resuming it would keep this rate\)\.$"):
        scratch(split_data, tmp_path / "run", train={"lr": 1e30, "amp": "off"})
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_fine_tuning_phase_that_diverges_names_its_own_rate(split_data, tmp_path):
    # Huge but finite weights: the outputs overflow, in validation first.
    with pytest.raises(Diverged, match=r"training diverged in finetune epoch 1, epoch 2 of the "
                                       r"run: the outputs on the validation images stopped "
                                       r"being finite numbers\. Lower the learning rate "
                                       r"\(--finetune-lr, and --lr, whose half the head "
                                       r"trains at; this phase's was 1e\+30\)"):
        imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                     train={"finetune": "all", "warmup_epochs": 1, "finetune_epochs": 1,
                            "finetune_lr": 1e30, "amp": "off"})


def test_a_run_that_diverges_later_keeps_its_best_epoch(split_data, tmp_path, monkeypatch,
                                                         caplog):
    calls = []

    def poisoned(phase, rt, desc):  # the second epoch leaves a weight that is not a number
        calls.append(desc)
        row = REAL_TRAIN_ONE_EPOCH(phase, rt, desc)
        if len(calls) == 2:
            with torch.no_grad():
                next(phase.module.parameters()).fill_(float("nan"))
        return row

    monkeypatch.setattr(loop, "train_one_epoch", poisoned)
    run = scratch(split_data, tmp_path / "run", epochs=3, train={"tta": "off"})
    assert len(calls) == 2
    assert "training diverged in epoch 2: the weights stopped being finite numbers" in caplog.text
    assert [int(r["epoch"]) for r in read_csv(run / "history.csv")] == [1]
    assert 0 <= json.loads((run / "metrics.json").read_text())["accuracy"] <= 1


def test_train_refuses_arguments_of_the_wrong_kind(split_data, tmp_path):
    with pytest.raises(ConfigError, match=r"^resume must be True or False, got 'no'\.$"):
        imgclf.train(out=tmp_path / "run", resume="no")
    with pytest.raises(ConfigError, match=r"config is the path of a YAML file; give settings "
                                          r"as keyword sections instead"):
        imgclf.train(split_data, config={"train": {"epochs": 1}})
    with pytest.raises(ConfigError, match=r"config is a file or folder, given as a str or "
                                          r"Path; got int 3\.$"):
        imgclf.train(split_data, config=3)
    for data, out, wrong in ((42, None, "data .* got int 42"), (["d"], None, "data .* got list"),
                             (split_data, 5, "out .* got int 5")):
        with pytest.raises(ConfigError, match=rf"^{wrong}"):
            imgclf.train(data, out=out)
    assert not (tmp_path / "run").exists() and not Path("5").exists()


def test_resume_after_interruption(split_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = scratch_config(split_data, out, epochs=3)
    calls = interrupt_on_call(monkeypatch, 2)
    with pytest.raises(Interrupted, match=r"last whole epoch is saved in .*last\.pt.*--resume"):
        train(config)
    assert calls == ["train", "train"]
    last = load_ckpt(out / "last.pt")
    assert last["epoch"] == 1 and not last["phase_done"]
    assert [int(r["epoch"]) for r in read_csv(out / "history.csv")] == [1]
    assert not (out / "metrics.json").exists()

    # From Python as from the command line: the run's own settings, nothing else.
    with pytest.raises(RunError, match="goes on with the settings it was started with"):
        imgclf.train(split_data, out=out, resume=True, train={"lr": 0.5})
    with pytest.raises(RunError, match="resuming needs out= RUN_DIR"):
        imgclf.train(resume=True)
    calls_during_resume = interrupt_on_call(monkeypatch, 0)  # counts, never interrupts
    run = imgclf.train(out=out, resume=True)
    assert calls_during_resume == ["train", "train"]  # epochs 2 and 3 only
    history = read_csv(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert load_ckpt(run / "last.pt")["epoch"] == 3
    assert metrics_of(run)["split"] == "test"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(config for an output folder, the run trained without interruption) on data as
    ``split_data``'s."""
    from conftest import single_thread, write_image_folder

    root = tmp_path_factory.mktemp("resume")
    write_image_folder(root / "data" / "train", {"a": 8, "b": 8, "c": 8}, size=(32, 32), seed=0)
    write_image_folder(root / "data" / "test", {"a": 3, "b": 3, "c": 3}, size=(32, 32), seed=1)

    def config(out, preset="reference"):
        # reference: a batch-wise warp in the training process; trivial: per-image
        # augmentation in a loader process
        return build_config("augment", None, {
            "data": {"data": str(root / "data")}, "out": str(out),
            "model": {"name": "small_cnn", "img_size": 32}, "augment": {"preset": preset},
            "train": {"epochs": 3, "patience": 0, "tta": "off", "amp": "off",
                      "batch_size": 8, "device": "cpu"}})

    with pytest.MonkeyPatch.context() as mp, single_thread():
        mp.setenv("IMGCLF_CACHE_DIR", str(root / "cache"))
        whole = {preset: train(config(root / preset, preset))
                 for preset in ("reference", "trivial")}
    return config, whole


@pytest.mark.parametrize("preset, epoch, steps", [
    ("reference", 1, 0), ("reference", 1, 2), ("reference", 3, 2), ("trivial", 2, 1)],
    ids=["first epoch's start", "mid first epoch", "mid third epoch", "loader process"])
def test_resumed_run_trains_as_an_uninterrupted_one(uninterrupted, tmp_path, monkeypatch,
                                                     preset, epoch, steps):
    # Augmentation, dropout and shuffling all draw random numbers: a resumed run must draw
    # the ones the uninterrupted run drew, from the weights of the last whole epoch.
    make_config, runs = uninterrupted
    config, whole = (lambda out: make_config(out, preset)), runs[preset]
    interrupt_on_call(monkeypatch, epoch, steps)
    saved = "its last whole epoch is saved" if epoch > 1 else \
        "no epoch had finished; its starting point is saved"
    with pytest.raises(Interrupted, match=f"training interrupted; {saved} in "):
        train(config(tmp_path / "part"))
    monkeypatch.setattr(loop, "train_one_epoch", REAL_TRAIN_ONE_EPOCH)
    part = train(load_config(tmp_path / "part" / "config.yaml"), resume=True)
    columns = ("loss", "accuracy", "val_loss", "val_accuracy")
    history = read_csv(part / "history.csv")
    assert [[r[c] for c in columns] for r in history] == \
        [[r[c] for c in columns] for r in read_csv(whole / "history.csv")]
    a, b = load_ckpt(whole / "model.pt")["model"], load_ckpt(part / "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The training time counts the epochs trained before the interruption too.
    assert metrics_of(part)["train_seconds"] >= sum(float(r["seconds"]) for r in history) - 0.01


def test_resume_refuses_data_that_changed_since_the_run_began(split_data, tmp_path,
                                                             monkeypatch, make_image_folder):
    out = tmp_path / "run"
    config = scratch_config(split_data, out, epochs=2)
    interrupt_on_call(monkeypatch, 2)
    with pytest.raises(Interrupted):
        train(config)
    monkeypatch.undo()
    before = (out / "last.pt").read_bytes()
    image = next((split_data / "train" / "a").iterdir())
    moved = shutil.move(image, tmp_path / image.name)
    with pytest.raises(RunError, match=r"cannot resume: the data's files, or how they are "
                                       r"split into training and validation, changed since the "
                                       r"run began \(24 training and validation files then, "
                                       r"23 now; gone: "
                                       rf"a/{image.name} \((training|validation)\)[;)]"):
        imgclf.train(out=out, resume=True)
    make_image_folder(split_data / "train", {"d": 2}, size=(32, 32), seed=5)
    with pytest.raises(RunError, match=r"the run began with the classes a, b, c; the data "
                                       r"now has a, b, c, d"):
        imgclf.train(out=out, resume=True)
    shutil.rmtree(split_data / "train" / "d")
    shutil.move(moved, image)
    original = image.read_bytes()
    other = next((split_data / "train" / "b").iterdir()).read_bytes()
    image.write_bytes(other + b"\0" * (len(other) == len(original)))  # b's image as a's
    with pytest.raises(RunError, match=r"cannot resume: some of the data's files were written "
                                       r"over since the run began \(the same names, other "
                                       rf"sizes; of another size: a/{image.name} "
                                       r"\((training|validation)\)\)"):
        imgclf.train(out=out, resume=True)
    image.write_bytes(original)
    assert (out / "last.pt").read_bytes() == before  # nothing lost: restored, it resumes
    assert (imgclf.train(out=out, resume=True) / "metrics.json").exists()
    # The data's file names stay in the run's checkpoints, out of the model to be shared.
    assert "listing" in load_checkpoint(out / "last.pt")["data"]
    assert set(load_checkpoint(out / "model.pt")["data"]) == {"classes", "files", "digest",
                                                              "sizes", "trained_on"}


def test_resuming_a_run_whose_dataset_moved_says_where_to_name_it(split_data, tmp_path,
                                                                   monkeypatch):
    out = tmp_path / "run"
    interrupt_on_call(monkeypatch, 2)
    with pytest.raises(Interrupted):
        train(scratch_config(split_data, out, epochs=2))
    monkeypatch.undo()
    moved = shutil.move(split_data, tmp_path / "moved")
    try:
        with pytest.raises(RunError, match=r"cannot resume: the run's data\.data folder .* \(as "
                                           r".*run/config\.yaml names it\) does not exist\. If "
                                           r"the dataset moved, write its new place as "
                                           r"data\.data in .*config\.yaml, then resume\.$"):
            imgclf.train(out=out, resume=True)
        config = (out / "config.yaml").read_text().replace(str(split_data), str(moved))
        (out / "config.yaml").write_text(config)  # as the message says
        assert (imgclf.train(out=out, resume=True) / "metrics.json").exists()
    finally:
        shutil.move(moved, split_data)


def test_resume_in_the_finetune_phase(split_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = build_config("transfer", None, {
        "data": {"data": str(split_data)}, "out": str(out), "model": BACKBONE,
        "train": {"epochs": 1, "finetune": "1", "finetune_epochs": 2}})
    calls = interrupt_on_call(monkeypatch, 3)  # head 1, finetune 1, then finetune 2
    with pytest.raises(Interrupted):
        train(config)
    assert calls == ["head", "finetune", "finetune"]
    assert [r["phase"] for r in read_csv(out / "history.csv")] == ["head", "finetune"]

    calls = interrupt_on_call(monkeypatch, 0)
    train(load_config(out / "config.yaml"), resume=True)
    assert calls == ["finetune"]  # neither the head phase nor finetune epoch 1 again
    history = read_csv(out / "history.csv")
    assert [r["phase"] for r in history] == ["head", "finetune", "finetune"]
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]


def test_resumed_between_its_phases_a_run_trains_as_an_uninterrupted_one(
        split_data, tmp_path, monkeypatch):
    # Stopped after the head phase ended and before the fine-tuning phase saved its start:
    # the fine-tuning phase draws its dropout masks as it would have without the stop.
    def config(out):
        return build_config("transfer", None, {
            "data": {"data": str(split_data)}, "out": str(out),
            "model": {**BACKBONE, "dropout": 0.5},
            "train": {"epochs": 1, "finetune": "1", "finetune_epochs": 2, "patience": 0,
                      "tta": "off", "amp": "off", "device": "cpu"}})

    whole = train(config(tmp_path / "whole"))
    stop_when(monkeypatch, "save_atomic",  # as fine-tuning starts
              lambda checkpoint, path: path.name == "last.pt" and checkpoint["phase"] == "finetune")
    with pytest.raises(Interrupted):
        train(config(tmp_path / "part"))
    monkeypatch.undo()
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=False)["phase_done"]
    part = train(load_config(tmp_path / "part" / "config.yaml"), resume=True)
    columns = ("phase", "loss", "accuracy", "val_loss", "val_accuracy")
    assert [[r[c] for c in columns] for r in read_csv(part / "history.csv")] == \
        [[r[c] for c in columns] for r in read_csv(whole / "history.csv")]


def test_resuming_a_run_whose_config_no_longer_plans_its_phase_is_refused(
        split_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = build_config("transfer", None, {
        "data": {"data": str(split_data)}, "out": str(out), "model": BACKBONE,
        "train": {"epochs": 1, "finetune": "1", "finetune_epochs": 2}})
    train_interrupted(monkeypatch, config, 2)  # in the finetune phase
    saved = (out / "config.yaml").read_text()
    edited = re.sub(r"(?m)^(\s*finetune:).*$", r"\1 null", saved)
    assert edited != saved
    (out / "config.yaml").write_text(edited)
    with pytest.raises(RunError, match=r"config\.yaml no longer matches the run's last\.pt "
                                       r"\(train\.finetune none against 1\)"):
        imgclf.train(out=out, resume=True)
    # A checkpoint without the record of every setting (an older imgclf's): its phase.
    last = torch.load(out / "last.pt", weights_only=False)
    del last["settings"]
    torch.save(last, out / "last.pt")
    with pytest.raises(RunError, match=r"config\.yaml no longer matches the run's last\.pt "
                                       r"\(it stopped in a finetune phase, which train\.freeze "
                                       r"and train\.finetune as they are now leave out\)"):
        imgclf.train(out=out, resume=True)


def test_a_run_whose_last_checkpoint_is_damaged_or_gone_resumes_from_its_best(
        split_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_interrupted(monkeypatch, scratch_config(split_data, out, epochs=3, patience=0), 3)
    whole = (out / "last.pt").read_bytes()
    hint = (rf" The checkpoint of its best epoch is there: copy {re.escape(str(out / 'best.pt'))}"
            rf" to {re.escape(str(out / 'last.pt'))} to resume from that epoch, or delete "
            rf"{re.escape(str(out))} to train the run again\.$")
    (out / "last.pt").write_bytes(whole[:1000])
    with pytest.raises(RunError, match=rf"^cannot resume: {re.escape(str(out / 'last.pt'))} is "
                                       r"damaged, or not an imgclf checkpoint\." + hint):
        imgclf.train(out=out, resume=True)
    (out / "last.pt").unlink()
    with pytest.raises(RunError, match=rf"^cannot resume: {re.escape(str(out))} has no last\.pt,"
                                       r" so there is nothing to go on from\." + hint):
        imgclf.train(out=out, resume=True)
    later = torch.load(out / "best.pt", weights_only=False)
    later["format"] = 99  # a later imgclf's, whole: not to be written over
    torch.save(later, out / "last.pt")
    with pytest.raises(RunError, match=r"written by a later imgclf") as raised:
        imgclf.train(out=out, resume=True)
    assert "copy" not in str(raised.value)
    shutil.copy(out / "best.pt", out / "last.pt")  # as the message says
    run = imgclf.train(out=out, resume=True)
    assert [int(r["epoch"]) for r in read_csv(run / "history.csv")] == [1, 2, 3]
    # The model to share keeps neither the file listing nor the settings' local paths.
    shared = torch.load(run / "model.pt", weights_only=False)
    assert "settings" not in shared and "listing" not in shared["data"]
    assert str(out) in str(torch.load(run / "last.pt", weights_only=False)["settings"])
    (run / "last.pt").unlink()  # finished: nothing to resume, whatever checkpoints are left
    with pytest.raises(RunError, match=r"holds a finished run \(metrics\.json\): there is "
                                       r"nothing to resume"):
        imgclf.train(out=out, resume=True)


def test_resuming_a_run_whose_config_was_edited_in_how_it_trains_is_refused(
        split_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_interrupted(monkeypatch, scratch_config(split_data, out, epochs=3), 2)
    saved = (out / "config.yaml").read_text()
    for edited, named in (("lr: 0.001", r"train\.lr 5\.0 against 0\.001"),
                          ("batch_size: 32", r"train\.batch_size 4 against 32"),
                          ("weight_decay: 0.0", r"train\.weight_decay 0\.01 against 0\.0")):
        changed = {"lr: 0.001": "lr: 5.0", "batch_size: 32": "batch_size: 4",
                   "weight_decay: 0.0": "weight_decay: 0.01"}[edited]
        assert edited in saved, edited
        (out / "config.yaml").write_text(saved.replace(edited, changed))
        with pytest.raises(RunError, match=rf"config\.yaml no longer matches the run's "
                                           rf"last\.pt \({named}\): put back"):
            imgclf.train(out=out, resume=True)
    (out / "config.yaml").write_text(saved.replace("epochs: 3", "epochs: 0"))
    with pytest.raises(ConfigError, match=r"cannot resume: in .*config\.yaml, train\.epochs "
                                          r"must be >= 1, got 0"):
        imgclf.train(out=out, resume=True)
    # How long it trains, and on what, may change.
    (out / "config.yaml").write_text(saved.replace("epochs: 3", "epochs: 4")
                                     .replace("amp: auto", "amp: 'off'"))
    run = imgclf.train(out=out, resume=True)
    assert len(read_csv(run / "history.csv")) == 4


def test_the_restored_epoch_is_named_as_the_log_numbered_it(split_data, tmp_path, caplog):
    config = build_config("transfer", None, {
        "data": {"data": str(split_data)}, "out": str(tmp_path / "run"), "model": BACKBONE,
        "train": {"warmup_epochs": 1, "finetune": "1", "finetune_epochs": 2, "patience": 0}})
    with caplog.at_level(logging.INFO, logger="imgclf"):
        train(config)
    starred = [re.match(r"epoch (\d+)/2 .*\*$", r.message) for r in caplog.records
               if r.message.startswith("epoch ")][1:]  # the fine-tuning epochs
    best = max(int(m[1]) for m in starred if m)
    assert f"restored best weights (finetune epoch {best}, epoch {best + 1} of the run" \
        in caplog.text


def test_interrupted_while_writing_its_results_the_run_resumes_to_them(split_data, tmp_path,
                                                                         monkeypatch):
    def run(out):
        return imgclf.train(split_data, method="transfer", out=out, model=BACKBONE,
                            train={"epochs": 2, "tta": "off"})

    whole = run(tmp_path / "whole")

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("imgclf.evaluation.plot_confusion_matrix", ctrl_c)
        with pytest.raises(Interrupted, match=r"^interrupted; the run's last checkpoint is "
                                              r"saved in .*last\.pt\. Continue with `imgclf "
                                              r"train --resume --out .*part` \(in Python: "
                                              r"imgclf\.train\(out=RUN_DIR, resume=True\)\)\.$"):
            run(tmp_path / "part")
    part = tmp_path / "part"
    assert not (part / "metrics.json").exists()  # not finished: it resumes, and compare too
    imgclf.train(out=part, resume=True)
    expected = {"metrics.json", "predictions.csv", "learning_curves.png", "confusion_matrix.png"}
    assert expected <= {p.name for p in part.iterdir()}
    # The head alone trained: so say the results, though no phase was set up again.
    assert metrics_of(part)["parameters"] == metrics_of(whole)["parameters"]
    assert without_timings(metrics_of(part)) == without_timings(metrics_of(whole))


def test_interrupted_before_its_first_checkpoint_the_run_says_to_start_again(
        split_data, tmp_path, monkeypatch):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("imgclf.engine.trainer.decode_split", ctrl_c)
    with pytest.raises(Interrupted, match="training interrupted before its first checkpoint, "
                                          "so there is nothing to resume: run the same command"):
        scratch(split_data, tmp_path / "run")


def test_resume_without_a_checkpoint_raises(split_data, tmp_path):
    config = build_config("scratch", None, {"data": {"data": str(split_data)},
                                            "out": str(tmp_path / "nothing")})
    with pytest.raises(RunError, match=r"cannot resume: .*last\.pt does not exist"):
        train(config, resume=True)
    (tmp_path / "nothing").mkdir()  # a run stopped before its first checkpoint
    config.save(tmp_path / "nothing" / "config.yaml")
    with pytest.raises(RunError, match=r"stopped before it saved a checkpoint \(last\.pt\), "
                                       r"so there is nothing to go on from: run the same "
                                       r"command again, without --resume"):
        train(config, resume=True)


def test_an_interrupted_run_stops_a_script_that_catches_its_errors(split_data, tmp_path,
                                                                    monkeypatch):
    interrupt_on_call(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt, match="training interrupted"):  # Ctrl-C, as ever
        try:
            train(scratch_config(split_data, tmp_path / "run", epochs=2))
        except Exception:
            pytest.fail("Ctrl-C was caught as an error, and the script would go on")


def test_stopped_between_its_history_and_checkpoint_a_run_resumes_whole(
        split_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = scratch_config(split_data, out, epochs=2, patience=0)
    # Ctrl-C while epoch 2's history is written
    stop_when(monkeypatch, "write_history", lambda history, path: len(history) == 2)
    with pytest.raises(Interrupted):
        train(config)
    monkeypatch.undo()
    run = imgclf.train(out=out, resume=True)  # goes on from a checkpoint its history holds
    assert [int(r["epoch"]) for r in read_csv(run / "history.csv")] == [1, 2]


def test_stopped_before_its_checkpoint_a_run_s_history_lists_the_epochs_it_saved(
        split_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = scratch_config(split_data, out, epochs=3, patience=0)
    # Ctrl-C after epoch 2's history row, before its last.pt
    stop_when(monkeypatch, "save_atomic",
              lambda checkpoint, path: path.name == "last.pt" and checkpoint["epoch"] == 2)
    with pytest.raises(Interrupted, match="its last whole epoch is saved"):
        train(config)
    monkeypatch.undo()
    assert [int(r["epoch"]) for r in read_csv(out / "history.csv")] == [1]
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 1
    run = imgclf.train(out=out, resume=True)
    assert [int(r["epoch"]) for r in read_csv(run / "history.csv")] == [1, 2, 3]


def test_stopped_after_its_checkpoint_a_run_that_stops_early_resumes_to_its_end(
        split_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    # No epoch after the first improves by min_delta: early stopping ends epoch 2.
    config = scratch_config(split_data, out, epochs=5, patience=1, min_delta=100.0)
    # Ctrl-C after epoch 2's last.pt, before the early stop
    stop_when(monkeypatch, "_log_epoch", lambda row, epoch, *args: epoch == 2)
    with pytest.raises(Interrupted):
        train(config)
    monkeypatch.undo()
    run = imgclf.train(out=out, resume=True)
    assert [int(r["epoch"]) for r in read_csv(run / "history.csv")] == [1, 2]
    uninterrupted = train(dataclasses.replace(config, out=str(tmp_path / "whole")))
    assert [int(r["epoch"]) for r in read_csv(uninterrupted / "history.csv")] == [1, 2]


def test_interrupted_while_saving_its_first_epoch_a_run_says_what_it_saved(
        split_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = scratch_config(split_data, out, epochs=2, patience=0)
    calls, real_save = [], loop.save_atomic

    def stop_saving_epoch_one(payload, path):
        calls.append(path.name)
        if len(calls) == 2:  # last.pt at the start, then epoch 1's best.pt
            raise KeyboardInterrupt
        real_save(payload, path)

    monkeypatch.setattr(loop, "save_atomic", stop_saving_epoch_one)
    with pytest.raises(Interrupted, match="no epoch had finished; its starting point is saved"):
        train(config)
    assert load_ckpt(out / "last.pt")["epoch"] == 0


def test_an_interrupted_checkpoint_leaves_no_temporary_file(tmp_path, monkeypatch):
    from imgclf.engine.checkpoints import save_atomic

    def interrupted(payload, path):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 1}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_resuming_a_finished_run_raises(split_data, tmp_path):
    run = scratch(split_data, tmp_path / "run", epochs=1)
    before = (run / "metrics.json").read_bytes()
    with pytest.raises(RunError, match="holds a finished run .* nothing to resume"):
        train(load_config(run / "config.yaml"), resume=True)
    assert (run / "metrics.json").read_bytes() == before


def test_method_from_python_beats_the_config_file(split_data, tmp_path, monkeypatch):
    (tmp_path / "settings.yaml").write_text("method: transfer\ntrain: {epochs: 1}\n")
    seen = []
    monkeypatch.setattr("imgclf.engine.trainer._train",
                        lambda config, resume, held: seen.append(config.method) or tmp_path)
    imgclf.train(split_data, method="scratch", config=tmp_path / "settings.yaml")
    imgclf.train(split_data, config=tmp_path / "settings.yaml")
    imgclf.train(split_data)
    assert seen == ["scratch", "transfer", "scratch"]


def test_data_section_as_a_mapping_from_python(split_data, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        run = imgclf.train({"train": split_data / "train", "val": split_data / "test",
                            "val_fraction": 0.5},
                           out=tmp_path / "run", model={"img_size": 32}, train={"epochs": 1})
    assert (f"data.val_fraction 0.5 is not used: the data has its own validation split "
            f"({split_data / 'test'})") in caplog.text
    config = load_config(run / "config.yaml")
    assert (config.data.data, config.data.train, config.data.val) == (
        None, str(split_data / "train"), str(split_data / "test"))


def test_training_into_a_finished_run_without_resume_raises(split_data, tmp_path):
    run = scratch(split_data, tmp_path / "run", epochs=1)
    before = (run / "model.pt").stat().st_mtime_ns
    with pytest.raises(RunError, match=r"already holds a finished run: choose another --out"):
        scratch(split_data, tmp_path / "run", epochs=1)
    assert (run / "model.pt").stat().st_mtime_ns == before
    with pytest.raises(RunError, match=r"nothing to resume\. To train for more epochs, train "
                                       r"a new run into another --out"):
        imgclf.train(out=run, resume=True)
    for name in ("metrics.json", "model.pt"):  # as a run stopped part-way leaves it
        (run / name).unlink()
    with pytest.raises(RunError, match=r"already holds an unfinished run, or one still training; "
                                       r"use --resume"):
        scratch(split_data, tmp_path / "run", epochs=1)


def test_a_run_or_comparison_inside_another_runs_folder_is_refused(split_data, tmp_path):
    from imgclf.compare import compare

    run = scratch(split_data, tmp_path / "run", epochs=1)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RunError, match=r"run/nested would be inside .*run, the folder of "
                                       r"another run; choose --out outside any run folder"):
        scratch(split_data, run / "nested", epochs=1)
    with pytest.raises(RunError, match=r"run/cmp would be inside .*run, the folder of another run"):
        compare(str(split_data), "scratch", None, run / "cmp")
    assert sorted(p.name for p in run.iterdir()) == before


def test_resuming_a_run_whose_config_was_edited_in_the_models_shape_is_refused(split_data,
                                                                                  tmp_path):
    run = scratch(split_data, tmp_path / "run", epochs=1)
    for name in ("metrics.json", "model.pt"):  # as a run stopped part-way leaves it
        (run / name).unlink()
    config = (run / "config.yaml").read_text()
    for edited, named in (("img_size: 32", r"model\.img_size 48 against 32"),
                          ("optimizer: adam", r"train\.optimizer sgd against adam")):
        changed = {"img_size: 32": "img_size: 48", "optimizer: adam": "optimizer: sgd"}[edited]
        assert edited in config
        (run / "config.yaml").write_text(config.replace(edited, changed))
        with pytest.raises(RunError, match=rf"config\.yaml no longer matches the run's "
                                           rf"last\.pt \({named}\): put back"):
            imgclf.train(out=run, resume=True)


# --- transfer -----------------------------------------------------------------------------------


def test_transfer_trains_the_head_on_cached_features(split_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgclf")
    first = imgclf.train(split_data, method="transfer", out=tmp_path / "first",
                         model=BACKBONE, train={"epochs": 1})
    computed = [r.message for r in caplog.records if "frozen-backbone features" in r.message]
    assert len(computed) == 2 and not any("cache hit" in m for m in computed)  # train, val
    feature_files = sorted(cache_dir("features").glob("*.npy"))
    assert len(feature_files) == 2
    history = read_csv(first / "history.csv")
    assert [r["phase"] for r in history] == ["head"]
    assert float(history[0]["lr"]) == pytest.approx(3e-4)  # the transfer preset
    metrics = metrics_of(first)
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"]
    assert load_ckpt(first / "model.pt")["weights_source"] == "random init"

    caplog.clear()
    second = imgclf.train(split_data, method="transfer", out=tmp_path / "second",
                          model=BACKBONE, train={"epochs": 1})
    hits = [r.message for r in caplog.records if "frozen-backbone features" in r.message]
    assert len(hits) == 2 and all("cache hit" in m for m in hits)
    assert sorted(cache_dir("features").glob("*.npy")) == feature_files
    # Cached features give the same head, hence the same results.
    assert without_timings(metrics_of(second)) == without_timings(metrics_of(first))

    # Damaged feature files are computed again, with a warning each.
    feature_files[0].write_bytes(feature_files[0].read_bytes()[:100])
    np.save(feature_files[1], np.zeros((len(np.load(feature_files[1])), 3), np.float32))
    caplog.clear()
    third = imgclf.train(split_data, method="transfer", out=tmp_path / "third",
                         model=BACKBONE, train={"epochs": 1})
    damaged = [r.message for r in caplog.records if "is damaged" in r.message]
    assert len(damaged) == 2 and all("computed again" in m for m in damaged)
    assert without_timings(metrics_of(third)) == without_timings(metrics_of(first))


def test_a_weights_file_given_relative_is_saved_absolute(split_data, tmp_path, monkeypatch):
    import safetensors.torch
    import timm

    monkeypatch.chdir(tmp_path)
    safetensors.torch.save_file(timm.create_model(BACKBONE["name"]).state_dict(),
                                "mine.safetensors")
    out = imgclf.train(split_data.relative_to(tmp_path), method="transfer", out="run",
                       model={**BACKBONE, "pretrained": True, "weights": "mine.safetensors"},
                       train={"epochs": 1})
    config = load_config(out / "config.yaml")  # serves from any working folder
    assert config.model.weights == str(tmp_path / "mine.safetensors")
    assert config.data.data == str(split_data)
    assert re.fullmatch(rf"weights file {re.escape(str(tmp_path))}/mine\.safetensors "
                        r"\(sha256 [0-9a-f]{16}\)", load_ckpt(out / "model.pt")["weights_source"])


def test_a_resumed_run_takes_its_weights_from_its_checkpoint_alone(split_data, tmp_path,
                                                                   monkeypatch):
    import safetensors.torch
    import timm

    weights = tmp_path / "mine.safetensors"
    safetensors.torch.save_file(timm.create_model(BACKBONE["name"]).state_dict(), weights)
    options = {"model": {**BACKBONE, "pretrained": True, "weights": str(weights)},
               "train": {"epochs": 2, "patience": 0, "feature_engine": "torch"}}
    whole = imgclf.train(split_data, method="transfer", out=tmp_path / "whole", **options)
    interrupt_on_call(monkeypatch, 2)
    with pytest.raises(Interrupted):
        imgclf.train(split_data, method="transfer", out=tmp_path / "part", **options)
    monkeypatch.undo()
    weights.unlink()  # the backbone's weights are in last.pt
    part = imgclf.train(out=tmp_path / "part", resume=True)
    a, b = load_ckpt(whole / "model.pt"), load_ckpt(part / "model.pt")
    assert a["weights_source"] == b["weights_source"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_checkpoints_name_the_layer_change_their_weights_need():
    from imgclf.models.weights import OFFLINE_SOURCES

    config = build_config("transfer", None, {"model": {"name": "inception_v3"}})
    prep = Preprocessing(75, (0.5,) * 3, (0.5,) * 3, "bilinear")
    tf = OFFLINE_SOURCES["inception_v3"].description
    for source, adapt in ((tf, "tf_inception_pooling"), ("random init", None),
                          ("weights file /w.pth (sha256 0123456789abcdef)", None)):
        meta = trainer.checkpoint_meta(config, ["a", "b"], prep, source)
        assert meta["model_config"]["adapt"] == adapt


def test_a_weights_file_written_over_gets_features_of_its_own(split_data, tmp_path, caplog):
    import safetensors.torch
    import timm

    caplog.set_level(logging.INFO, logger="imgclf")
    weights = tmp_path / "mine.safetensors"
    model = {**BACKBONE, "pretrained": True, "weights": str(weights)}
    runs = []
    for seed in (0, 1):  # the same file name, other weights in it
        torch.manual_seed(seed)
        safetensors.torch.save_file(timm.create_model(BACKBONE["name"]).state_dict(), weights)
        runs.append(imgclf.train(split_data, method="transfer", out=tmp_path / f"run{seed}",
                                 model=model, seed=0, train={"epochs": 1}))
    assert not any("cache hit" in m for m in _feature_messages(caplog))
    first, second = ((run / "history.csv").read_text().splitlines()[1] for run in runs)
    assert first.split(",")[:5] != second.split(",")[:5]  # losses and accuracies


def test_feature_cache_is_not_shared_by_different_random_backbones(tmp_path, make_image_folder,
                                                                   caplog):
    # Given splits, so the images (and their cache key) do not depend on the seed.
    root = tmp_path / "data"
    make_image_folder(root / "train", {"a": 6, "b": 6}, size=(32, 32), seed=0)
    make_image_folder(root / "val", {"a": 3, "b": 3}, size=(32, 32), seed=1)
    caplog.set_level(logging.INFO, logger="imgclf")
    for seed in (1, 2):
        imgclf.train(root, method="transfer", out=tmp_path / f"seed{seed}", seed=seed,
                     model=BACKBONE, train={"epochs": 1})
    messages = [r.message for r in caplog.records if "frozen-backbone features" in r.message]
    assert not any("cache hit" in m for m in messages), messages


def test_transfer_with_finetune_runs_head_then_finetune(split_data, tmp_path):
    run = imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                       train={"epochs": 1, "finetune": "1", "finetune_epochs": 1})
    history = read_csv(run / "history.csv")
    assert [r["phase"] for r in history] == ["head", "finetune"]
    assert [int(r["epoch"]) for r in history] == [1, 2]
    # One-cycle peaks: the backbone at the fine-tuning rate (1e-4 by default), the head at
    # half the rate it warmed up with (the transfer preset's 3e-4).
    groups = torch.load(run / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["max_lr"] for g in groups] == pytest.approx([1e-4, 1.5e-4])
    assert metrics_of(run)["split"] == "test"


@pytest.mark.parametrize("update", [False, True])
def test_finetuning_keeps_pretrained_norm_statistics_unless_asked(split_data, tmp_path, update):
    run = imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                       train={"epochs": 1, "finetune": "1", "finetune_epochs": 1,
                              "finetune_norm_stats": update})
    weights = torch.load(run / "model.pt", weights_only=True)["model"]
    # bn2 sits in the unfrozen last stage; a new BatchNorm starts at mean 0, variance 1
    mean, var = weights["body.bn2.running_mean"], weights["body.bn2.running_var"]
    untouched = torch.equal(mean, torch.zeros_like(mean)) and torch.equal(var, torch.ones_like(var))
    assert untouched is not update


@pytest.mark.parametrize("warmup", [None, 2])
def test_before_finetuning_the_head_only_warms_up(split_data, tmp_path, warmup):
    train = {"epochs": 4, "patience": 0, "finetune": "1", "finetune_epochs": 1}
    if warmup:
        train["warmup_epochs"] = warmup
    run = imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                       train=train)
    phases = [r["phase"] for r in read_csv(run / "history.csv")]
    assert phases == ["head"] * (warmup or 1) + ["finetune"]
    # without fine-tuning, the head trains for train.epochs
    alone = imgclf.train(split_data, method="transfer", out=tmp_path / "alone", model=BACKBONE,
                         train={"epochs": 2, "patience": 0})
    assert [r["phase"] for r in read_csv(alone / "history.csv")] == ["head", "head"]


def test_transfer_without_feature_cache_runs_the_backbone(split_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgclf")
    run = imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                       train={"epochs": 1, "feature_cache": False})
    assert not any("frozen-backbone features" in r.message for r in caplog.records)
    assert [r["phase"] for r in read_csv(run / "history.csv")] == ["head"]
    assert not list(cache_dir("features").glob("*.npy"))


def _feature_messages(caplog) -> list[str]:
    return [r.message for r in caplog.records if "frozen-backbone features" in r.message]


def test_onnx_runtime_and_pytorch_compute_the_same_features(split_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgclf")
    features = {}
    for engine in ("torch", "onnx"):
        before = set(cache_dir("features").glob("*.npy"))
        # Both in float32: on a CPU with native bf16, PyTorch would otherwise autocast.
        imgclf.train(split_data, method="transfer", out=tmp_path / engine, model=BACKBONE,
                     train={"epochs": 1, "feature_engine": engine, "amp": "off"})
        added = set(cache_dir("features").glob("*.npy")) - before
        assert len(added) == 2  # train and val: each engine keeps its own features
        # keyed by image count: the two splits differ in size
        features[engine] = {len(a): a for a in map(np.load, added)}
    assert features["torch"].keys() == features["onnx"].keys()
    for count, expected in features["torch"].items():
        np.testing.assert_allclose(features["onnx"][count], expected, rtol=1e-3, atol=1e-4)
    messages = _feature_messages(caplog)
    assert [m.split(", ")[-1] for m in messages] == ["PyTorch)"] * 2 + ["ONNX Runtime)"] * 2


def test_a_seeded_head_trains_alike_whether_its_features_were_cached_or_computed(
        split_data, tmp_path, caplog, monkeypatch):
    exporting = onnx.OnnxModule.__init__

    def drawing(self, *args, **kwargs):
        torch.rand(1)  # as the export of some backbones (tf_efficientnet_lite0) draws
        exporting(self, *args, **kwargs)

    monkeypatch.setattr(onnx.OnnxModule, "__init__", drawing)
    caplog.set_level(logging.INFO, logger="imgclf")
    runs = [imgclf.train(split_data, method="transfer", out=tmp_path / name, model=BACKBONE,
                         seed=3, train={"epochs": 2}) for name in ("computed", "cached")]
    messages = _feature_messages(caplog)
    assert [m.split(", ")[-1] for m in messages[:2]] == ["ONNX Runtime)"] * 2
    assert [m.split(" (")[0] for m in messages[2:]] == ["frozen-backbone features: cache hit"] * 2
    computed, cached = ((run / "history.csv").read_text().splitlines() for run in runs)
    # The same losses and accuracies, epoch by epoch (the seconds differ).
    assert [row.split(",")[:5] for row in computed] == [row.split(",")[:5] for row in cached]


def test_features_default_to_onnx_runtime_on_a_cpu_where_it_is_installed(
        split_data, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="imgclf")
    imgclf.train(split_data, method="transfer", out=tmp_path / "auto", model=BACKBONE,
                 train={"epochs": 1})
    messages = _feature_messages(caplog)  # train and val
    assert len(messages) == 2 and all(m.endswith("ONNX Runtime)") for m in messages)
    caplog.clear()
    monkeypatch.setattr(trainer, "onnxruntime_available", lambda: False)
    imgclf.train(split_data, method="transfer", out=tmp_path / "no-ort", model=BACKBONE,
                 train={"epochs": 1})
    messages = _feature_messages(caplog)
    assert len(messages) == 2 and all(m.endswith("PyTorch)") for m in messages)


def test_a_backbone_onnx_runtime_cannot_run_falls_back_to_pytorch_unless_asked_for(
        split_data, tmp_path, caplog, monkeypatch):
    def fail(*args, **kwargs):
        raise torch.onnx.errors.UnsupportedOperatorError("aten::odd", 17, "not supported")

    monkeypatch.setattr(onnx, "write_onnx", fail)
    caplog.set_level(logging.INFO, logger="imgclf")
    run = imgclf.train(split_data, method="transfer", out=tmp_path / "auto", model=BACKBONE,
                       train={"epochs": 1})
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING
                and "ONNX Runtime cannot compute" in r.message]
    assert len(warnings) == 1 and "UnsupportedOperatorError" in warnings[0]
    messages = _feature_messages(caplog)  # train and val
    assert len(messages) == 2 and all(m.endswith("PyTorch)") for m in messages)
    assert (run / "model.pt").exists()
    # PyTorch's features are kept, so the next run does not try the export again ...
    caplog.clear()
    imgclf.train(split_data, method="transfer", out=tmp_path / "again", model=BACKBONE,
                 train={"epochs": 1})
    assert [m.split(" (")[0] for m in _feature_messages(caplog)] == \
        ["frozen-backbone features: cache hit"] * 2
    assert not any("ONNX Runtime cannot" in r.message for r in caplog.records)
    # ... unless ONNX Runtime is what the run asks for
    with pytest.raises(RunError, match=r"ONNX Runtime cannot compute this backbone's features "
                                       r"\(UnsupportedOperatorError.*--feature-engine torch"):
        imgclf.train(split_data, method="transfer", out=tmp_path / "onnx", model=BACKBONE,
                     train={"epochs": 1, "feature_engine": "onnx"})


def test_features_from_onnx_runtime_that_differ_from_pytorchs_are_not_used(
        split_data, tmp_path, caplog, monkeypatch):
    # An export whose outputs drift from PyTorch's is caught before any image is run.
    monkeypatch.setattr(onnx.OnnxModule, "forward",
                        lambda self, x: torch.ones(len(x), 1280))
    caplog.set_level(logging.INFO, logger="imgclf")
    imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                 train={"epochs": 1})
    assert any("RunError: ONNX Runtime's outputs differ from PyTorch's" in r.message
               for r in caplog.records if r.levelno == logging.WARNING)
    messages = _feature_messages(caplog)  # train and val
    assert len(messages) == 2 and all(m.endswith("PyTorch)") for m in messages)


def _evaluated_models(monkeypatch) -> list[torch.nn.Module]:
    """The modules that training's final evaluation runs, as it runs them."""
    seen = []
    real = trainer.write_evaluation
    monkeypatch.setattr(trainer, "write_evaluation",
                        lambda model, *args, **kw: seen.append(model) or real(model, *args, **kw))
    return seen


def test_a_head_on_onnx_runtime_features_is_evaluated_over_onnx_runtime(
        split_data, tmp_path, monkeypatch):
    seen = _evaluated_models(monkeypatch)
    run = imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                       train={"epochs": 1, "tta": "on"})
    assert isinstance(seen[0], trainer.HeadOverFeatures)
    assert isinstance(seen[0].features, onnx.OnnxModule)
    assert metrics_of(run)["evaluated_by"] == "ONNX Runtime (frozen backbone), PyTorch (head)"
    # The saved PyTorch model gives the same probabilities, mirror images included.
    imgclf.evaluate(run, split_data, out=tmp_path / "torch")
    ours, torchs = (read_csv(folder / "predictions.csv") for folder in (run, tmp_path / "torch"))
    assert [r["path"] for r in ours] == [r["path"] for r in torchs]
    probs = [[float(v) for k, v in r.items() if k in ("a", "b", "c")] for r in ours]
    expected = [[float(v) for k, v in r.items() if k in ("a", "b", "c")] for r in torchs]
    np.testing.assert_allclose(probs, expected, atol=1e-4)


@pytest.mark.parametrize("train", [{"feature_engine": "torch"},
                                   {"finetune": "1", "finetune_epochs": 1}])
def test_pytorch_evaluates_other_transfer_runs(split_data, tmp_path, monkeypatch, train):
    seen = _evaluated_models(monkeypatch)
    run = imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                       train={"epochs": 1, **train})
    assert isinstance(seen[0], Classifier)
    assert metrics_of(run)["evaluated_by"] == "PyTorch"


def test_an_unknown_feature_engine_is_a_config_error(split_data, tmp_path):
    with pytest.raises(ConfigError, match=r"train.feature_engine must be auto, torch or onnx, "
                                          r"got 'tensorrt'"):
        imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                     train={"epochs": 1, "feature_engine": "tensorrt"})


def test_transfer_with_a_small_cnn_is_a_config_error(split_data, tmp_path):
    with pytest.raises(ConfigError, match=r"method transfer needs a timm backbone.*'small_cnn'"):
        imgclf.train(split_data, method="transfer", out=tmp_path / "run",
                     model={"name": "small_cnn", "img_size": 32}, train={"epochs": 1})
    assert not (tmp_path / "run").exists()


def test_scratch_with_an_imagenet_backbone_is_a_config_error(split_data, tmp_path):
    with pytest.raises(ConfigError, match=r"method scratch trains from random weights, but "
                                          r"mobilenetv2_100 would start from ImageNet weights"):
        imgclf.train(split_data, method="scratch", out=tmp_path / "run",
                     model={**BACKBONE, "pretrained": True}, train={"epochs": 1})
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model", [{"dropout": 0.9}, {"head": "linear"}, {"weights": "w.pth"}])
def test_head_and_weights_options_are_refused_for_imgclfs_own_networks(split_data, tmp_path,
                                                                       model):
    (key, value), = model.items()
    with pytest.raises(ConfigError, match=rf"model\.{key} \(--{key}\) applies to timm "
                                          r"backbones.*'small_cnn' is one of imgclf's own"):
        imgclf.train(split_data, method="scratch", out=tmp_path / "run",
                     model={"img_size": 32, key: value}, train={"epochs": 1})
    assert not (tmp_path / "run").exists()


def test_too_many_finetune_stages_stop_before_training(split_data, tmp_path):
    with pytest.raises(ConfigError, match=r"--finetune 99: mobilenetv2_100 has \d+ stages"):
        imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                     train={"epochs": 1, "finetune": 99})
    assert not (tmp_path / "run").exists()


# --- augmentation -------------------------------------------------------------------------------


def test_augment_method_with_the_reference_preset(split_data, tmp_path):
    run = imgclf.train(split_data, method="augment", out=tmp_path / "run",
                       model={"img_size": 32}, train={"epochs": 1})
    config = load_config(run / "config.yaml")
    assert config.augment.preset == "reference"
    assert config.model.name == "small_cnn_wide"
    assert len(read_csv(run / "history.csv")) == 1
    assert metrics_of(run)["n_samples"] == 9


@pytest.mark.parametrize("augment", [{"mixup": 0.4}, {"cutmix": 1.0}])
def test_mixup_and_cutmix_train(split_data, tmp_path, augment):
    run = scratch(split_data, tmp_path / "run", epochs=1, augment=augment)
    history = read_csv(run / "history.csv")
    assert len(history) == 1 and float(history[0]["loss"]) > 0


# --- awkward data -------------------------------------------------------------------------------


def test_bad_images_are_listed_in_skipped_csv_and_training_completes(
        tmp_path, make_image_folder, bad_image_folder, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 8, "b": 8}, size=(32, 32), seed=0)
    broken = bad_image_folder / "broken"
    shutil.copy(broken / "truncated.jpg", data / "a" / "truncated.jpg")
    shutil.copy(broken / "truncated.jpg", data / "b" / "cut, short.jpg")  # a comma in its name
    shutil.copy(broken / "corrupt.jpg", data / "b" / 'say "cheese".jpg')  # and quotes
    shutil.copy(broken / "empty.jpg", data / "a" / "empty.jpg")
    shutil.copy(broken / "notes.txt", data / "b" / "notes.txt")
    expected = {
        data / "a" / "truncated.jpg": r"truncated",
        data / "b" / "cut, short.jpg": r"truncated",
        data / "b" / 'say "cheese".jpg': r"not a recognised image format",
        data / "a" / "empty.jpg": r"empty file \(0 bytes\)",
        data / "b" / "notes.txt": r"not an image",
    }
    with caplog.at_level(logging.INFO, logger="imgclf"):
        run = scratch(data, tmp_path / "run", epochs=1)
    assert f"5 skipped file(s) listed with their reasons in {run / 'skipped.csv'}" in caplog.text
    rows = read_csv(run / "skipped.csv")
    assert list(rows[0]) == ["split", "path", "reason"]
    assert {Path(r["path"]) for r in rows} == set(expected)
    for row in rows:
        assert re.search(expected[Path(row["path"])], row["reason"]), row
        assert row["split"] in ("train", "val")
    metrics = metrics_of(run)
    assert metrics["skipped_files"] == len(expected)
    assert metrics["copies_of_training_images"] == {"val": 0}
    # The truncated files fail only when decoded: the report counts them all the same.
    assert metrics["data_summary"].startswith("found data/ (16 images, 2 classes, 5 skipped)")
    assert len(read_csv(run / "history.csv")) == 1
    # Every evaluated image is a good one.
    assert not {Path(p["path"]) for p in read_csv(run / "predictions.csv")} & set(expected)


def test_test_images_copied_from_training_are_warned_and_counted(split_data, tmp_path, caplog):
    shutil.copy(sorted((split_data / "train" / "a").iterdir())[0], split_data / "test" / "c")
    with caplog.at_level(logging.WARNING):
        run = scratch(split_data, tmp_path / "run", epochs=1)
    assert "test: 1 of 10 images are exact copies of training images" in caplog.text
    assert "val: " not in caplog.text
    assert metrics_of(run)["copies_of_training_images"] == {"val": 0, "test": 1}


def test_a_cache_folder_that_cannot_be_written_warns_and_training_goes_on(
        split_data, tmp_path, monkeypatch, caplog):
    (tmp_path / "a file").write_text("not a folder\n")
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "a file" / "cache"))
    with caplog.at_level(logging.INFO, logger="imgclf"):
        run = imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                           train={"epochs": 1, "tta": "off"})  # decoded images and features
    assert "cannot be written to: imgclf goes on without keeping its results" in caplog.text
    assert "decoding 19 images at" in caplog.text and "cached for later runs" not in caplog.text
    assert caplog.text.count("cannot be written to") == 2  # once per folder: images, features
    assert metrics_of(run)["n_samples"] == 9


def _undecodable(folder: Path, broken: Path, n: int) -> None:
    """``n`` copies of a JPEG whose header reads but whose data ends early, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copy(broken / "truncated.jpg", folder / f"cut_{i}.jpg")


def test_a_class_or_split_that_decoding_empties_is_an_error(split_data, tmp_path,
                                                          bad_image_folder, caplog):
    broken = bad_image_folder / "broken"
    shutil.rmtree(split_data / "train" / "c")
    _undecodable(split_data / "train" / "c", broken, 8)
    shutil.copy(broken / "notes.txt", split_data / "train" / "a")  # skipped as it is found
    with (caplog.at_level(logging.INFO, logger="imgclf"),
          pytest.raises(DataError, match=r"no training image of class 'c' could be decoded; "
                                         r"`imgclf audit` lists the files that fail")):
        scratch(split_data, tmp_path / "run", epochs=1)
    assert "train: 1 file(s) skipped" in caplog.text
    assert "skipped.csv" not in caplog.text  # no run folder holds one
    shutil.rmtree(split_data / "train" / "c")
    shutil.rmtree(split_data / "test")
    _undecodable(split_data / "test" / "a", broken, 2)
    with pytest.raises(DataError, match=r"none of the images of the test split .* could be "
                                        r"decoded \(2 file\(s\) skipped: truncated file"):
        scratch(split_data, tmp_path / "run", epochs=1)
    assert not (tmp_path / "run").exists()


def test_test_class_missing_from_train_raises(split_data, tmp_path, make_image_folder):
    make_image_folder(split_data / "test", {"zebra": 2}, size=(32, 32), seed=4)
    with pytest.raises(DataError, match=r"test split .* class folder\(s\) \['zebra'\] that the "
                                        r"training split does not have"):
        scratch(split_data, tmp_path / "run", epochs=1)
    assert not (tmp_path / "run").exists()  # no half-made run folder


def test_missing_data_folder_leaves_no_run_folder(tmp_path):
    with pytest.raises(DataError, match=r"does not exist"):
        scratch(tmp_path / "missing", tmp_path / "run", epochs=1)
    assert not (tmp_path / "run").exists()


def test_class_weight_auto_on_imbalanced_data(tmp_path, make_image_folder, caplog):
    data = make_image_folder(tmp_path / "data", {"many": 15, "few": 5}, size=(32, 32), seed=5)
    caplog.set_level(logging.INFO, logger="imgclf")
    run = scratch(data, tmp_path / "run", epochs=1, train={"class_weight": "auto"})
    logged = [r.message for r in caplog.records if r.message.startswith("class weights")]
    assert len(logged) == 1
    # Each class by name, its weight to 3 significant digits: "class weights: few=2, many=0.667"
    pairs = [item.split("=") for item in logged[0].split(": ", 1)[1].split(", ")]
    assert [name for name, _ in pairs] == ["few", "many"]
    assert all(len(value.replace(".", "").lstrip("0")) <= 3 for _, value in pairs)
    weights = [float(value) for _, value in pairs]
    # Balanced weights: inversely proportional to each class's count in the training split.
    val = read_csv(run / "predictions.csv")
    n_few = 5 - sum(p["label"] == "few" for p in val)
    n_many = 15 - sum(p["label"] == "many" for p in val)
    assert weights[0] > weights[1]
    assert weights[0] / weights[1] == pytest.approx(n_many / n_few, rel=1e-2)
    assert weights[0] * n_few + weights[1] * n_many == pytest.approx(n_few + n_many, rel=1e-2)
    assert load_config(run / "config.yaml").train.class_weight == "auto"
    assert 0 <= metrics_of(run)["balanced_accuracy"] <= 1


def test_class_weights_are_logged_once_for_a_head_then_fine_tuning(split_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgclf")
    run = imgclf.train(split_data, method="transfer", out=tmp_path / "run", model=BACKBONE,
                       train={"class_weight": "auto", "finetune": 1, "finetune_epochs": 1})
    assert [r["phase"] for r in read_csv(run / "history.csv")] == ["head", "finetune"]
    assert sum(r.message.startswith("class weights") for r in caplog.records) == 1


def test_an_interrupted_run_closes_its_tensorboard_writer(split_data, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from imgclf.engine import tb

    closed, real_close = [], tb.TensorBoardLogger.close

    def close(self):
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(tb.TensorBoardLogger, "close", close)
    interrupt_on_call(monkeypatch, 2)
    with pytest.raises(Interrupted):
        scratch(split_data, tmp_path / "run", epochs=2, train={"tensorboard": True})
    assert len(closed) == 1


def test_no_class_weights_by_default(flat_data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgclf")
    scratch(flat_data, tmp_path / "run", epochs=1)
    assert not any(r.message.startswith("class weights") for r in caplog.records)


def test_tensorboard_logs_every_epoch_of_the_history(split_data, tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "run"
    scratch(split_data, out, epochs=2, train={"tensorboard": True})
    events = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "train/lr"} <= set(tags)
    history = read_csv(out / "history.csv")
    logged = events.Scalars("val/accuracy")
    assert [e.step for e in logged] == [1, 2]
    assert [e.value for e in logged] == pytest.approx(
        [float(row["val_accuracy"]) for row in history], abs=1e-6)


def test_compile_trains_through_torch_compile_and_saves_plain_weights(split_data, tmp_path,
                                                                       monkeypatch):
    trained = []

    def record(phase, rt, desc):
        trained.append(type(phase.module).__name__)
        return REAL_TRAIN_ONE_EPOCH(phase, rt, desc)

    monkeypatch.setattr(loop, "train_one_epoch", record)
    run = scratch(split_data, tmp_path / "run", epochs=1, train={"compile": True})
    assert trained == ["OptimizedModule"]
    weights = load_ckpt(run / "model.pt")["model"]
    assert not [key for key in weights if "_orig_mod" in key]
    assert metrics_of(run)["split"] == "test"
    predictions = Predictor(run, device="cpu").predict([split_data / "test"])
    assert len(predictions) == 9 and {p.predicted for p in predictions} <= {"a", "b", "c"}


def test_random_states_of_gpus_are_saved_by_gpu_runs_and_restored_where_there_are_fewer(
        monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # a CPU run on it
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("CUDA started"))
    assert "cuda" not in loop.rng_state(None)
    restored = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: restored.append((state, device)))
    saved = {"torch": torch.get_rng_state(), "cuda": ["gpu 0's", "gpu 1's"]}  # saved on two
    loop.restore_rng_state(saved, None)
    assert restored == [("gpu 0's", 0)]
