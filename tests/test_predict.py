"""Tests for imgclf.predict and imgclf.evaluation, through the API and the command line.

One tiny scratch run is trained per module (3 colour classes of 32 px images, 2 epochs).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf
from imgclf.cli.main import main
from imgclf.data.decode import decode_image
from imgclf.engine.checkpoints import CHECKPOINT_FORMAT
from imgclf.engine.runtime import resolve_runtime
from imgclf.errors import ConfigError, DataError, RunError
from imgclf.evaluation import choose_tta, evaluate_folder
from imgclf.predict import Predictor

CLASSES = ["blue", "green", "red"]




@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run folder, dataset folder with train/ and test/) of a tiny scratch run."""
    from conftest import single_thread, write_image_folder

    root = tmp_path_factory.mktemp("predict")
    counts = {name: 8 for name in CLASSES}
    write_image_folder(root / "data" / "train", counts, size=(32, 32), seed=0)
    write_image_folder(root / "data" / "test", {name: 2 for name in CLASSES}, size=(32, 32),
                       seed=1)
    with pytest.MonkeyPatch.context() as mp, single_thread():
        mp.setenv("IMGCLF_CACHE_DIR", str(root / "cache"))
        run = imgclf.train(root / "data", out=root / "run", model={"img_size": 32},
                           train={"epochs": 2, "amp": "off", "device": "cpu", "tta": "off"})
    return run, root / "data"


@pytest.fixture
def mixed_folder(tmp_path, trained, bad_image_folder):
    """Good images (one nested a level down), broken files, a text file and a hidden file."""
    _, data = trained
    folder = tmp_path / "new"
    folder.mkdir()
    for path in sorted((data / "test").rglob("*_000.*"))[:3]:
        shutil.copy(path, folder / path.name)
    (folder / "nested").mkdir()
    shutil.copy(next((data / "test" / "red").glob("*_001.*")), folder / "nested" / "deep.png")
    broken = bad_image_folder / "broken"
    for name in ("corrupt.jpg", "empty.jpg", "truncated.jpg", "notes.txt", ".hidden.jpg"):
        shutil.copy(broken / name, folder / name)
    return folder


GOOD = 4
ERRORS = {"corrupt.jpg": "not a recognised image format", "empty.jpg": "empty file (0 bytes)",
          "truncated.jpg": "truncated"}


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


# --- the Python API -----------------------------------------------------------------------------


def test_predict_gives_one_row_per_file_and_error_rows(trained, mixed_folder):
    run, _ = trained
    predictions = imgclf.load(run, device="cpu").predict([mixed_folder])
    by_name = {p.path.name: p for p in predictions}
    assert len(predictions) == GOOD + len(ERRORS)  # the hidden file is not a row,
    assert ".hidden.jpg" not in by_name
    assert "notes.txt" not in by_name  # nor a file that is not an image by name or content
    assert "deep.png" in by_name  # folders are walked recursively
    for name, reason in ERRORS.items():
        p = by_name[name]
        assert reason in p.error
        assert p.predicted is None and p.confidence is None and p.probs is None
    good = [p for p in predictions if p.error is None]
    assert len(good) == GOOD
    for p in good:
        assert p.predicted in CLASSES
        assert p.probs.shape == (3,)
        assert p.probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert p.confidence == pytest.approx(float(p.probs.max()))
        assert p.predicted == CLASSES[int(p.probs.argmax())] == p.label  # its earlier name


def test_predict_takes_paths_and_points_arrays_to_predict_arrays(trained, mixed_folder):
    run, _ = trained
    predictor = imgclf.load(run, device="cpu")
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ConfigError, match="for images already in memory use predict_arrays "
                                          r".*, got ndarray\.$"):
        predictor.predict([image])
    with pytest.raises(ConfigError, match=r"in memory use predict_arrays .*, got an array of "
                                          r"uint8 values\.$"):
        predictor.predict(image[None])
    # File names in a set, a generator or an array are paths all the same.
    one = mixed_folder / "nested" / "deep.png"
    for paths in ({one}, (p for p in [one]), np.array([str(one)]),
                  np.array([str(one)], dtype=object), np.array(str(one))):
        assert [p.path for p in predictor.predict(paths, batch_size=np.int64(2))] == [one]
    with pytest.raises(ConfigError, match=r"\(str or Path\).*, got bytes\.$"):
        predictor.predict(bytes(one))
    # a non-image named on its own is an error row, not left out
    [notes] = predictor.predict([mixed_folder / "notes.txt"])
    assert notes.error == "not a recognised image format"


def test_predict_takes_files_and_reports_missing_ones(trained, mixed_folder):
    run, _ = trained
    predictor = imgclf.load(run, device="cpu")
    missing = mixed_folder / "gone.jpg"
    one = mixed_folder / "nested" / "deep.png"
    predictions = predictor.predict([one, missing])
    assert [p.path for p in predictions if p.error is None] == [one]
    assert [p.error for p in predictions if p.path == missing] == ["no such file or folder"]
    # A single path works as well as a list, and batching does not change results.
    single = predictor.predict(str(one))
    assert len(single) == 1
    np.testing.assert_allclose(single[0].probs, predictions[[p.path for p in predictions]
                                                            .index(one)].probs, atol=1e-6)
    small_batches = predictor.predict([mixed_folder], batch_size=1)
    large_batch = predictor.predict([mixed_folder], batch_size=64)
    assert [(p.path, p.predicted, p.error) for p in small_batches] == \
        [(p.path, p.predicted, p.error) for p in large_batch]


def test_predict_lists_each_file_once_in_the_order_found(trained, mixed_folder):
    run, _ = trained
    predictor = imgclf.load(run, device="cpu")
    predictions = predictor.predict([mixed_folder])
    # Each folder's files by name, unreadable ones among them, then its subfolders.
    top = sorted(p.name for p in mixed_folder.iterdir()
                 if p.is_file() and p.name[0] != "." and p.suffix != ".txt")
    assert [p.path for p in predictions] == \
        [mixed_folder / name for name in top] + [mixed_folder / "nested" / "deep.png"]
    again = predictor.predict([mixed_folder, mixed_folder / "nested" / "deep.png",
                               f"{mixed_folder}/", mixed_folder / "corrupt.jpg"])
    assert [p.path for p in again] == [p.path for p in predictions]


def test_tta_averages_the_image_and_its_mirror(trained, tmp_path):
    run, _ = trained
    rng = np.random.default_rng(9)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    Image.fromarray(pixels[:, ::-1]).save(tmp_path / "mirror.png")
    predictor = Predictor(run, device="cpu")
    plain = {p.path.name: p.probs for p in predictor.predict([tmp_path])}
    tta = predictor.predict([tmp_path / "image.png"], tta=True)[0].probs
    np.testing.assert_allclose(tta, (plain["image.png"] + plain["mirror.png"]) / 2, atol=1e-5)
    assert not np.allclose(plain["image.png"], plain["mirror.png"], atol=1e-4)


def test_predict_arrays_checks_its_input(trained):
    run, _ = trained
    predictor = Predictor(run, device="cpu")
    good = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    wrong = {
        r"got an array of shape \(32, 32, 3\) \(one image: pass images\[None\]\)": good[0],
        r"got 4 channel\(s\) on the last axis .*convert them to RGB": np.zeros((2, 32, 32, 4),
                                                                              np.uint8),
        r"shape \(2, 32, 32\) \(greyscale images\? give them three channels: "
        r"np\.repeat\(images\[\.\.\., None\], 3, axis=-1\)\)": good[..., 0],
        r"the channels come first: move them last with images\.transpose\(0, 2, 3, 1\)":
            good.transpose(0, 3, 1, 2),
        r"this model takes 32x32 images, got 24x32 .*resize them to 32x32": good[:, :24],
        r"got dtype float32; for floats in 0-1 pass": good.astype(np.float32) / 255,
        r"got dtype int64; for whole numbers 0-255 pass images\.astype\(np\.uint8\)":
            good.astype(np.int64),
        r"got dtype bool; for a mask of black and white pass \(images \* 255\)\.astype":
            good > 127,
        r"got dtype complex64; pass pixel values 0-255 as np\.uint8\.$":
            good.astype(np.complex64),
    }
    for match, images in wrong.items():
        with pytest.raises(ConfigError, match=match) as raised:
            predictor.predict_arrays(images)
        assert isinstance(raised.value, ValueError)  # as before ConfigError was raised
    read_only = np.asarray(Image.fromarray(good[0]))[None]  # as PIL gives it
    assert not read_only.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probs = predictor.predict_arrays(read_only)
    np.testing.assert_allclose(probs, predictor.predict_arrays(good[:1]), atol=1e-6)
    # The error's advice for image files gives what predict() sees.
    _, data = trained
    path = next((data / "test" / "red").iterdir())
    from_file = predictor.predict([path])[0].probs
    advised = decode_image(path, (32, 32), predictor.prep.interpolation)[None]
    np.testing.assert_allclose(predictor.predict_arrays(advised)[0], from_file, atol=1e-6)
    # An empty batch has no rows, as from ONNX Runtime.
    for tta in (False, True):
        assert predictor.predict_arrays(good[:0], tta=tta).shape == (0, 3)


def test_predict_arrays_runs_a_batch_at_a_time(trained, monkeypatch):
    run, _ = trained
    predictor = Predictor(run, device="cpu")
    images = np.random.default_rng(4).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    whole = predictor.predict_arrays(images, tta=True)
    seen = []
    probs_of = predictor._probs
    monkeypatch.setattr(predictor, "_probs", lambda batch: seen.append(len(batch))
                        or probs_of(batch))
    np.testing.assert_allclose(predictor.predict_arrays(images, tta=True, batch_size=2), whole,
                               atol=1e-6)
    assert seen == [2, 2, 2, 2, 1, 1]  # each batch, then its mirror image
    for wrong in (0, 1.5, True):
        with pytest.raises(ConfigError, match="batch size must be a whole number"):
            predictor.predict_arrays(images, batch_size=wrong)


def test_csv_columns_and_error_rows(trained, mixed_folder, tmp_path):
    run, _ = trained
    predictor = imgclf.load(run, device="cpu")
    out = tmp_path / "predictions.csv"
    assert predictor.write(predictor.predict([mixed_folder]), out) == out
    columns, rows = read_csv(out)
    assert columns == ["path", "predicted", "confidence", *CLASSES, "error"]
    assert len(rows) == GOOD + len(ERRORS)
    for row in rows:
        name = Path(row["path"]).name
        if name in ERRORS:
            assert ERRORS[name] in row["error"]
            assert row["predicted"] == row["confidence"] == ""
        else:
            assert row["error"] == ""
            probs = [float(row[c]) for c in CLASSES]
            assert sum(probs) == pytest.approx(1.0, abs=1e-4)
            assert row["predicted"] == CLASSES[int(np.argmax(probs))]
            assert float(row["confidence"]) == pytest.approx(max(probs), abs=1e-6)


def test_json_output_has_the_csvs_content(trained, mixed_folder, tmp_path):
    run, _ = trained
    predictor = imgclf.load(run, device="cpu")
    predictions = predictor.predict([mixed_folder])
    predictor.write(predictions, tmp_path / "p.csv")
    out = predictor.write(predictions, tmp_path / "out" / "folder" / "p.json")  # parents made
    records = json.loads(out.read_text())
    _, rows = read_csv(tmp_path / "p.csv")
    assert [r["path"] for r in records] == [r["path"] for r in rows]
    for record, row in zip(records, rows, strict=True):
        assert (record["error"] or "") == row["error"]
        if record["error"]:
            assert record["predicted"] is record["probabilities"] is None
        else:
            assert record["predicted"] == row["predicted"]
            assert record["probabilities"] == {c: float(row[c]) for c in CLASSES}
    assert not list(tmp_path.rglob(".*.tmp*"))  # no temporary file left behind


def test_output_errors(trained, mixed_folder, tmp_path):
    run, _ = trained
    predictor = imgclf.load(run, device="cpu")
    for size in (-3, "4", 2.5, True):
        with pytest.raises(ConfigError, match=rf"batch size must be a whole number, at least 1, "
                                              rf"got {re.escape(repr(size))}\.$"):
            predictor.predict([mixed_folder], batch_size=size)
    for tta in ("off", "no", 1):
        with pytest.raises(ConfigError, match=rf"tta must be True, False or None \(as the run "
                                              rf"chose\), got {re.escape(repr(tta))}\.$"):
            predictor.predict([mixed_folder], tta=tta)
    with pytest.raises(ConfigError, match=r"tta must be True, False or None"):
        imgclf.evaluate(run, trained[1], tta="off", out=tmp_path / "evaluated")
    for data, out in ((None, None), (5, None), (trained[1], 7)):
        with pytest.raises(ConfigError, match=r"is a file or folder, given as a str or Path; "
                                              r"got (NoneType|int) "):
            imgclf.evaluate(run, data, out=out)
    assert not (tmp_path / "evaluated").exists()
    with pytest.raises(ConfigError, match="is a folder: give a file name"):
        predictor.write([], tmp_path)
    for name in ("p.txt", "p", "p.xlsx"):
        with pytest.raises(ConfigError, match=r"written as \.csv or \.json; name it accordingly"):
            predictor.write([], tmp_path / name)
        assert not (tmp_path / name).exists()


def test_load_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(RunError, match=r"holds no model\.pt, best\.pt or last\.pt"):
        imgclf.load(tmp_path)
    with pytest.raises(RunError, match=r"does not exist"):
        imgclf.load(tmp_path / "missing")
    with pytest.raises(RunError, match=r"as a str or Path; got int 123"):
        imgclf.load(123)
    with pytest.raises(RunError, match=r"as a str or Path; got NoneType None"):
        imgclf.evaluate(None, tmp_path)


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
def test_load_refuses_a_file_that_is_not_a_checkpoint(trained, tmp_path):
    run, _ = trained
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(300))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    weights = tmp_path / "weights.pt"  # PyTorch's, but not a checkpoint of imgclf's
    torch.save({"weight": torch.zeros(2)}, weights)
    scripted = tmp_path / "clf.pt"  # a TorchScript export under a name of the user's
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(scripted))
    junk = tmp_path / "junk.pt"
    junk.write_text("junk\n")
    pickled = tmp_path / "pickled.pt"  # a plain pickle, not torch.save's archive
    pickled.write_bytes(pickle.dumps({"state": "x"}, protocol=4))
    for path in (run / "config.yaml", garbage, empty, junk, weights, scripted, pickled):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and torch warns of nothing on the way
            with pytest.raises(RunError, match=rf"^{re.escape(str(path))} is not an imgclf "
                                               r"checkpoint .*give the run folder"):
                imgclf.load(path, device="cpu")
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x07")
    with pytest.raises(RunError, match=r"model\.onnx is an ONNX export, not an imgclf "
                                       r"checkpoint: predict with it by .*--engine onnx"):
        imgclf.load(onnx_file)
    with pytest.raises(RunError, match=r"model\.torchscript\.pt is a TorchScript export"):
        imgclf.load(shutil.copy(scripted, tmp_path / "model.torchscript.pt"))


def test_a_checkpoint_of_a_later_format_is_refused_with_what_to_do(trained, tmp_path):
    run, _ = trained
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT
    later = tmp_path / "model.pt"
    torch.save(dict(ckpt, format=CHECKPOINT_FORMAT + 1), later)
    with pytest.raises(RunError, match=rf"model\.pt was written by a later imgclf \(checkpoint "
                                       rf"format {CHECKPOINT_FORMAT + 1}; .*upgrade imgclf"):
        imgclf.load(later)


def test_commands_name_a_file_that_is_not_a_checkpoint(trained, tmp_path, capsys):
    run, data = trained
    assert main(["evaluate", str(run / "config.yaml"), str(data), "-q"]) == 2
    assert f"error: {run / 'config.yaml'} is not an imgclf checkpoint" in capsys.readouterr().err
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    assert main(["predict", str(tmp_path / "model.onnx"), str(data / "test"), "--out",
                 str(tmp_path / "p.csv"), "-q"]) == 2
    assert "is an ONNX export" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [(": :\n", "is not valid YAML (expected <block end>, but found ':' at line 1, column 1)"),
     ("- a\n", "holds list, not a mapping of config sections")],
    ids=["not-yaml", "list"],
)
def test_evaluate_names_a_damaged_config_yaml(trained, tmp_path, capsys, text, message):
    run, data = trained
    damaged = shutil.copytree(run, tmp_path / "run")
    (damaged / "config.yaml").write_text(text)
    assert main(["evaluate", str(damaged), str(data), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {damaged / 'config.yaml'} {message}; ")
    assert err.endswith("train the run again or repair the file.\n") and err.count("\n") == 1


# --- the command line ---------------------------------------------------------------------------


def test_folder_walks_leave_run_folders_out(trained, mixed_folder, make_run_folder, caplog):
    run, _ = trained
    old = shutil.copytree(run, mixed_folder / "old-run")  # a real run: model, plots and all
    plots = make_run_folder(mixed_folder / "nested" / "run-x", "best.pt")
    predictor = imgclf.load(run, device="cpu")
    with caplog.at_level(logging.WARNING, logger="imgclf"):
        predictions = predictor.predict([mixed_folder])
    assert len(predictions) == GOOD + len(ERRORS)  # the same rows as without the runs
    assert not [p.path for p in predictions if p.path.is_relative_to(old)
                or p.path.is_relative_to(mixed_folder / "nested" / "run-x")]
    for folder in (old, mixed_folder / "nested" / "run-x"):
        assert f"{folder} is an imgclf run folder, not data: left out" in caplog.text
    # A run's plot named on its own is predicted, as any image file is.
    named = [old / "learning_curves.png", plots[-1]]
    predictions = predictor.predict([mixed_folder, *named])
    assert [p.path for p in predictions[-2:]] == named
    assert all(p.error is None and p.predicted in CLASSES for p in predictions[-2:])


def test_predict_command_on_a_folder_of_runs(trained, make_run_folder, tmp_path, capsys):
    run, _ = trained
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "first")
    make_run_folder(runs / "second", "model.pt")
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(runs), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert f"{runs / 'first'} is an imgclf run folder, not data: left out" in captured.err
    assert f"{runs / 'second'} is an imgclf run folder" in captured.err
    assert "no image files in" in captured.err and not out.exists()


def test_predict_command_writes_the_csv(trained, mixed_folder, tmp_path, capsys):
    run, _ = trained
    out = tmp_path / "out.csv"
    assert main(["predict", str(run), str(mixed_folder), "--out", str(out), "--device", "cpu"]) \
        == 0
    columns, rows = read_csv(out)
    assert columns == ["path", "predicted", "confidence", *CLASSES, "error"]
    assert len(rows) == GOOD + len(ERRORS)
    printed = capsys.readouterr().out
    assert f"{GOOD} image(s) predicted" in printed
    assert f"{len(ERRORS)} file(s) could not be read" in printed


def test_predict_command_with_tta(trained, mixed_folder, tmp_path):
    run, _ = trained
    plain, tta = tmp_path / "plain.csv", tmp_path / "tta.csv"
    assert main(["predict", str(run), str(mixed_folder), "--out", str(plain), "-q"]) == 0
    assert main(["predict", str(run), str(mixed_folder), "--out", str(tta), "--tta", "-q"]) == 0
    _, plain_rows = read_csv(plain)
    _, tta_rows = read_csv(tta)
    assert [r["path"] for r in plain_rows] == [r["path"] for r in tta_rows]
    good = [(p, t) for p, t in zip(plain_rows, tta_rows, strict=True) if not p["error"]]
    assert len(good) == GOOD
    assert any(p["confidence"] != t["confidence"] for p, t in good)  # TTA changes numbers
    for _, t in good:
        assert sum(float(t[c]) for c in CLASSES) == pytest.approx(1.0, abs=1e-4)


def test_predict_command_fails_when_nothing_could_be_read(trained, bad_image_folder, tmp_path,
                                                          capsys):
    run, _ = trained
    out = tmp_path / "p.csv"
    out.write_text("path,predicted,confidence,earlier predictions\n")
    assert main(["predict", str(run), str(bad_image_folder / "broken" / "corrupt.jpg"),
                 str(tmp_path / "missing.jpg"), "--out", str(out), "-q"]) == 2
    captured = capsys.readouterr()
    assert "error: no image could be predicted: 2 file(s) could not be read." in captured.err
    assert "missing.jpg: no such file or folder" in captured.out  # the reasons are shown
    assert "corrupt.jpg: not a recognised image format" in captured.out
    assert out.read_text() == "path,predicted,confidence,earlier predictions\n"  # kept
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(run), str(tmp_path / "empty"), "--out", str(out), "-q"]) == 2
    assert "no image files in" in capsys.readouterr().err


def test_predict_command_checks_the_output_name_first(tmp_path, capsys):
    # before the run is even opened: a missing run folder would be the other error
    assert main(["predict", str(tmp_path / "no-run"), str(tmp_path), "--out",
                 str(tmp_path / "p.xlsx")]) == 2
    assert "p.xlsx: this file is written as .csv or .json" in capsys.readouterr().err
    assert not (tmp_path / "p.xlsx").exists()


def test_predict_refuses_to_write_over_the_runs_own_files(trained, tmp_path, monkeypatch,
                                                          capsys):
    trained_run, data = trained
    run = shutil.copytree(trained_run, tmp_path / "run")
    before = (run / "predictions.csv").read_bytes()
    monkeypatch.chdir(run)  # --out predictions.csv, the default, is the run's own file here
    assert main(["predict", ".", str(data / "test"), "-q"]) == 2
    assert (f"predictions.csv would replace the predictions.csv that imgclf wrote into {run}; "
            "give this file another name, e.g. new-predictions.csv.") in capsys.readouterr().err
    for name in ("predictions.csv", "metrics.json"):
        assert main(["predict", str(run), str(data / "test"), "--out", str(run / name),
                     "-q"]) == 2
    with pytest.raises(ConfigError, match="would replace the history.csv that imgclf wrote"):
        Predictor(run, device="cpu").write([], run / "history.csv")
    assert (run / "predictions.csv").read_bytes() == before
    # Another name in the run folder is fine, and so is predictions.csv elsewhere.
    assert main(["predict", ".", str(data / "test"), "--out", "new.csv", "-q"]) == 0
    assert main(["predict", ".", str(data / "test"), "--out", str(tmp_path / "predictions.csv"),
                 "-q"]) == 0
    assert (run / "predictions.csv").read_bytes() == before


def test_predict_keeps_other_files_and_the_runs_dataset(trained, tmp_path, capsys):
    run, data = trained
    mine = tmp_path / "mine.csv"
    mine.write_text("my,own,table\n")
    evaluation = tmp_path / "ev"
    evaluate_folder(run, data, out=evaluation)
    kept = {p: p.read_bytes() for p in (mine, *evaluation.iterdir())}
    for out, message in (
            (mine, "exists and is not a predictions file that imgclf wrote"),
            (evaluation / "predictions.csv", "would replace the predictions.csv that imgclf"),
            (evaluation / "metrics.json", "would replace the metrics.json that imgclf"),
            (data / "p.csv", f"would be inside the dataset {data}")):
        assert main(["predict", str(run), str(data / "test"), "--out", str(out), "-q"]) == 2
        assert message in capsys.readouterr().err
    assert {p: p.read_bytes() for p in kept} == kept and not (data / "p.csv").exists()
    # Earlier predictions are written over, as CSV and as JSON.
    for name in ("p.csv", "p.json"):
        for _ in range(2):
            assert main(["predict", str(run), str(data / "test"), "--out",
                         str(tmp_path / name), "-q"]) == 0


def test_predict_writes_nothing_into_the_folders_it_classifies(trained, tmp_path, capsys,
                                                               monkeypatch):
    run, data = trained
    new = tmp_path / "new"
    shutil.copytree(data / "test", new)
    before = sorted(new.rglob("*"))
    monkeypatch.chdir(new)  # `imgclf predict RUN .`: the default --out would land in it
    assert main(["predict", str(run), ".", "-q"]) == 2
    assert (f"predictions.csv would be inside {new}, a folder whose images are predicted; "
            "imgclf never writes among the images it reads") in capsys.readouterr().err
    assert main(["predict", str(run), str(new), "--out", str(new / "red" / "p.csv"), "-q"]) == 2
    assert f"would be inside {new}, a folder whose images" in capsys.readouterr().err
    # The Python API's write refuses the folders that predict walked for those predictions.
    predictor = Predictor(run)
    predictions = predictor.predict([new])
    other = tmp_path / "other"
    shutil.copytree(data / "test" / "red", other)
    later = predictor.predict([other])
    with pytest.raises(ConfigError, match=f"would be inside {re.escape(str(new))}, a folder"):
        predictor.write(predictions, new / "p.json")
    # A list made from them knows no walk: the folders holding their files stand for it.
    kept = [p for p in predictions if not p.error]
    with pytest.raises(ConfigError, match=f"would be inside {re.escape(str(new / 'red'))}"):
        predictor.write(kept, new / "red" / "p.json")
    assert predictor.write(later, new / "later.json").is_file()  # walked for others
    (new / "later.json").unlink()
    assert sorted(new.rglob("*")) == before
    # Beside it is fine, and so is a file given among the images.
    image = next((new / "red").iterdir())
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "p.csv"), "-q"]) == 0


def test_predict_may_write_into_its_run_folder_inside_the_folder_it_classifies(
        trained, tmp_path, monkeypatch, capsys):
    run, data = trained
    project = tmp_path / "project"
    shutil.copytree(data / "test", project / "images")
    shutil.copytree(run, project / "run")  # walks leave a run folder out
    monkeypatch.chdir(project)
    assert main(["predict", "run", ".", "--out", "run/new.csv", "-q"]) == 0
    with open(project / "run" / "new.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(list((project / "images").rglob("*.*")))
    # Not into images inside the run folder, which are walked, nor beside a model file
    # lying among the images (its folder is no run folder, and is walked).
    shutil.copytree(data / "test" / "red", project / "run" / "samples")
    shutil.copy(run / "model.pt", project / "images" / "model.pt")
    for argv in (["run", "run/samples", "--out", "run/samples/p.csv"],
                 ["run", ".", "run/samples", "--out", "run/samples/p.csv"],  # in any order
                 ["images/model.pt", "images", "--out", "images/p.csv"]):
        assert main(["predict", *argv, "-q"]) == 2
        assert "a folder whose images are predicted" in capsys.readouterr().err
    assert main(["predict", "run", "", "-q"]) == 2
    assert "an image or folder to predict is an empty path" in capsys.readouterr().err
    # A model kept in a subfolder of its run: the run's folder, left out of the walk.
    (project / "run" / "kept").mkdir()
    shutil.move(project / "run" / "model.pt", project / "run" / "kept" / "model.pt")
    assert main(["predict", "run/kept/model.pt", ".", "--out", "run/kept.csv", "-q"]) == 0


def test_a_run_folder_given_to_predict_is_left_out(trained, tmp_path, capsys):
    run, _ = trained
    assert main(["predict", str(run), str(run), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{run} is an imgclf run folder, not data: left out" in err
    assert "no image could be predicted" in err


def test_predict_command_onnx_refuses_cuda(trained, tmp_path, capsys):
    run, _ = trained
    assert main(["predict", str(run), str(tmp_path), "--engine", "onnx", "--device", "cuda",
                 "-q"]) == 2
    assert "--engine onnx runs on the CPU" in capsys.readouterr().err


# --- evaluation ---------------------------------------------------------------------------------


def test_evaluate_folder_writes_metrics_in_the_run(trained):
    run, data = trained
    metrics, out = evaluate_folder(run, data, device="cpu")
    assert out == run / "evaluate-test"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["split"] == "test"
    assert saved["compute_dtype"] == "float32" and "precision" not in saved
    assert saved["n_samples"] == 6
    assert saved["data"] == str(data / "test")
    assert saved["accuracy"] == pytest.approx(metrics["accuracy"])
    # The same model on the same test images as at the end of training.
    trained_metrics = json.loads((run / "metrics.json").read_text())
    assert saved["confusion_matrix"] == trained_metrics["confusion_matrix"]
    assert saved["log_loss"] == pytest.approx(trained_metrics["log_loss"], abs=1e-5)
    assert (out / "predictions.csv").exists() and (out / "confusion_matrix.png").exists()


def test_evaluate_command(trained, tmp_path, capsys):
    run, data = trained
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), str(data), "--split", "train", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "train" and metrics["n_samples"] == 24
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.index("}") + 1])["accuracy"] == metrics["accuracy"]


def test_evaluate_command_default_folder(trained, capsys):
    run, data = trained
    assert main(["evaluate", str(run), str(data), "-q"]) == 0
    assert (run / "evaluate-test" / "metrics.json").exists()
    assert f"results: {run / 'evaluate-test'}" in capsys.readouterr().out
    # Given the model file instead of its run folder, the results go to the same place.
    assert main(["evaluate", str(run / "model.pt"), str(data), "-q"]) == 0
    assert f"results: {run / 'evaluate-test'}" in capsys.readouterr().out


def test_evaluate_names_a_plain_folder_and_keeps_other_evaluations(trained, tmp_path, capsys):
    trained_run, data = trained
    run = shutil.copytree(trained_run, tmp_path / "run")
    shutil.copytree(data / "test", tmp_path / "scenes")  # a folder of classes, no splits
    assert main(["evaluate", str(run), str(tmp_path / "scenes"), "--split", "val", "-q"]) == 0
    captured = capsys.readouterr()
    assert f"results: {run / 'evaluate-scenes'}" in captured.out
    assert "has no split folders: evaluating all of it, not a val split" in captured.err
    saved = json.loads((run / "evaluate-scenes" / "metrics.json").read_text())
    assert saved["split"] == "scenes" and saved["n_samples"] == 6
    # Another dataset's test split goes to the same default folder: refused, not replaced.
    assert main(["evaluate", str(run), str(data), "-q"]) == 0
    before = (run / "evaluate-test" / "metrics.json").read_text()
    other = shutil.copytree(data, tmp_path / "other")
    assert main(["evaluate", str(run), str(other), "-q"]) == 2
    assert f"holds the evaluation of {data / 'test'}; choose another --out" \
        in capsys.readouterr().err
    assert (run / "evaluate-test" / "metrics.json").read_text() == before
    assert main(["evaluate", str(run), str(data), "-q"]) == 0  # the same images again: fine


def test_evaluate_with_tta_gives_the_predictors_tta_probabilities(trained, tmp_path):
    run, data = trained
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), str(data), "--out", str(out), "--tta", "-q"]) == 0
    assert json.loads((out / "metrics.json").read_text())["tta"] is True
    _, rows = read_csv(out / "predictions.csv")
    expected = Predictor(run, device="cpu").predict([r["path"] for r in rows], tta=True)
    got = np.array([[float(r[c]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(got, np.array([p.probs for p in expected]), atol=1e-5)
    plain = np.array([p.probs for p in Predictor(run, device="cpu").predict(
        [r["path"] for r in rows])])
    assert not np.allclose(got, plain, atol=1e-5)  # the mirrored view changed something


def test_evaluate_without_test_or_val_says_it_uses_train(trained, tmp_path, caplog):
    run, data = trained
    shutil.copytree(data / "train", tmp_path / "data" / "train")
    with caplog.at_level(logging.WARNING, logger="imgclf.evaluation"):
        metrics, _ = evaluate_folder(run, tmp_path / "data", out=tmp_path / "ev")
    assert metrics["split"] == "train"
    assert "no test or val split: evaluating its train split (if it holds images the model " \
           "learnt from, the figures overstate" in caplog.text
    assert "trained on" not in caplog.text  # another folder than the run's, whatever it holds


def test_evaluate_on_the_runs_own_training_folder_warns(trained, tmp_path, caplog):
    run, data = trained
    for folder in (data / "train", data):  # named directly, or as the split it holds
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="imgclf.evaluation"):
            evaluate_folder(run, folder, split="train" if folder == data else None,
                            out=tmp_path / f"ev-{folder.name}")
        assert f"is the folder {run} was trained on: these figures are on images the " \
               "model has learnt from" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imgclf.evaluation"):
        evaluate_folder(run, data, out=tmp_path / "ev-test")  # its test split: no warning
    assert "trained on" not in caplog.text


def test_evaluate_refuses_to_overwrite_or_write_into_the_data(trained, tmp_path):
    run, data = trained
    other = tmp_path / "other_run"
    other.mkdir()
    for name in ("model.pt", "metrics.json"):
        (other / name).write_text("another run's\n")
    with pytest.raises(RunError, match="holds metrics.json, which imgclf did not write"):
        evaluate_folder(run, data, out=other)
    assert (other / "metrics.json").read_text() == "another run's\n"
    (other / "metrics.json").unlink()
    with pytest.raises(RunError, match="already holds other files"):
        evaluate_folder(run, data, out=other)
    # A user's files under evaluate's own names, and another command's predictions.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "predictions.csv").write_text("my,data\n")
    with pytest.raises(RunError, match="holds predictions.csv, which imgclf did not write"):
        evaluate_folder(run, data, out=mine)
    assert (mine / "predictions.csv").read_text() == "my,data\n"
    evaluate_folder(run, data, out=tmp_path / "again")
    evaluate_folder(run, data, out=tmp_path / "again")  # its own results are written again
    with pytest.raises(RunError, match="imgclf never writes into a dataset"):
        evaluate_folder(run, data, out=data / "results")
    assert not (data / "results").exists()
    with pytest.raises(ConfigError, match="split must be test, val or train, got 'validation'"):
        evaluate_folder(run, data, split="validation")


def test_predictions_go_into_the_predicting_run_or_outside_any(trained, tmp_path):
    trained_run, data = trained
    other = shutil.copytree(trained_run, tmp_path / "other")
    images = data / "test" / "red"
    (other / "evals").mkdir()
    before = sorted(p.name for p in other.rglob("*"))
    (tmp_path / "link").symlink_to(other / "evals")  # a path that does not show the run
    for out in (other / "new.csv", other / "sub" / "new.json", tmp_path / "link" / "new.csv"):
        assert main(["predict", str(trained_run), str(images), "--out", str(out), "-q"]) == 2
        with pytest.raises(RunError, match=r"would be inside .*other, the folder of another "
                                           r"run; write predictions into the predicting run's "
                                           r"folder or outside any run folder"):
            imgclf.load(trained_run).write([], out)
    assert sorted(p.name for p in other.rglob("*")) == before
    for out in (trained_run / "sub" / "new.csv", tmp_path / "new.csv"):
        assert main(["predict", str(trained_run), str(images), "--out", str(out), "-q"]) == 0
        assert out.read_text().startswith("path,predicted,confidence,")
    shutil.rmtree(trained_run / "sub")
    # Another run's own file names are refused as another run's folder, whose advice works.
    with pytest.raises(RunError, match="the folder of another run"):
        imgclf.load(trained_run).write([], other / "predictions.csv")
    # A name the run writes, not written yet, is named for what it is.
    with pytest.raises(ConfigError, match=r"leaderboard\.csv is the name of the leaderboard"
                                          r"\.csv that imgclf writes into .*; give this file "
                                          r"another name, e\.g\. .*new-leaderboard\.csv"):
        imgclf.load(trained_run).write([], trained_run / "leaderboard.csv")
    # A model.pt kept in a subfolder of its run predicts into that run.
    kept = other / "kept" / "model.pt"
    kept.parent.mkdir()
    shutil.copy(other / "model.pt", kept)
    assert main(["predict", str(kept), str(images), "--out", str(other / "new.csv"), "-q"]) == 0


def test_evaluate_keeps_each_runs_evaluations_apart(trained, tmp_path):
    trained_run, data = trained
    first = shutil.copytree(trained_run, tmp_path / "first")
    second = shutil.copytree(trained_run, tmp_path / "second")
    with pytest.raises(RunError, match=r"would be inside .*first, the folder of another run; "
                                       r"evaluate into .*second \(the default\)"):
        evaluate_folder(second, data, out=first / "evaluate-test")
    with pytest.raises(RunError, match=r"would be inside .*first, the folder of another run"):
        evaluate_folder(second, data, out=first / "evaluate-test" / "deeper")
    assert not (first / "evaluate-test" / "deeper").exists()
    evaluate_folder(second, data, out=second / "sub" / "ev")  # deep inside its own: fine
    metrics, _ = evaluate_folder(first, data, out=tmp_path / "evals")
    assert (metrics["run"], metrics["model_file"]) == (str(first), "model.pt")
    before = (tmp_path / "evals" / "metrics.json").read_text()
    with pytest.raises(RunError, match=r"evals holds the evaluation of the run in .*first; "
                                       r"choose another --out for .*second"):
        evaluate_folder(second, data, out=tmp_path / "evals")
    assert (tmp_path / "evals" / "metrics.json").read_text() == before
    # A run's own evaluation folder stays its own when the run moves.
    evaluate_folder(first, data)
    moved = first.rename(tmp_path / "moved")
    assert evaluate_folder(moved, data)[1] == moved / "evaluate-test"


def test_a_run_without_its_final_model_is_used_with_a_warning(trained, tmp_path, caplog):
    trained_run, data = trained
    run = shutil.copytree(trained_run, tmp_path / "unfinished")
    (run / "model.pt").unlink()
    metrics, _ = evaluate_folder(run, data, out=tmp_path / "ev")
    assert metrics["model_file"] == "best.pt"
    assert f"{run} has no model.pt: its training has not finished, so best.pt, saved during " \
           "training, is used" in caplog.text
    caplog.clear()
    Predictor(run / "best.pt")  # asked for by name: no warning
    assert "has not finished" not in caplog.text
    # Stopped before its first epoch ended: last.pt alone, the starting weights.
    (run / "best.pt").unlink()
    last = torch.load(run / "last.pt", weights_only=True)
    torch.save({**last, "history": []}, run / "last.pt")
    Predictor(run)
    assert "so last.pt, saved during training, is used (no epoch had finished: its weights " \
           "are the untrained starting point)" in caplog.text


def test_a_dataset_given_as_dot_dot_is_named_after_its_folder(trained, tmp_path, monkeypatch):
    run, data = trained
    monkeypatch.chdir(data / "test" / "red")
    metrics, out = evaluate_folder(run, "../..", out=tmp_path / "ev")
    assert metrics["data"] == str(data / "test")  # the test split of data, as written out
    monkeypatch.chdir(data / "test" / "red")
    metrics, out = evaluate_folder(run, "..", out=tmp_path / "ev2")
    assert metrics["split"] == "test" and metrics["data"] == str(data / "test")


def test_evaluate_a_dataset_with_only_a_test_split(trained, tmp_path):
    run, data = trained
    for layout in ("only/test", "kaggle/seg_test/seg_test"):
        shutil.copytree(data / "test", tmp_path / layout)
        root = tmp_path / layout.split("/")[0]
        metrics, _ = evaluate_folder(run, root, out=tmp_path / f"ev-{root.name}")
        assert metrics["split"] == "test" and metrics["n_samples"] == 6


def test_evaluate_a_split_that_decodes_to_nothing_is_an_error(trained, tmp_path,
                                                             bad_image_folder):
    run, _ = trained
    (tmp_path / "data" / "test" / "red").mkdir(parents=True)
    shutil.copy(bad_image_folder / "broken" / "truncated.jpg",
                tmp_path / "data" / "test" / "red" / "cut.jpg")
    with pytest.raises(DataError, match=r"none of the images of the test split .* could be "
                                        r"decoded"):
        evaluate_folder(run, tmp_path / "data", out=tmp_path / "ev")


def test_evaluate_matches_class_names_in_either_unicode_form(trained, tmp_path):
    import unicodedata

    run, data = trained
    folder = tmp_path / "nfd"
    shutil.copytree(data / "test", folder)
    classes = Predictor(run, device="cpu").classes
    renamed = dict(zip(classes, ["caf\u00e9", "na\u00efve", "\u00e9t\u00e9"], strict=False))
    decomposed = {k: unicodedata.normalize("NFD", v) for k, v in renamed.items()}
    train_nfc = tmp_path / "train-nfc"
    shutil.copytree(data, train_nfc)
    for split in ("train", "test"):
        for old, new in renamed.items():
            (train_nfc / split / old).rename(train_nfc / split / new)
    for old, new in decomposed.items():
        (folder / old).rename(folder / new)
    nfc_run = imgclf.train(train_nfc, out=tmp_path / "run", model={"img_size": 32},
                           train={"epochs": 1, "amp": "off", "device": "cpu", "tta": "off"})
    metrics, _ = evaluate_folder(nfc_run, folder, out=tmp_path / "ev")
    assert metrics["n_samples"] == 6
    assert set(metrics["per_class"]) == set(renamed.values())


def test_evaluate_a_plain_folder_of_classes(trained, tmp_path, make_image_folder):
    run, _ = trained
    folder = make_image_folder(tmp_path / "extra", {"red": 2, "green": 2}, size=(32, 32),
                               seed=11)
    metrics, out = imgclf.evaluate(run, folder, out=tmp_path / "ev", device="cpu")
    assert metrics["split"] == "extra" and metrics["n_samples"] == 4
    assert (out / "metrics.json").exists()


def test_evaluate_val_refuses_validation_images_it_cannot_draw_again(trained, tmp_path):
    run, data = trained
    first = next((data / "train" / "red").iterdir())
    added = shutil.copy(first, first.with_name("added-since.png"))  # the folder changed
    try:
        with pytest.raises(RunError, match=r"validation images of .* cannot be drawn again: "
                                           r"the files of its training folder, or how imgclf "
                                           r"splits them, changed since the run trained; "
                                           r"new: red/added-since\.png \((training|"
                                           r"validation)\).*, so they would not be"):
            evaluate_folder(run, data, split="val", out=tmp_path / "ev")
    finally:
        Path(added).unlink()
    # Another test split leaves the validation images as they were.
    test_image = next((data / "test" / "red").iterdir())
    added = shutil.copy(test_image, test_image.with_name("added-since.png"))
    try:
        metrics, _ = evaluate_folder(run, data, split="val", out=tmp_path / "ev")
        assert metrics["split"] == "val"
    finally:
        Path(added).unlink()


def test_the_evaluations_plots_name_its_split(trained, tmp_path, monkeypatch):
    from imgclf import evaluation

    titles = {}
    for name in ("plot_confusion_matrix", "plot_roc_curves"):
        real = getattr(evaluation, name)
        monkeypatch.setattr(evaluation, name, lambda *args, _real=real, _name=name, **kw: (
            titles.__setitem__(_name, kw.get("title")), _real(*args, **kw))[1])
    run, data = trained
    evaluate_folder(run, data, split="val", out=tmp_path / "ev")
    assert titles == {"plot_confusion_matrix": "val split",
                      "plot_roc_curves": "ROC (one-vs-rest), val split"}


def test_evaluate_val_draws_the_runs_own_validation_images_again(trained, tmp_path, caplog):
    run, data = trained  # trained on train/ with 20% of it held out for validation
    with caplog.at_level(logging.INFO, logger="imgclf"):
        metrics, out = evaluate_folder(run, data, split="val", out=tmp_path / "ev")
    assert "has no val split: evaluating the run's validation images, 20% of train" in caplog.text
    assert "the folder" not in caplog.text  # they are not the images it learnt from
    assert metrics["split"] == "val" and metrics["n_samples"] == 5  # ceil(0.2 * 24)
    with open(run / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    kept = min(history, key=lambda row: float(row["val_loss"]))  # restore_best keeps it
    assert metrics["accuracy"] == pytest.approx(float(kept["val_accuracy"]))
    with open(out / "predictions.csv", newline="") as fh:
        paths = [Path(row["path"]) for row in csv.DictReader(fh)]
    assert all(path.is_relative_to(data / "train") for path in paths)
    # The same images elsewhere are not the run's dataset: there is no val split to draw.
    copy = shutil.copytree(data, tmp_path / "copy")
    with pytest.raises(DataError, match=r"has no val split"):
        evaluate_folder(run, copy, split="val", out=tmp_path / "x")


def test_evaluate_val_of_a_folder_of_classes_draws_the_held_out_images(tmp_path,
                                                                     make_image_folder, caplog):
    data = make_image_folder(tmp_path / "flat", {"cat": 10, "dog": 10}, size=(32, 32), seed=3)
    run = imgclf.train(data, out=tmp_path / "run", model={"img_size": 32},
                       train={"epochs": 1, "tta": "off"})
    with caplog.at_level(logging.INFO, logger="imgclf"):
        metrics, out = evaluate_folder(run, data, split="val")
    assert "evaluating the run's validation images, 20% of train" in caplog.text
    assert "evaluating all of it" not in caplog.text
    assert out == run / "evaluate-val"
    paths = []
    for predictions in (run / "predictions.csv", out / "predictions.csv"):
        with open(predictions, newline="") as fh:
            paths.append(sorted(row["path"] for row in csv.DictReader(fh)))
    assert len(paths[0]) == 4 and paths[1] == paths[0]  # the images training held out


def test_evaluate_lists_the_files_it_skipped(trained, tmp_path, monkeypatch):
    run, data = trained
    folder = shutil.copytree(data / "test", tmp_path / "test")
    broken = folder / "red" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    metrics, out = evaluate_folder(run, folder, out=tmp_path / "ev")
    assert metrics["skipped_files"] == 1
    with open(out / "skipped.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(row["split"], Path(row["path"])) for row in rows] == [("test", broken)]
    assert rows[0]["reason"]
    # Given from another folder by a relative path, each file is still named from the root.
    monkeypatch.chdir(data)
    evaluate_folder(run, os.path.relpath(folder, data), out=tmp_path / "ev2")
    with open(tmp_path / "ev2" / "skipped.csv", newline="") as fh:
        assert [Path(row["path"]) for row in csv.DictReader(fh)] == [broken]


def test_evaluate_warns_of_an_empty_class_and_names_unknown_classes_first(
        trained, tmp_path, make_image_folder, caplog):
    run, _ = trained
    folder = make_image_folder(tmp_path / "extra", {"red": 2, "green": 2}, size=(32, 32))
    (folder / "blue").mkdir()
    with caplog.at_level(logging.WARNING, logger="imgclf"):
        metrics, out = evaluate_folder(run, folder, out=tmp_path / "ev")
    assert f"class folder {folder / 'blue'} holds no readable images: the extra split has no " \
           "image of class 'blue'" in caplog.text
    assert metrics["n_samples"] == 4
    zoo = make_image_folder(tmp_path / "zoo", {"zebra": 2}, size=(32, 32))
    with pytest.raises(DataError, match=r"\['zebra'\] that the model does not have"):
        evaluate_folder(run, zoo, out=out)  # not: 'holds the evaluation of' extra
    # Unlabelled images beside a folder: named as the folder it is, and the images as what
    # they are.
    shutil.copy(next((folder / "red").iterdir()), zoo / "loose.png")
    with pytest.raises(DataError, match=rf"^{re.escape(str(zoo))} has class folder\(s\) "
                                        r"\['zebra'\] that the model does not have .* Its 1 "
                                        r"image file\(s\) outside any class folder have no "
                                        r"label: to classify unlabelled images, use `imgclf "
                                        r"predict RUN FOLDER`\.$"):
        evaluate_folder(run, zoo, out=out)


def test_evaluate_errors(trained, tmp_path, make_image_folder, capsys):
    run, data = trained
    unknown = make_image_folder(tmp_path / "zoo", {"zebra": 2}, size=(32, 32), seed=12)
    with pytest.raises(DataError, match=r"\['zebra'\] that the model does not have"):
        evaluate_folder(run, unknown, out=tmp_path / "y")
    assert main(["evaluate", str(tmp_path / "norun"), str(data)]) == 2
    assert "error:" in capsys.readouterr().err


# --- test-time augmentation chosen at training time -------------------------------------------


class BrightnessAndSide(torch.nn.Module):
    """Two classes; the logit of "bright" minus "dark" is the image's mean grey level less
    128, plus its right half's mean less its left half's. A mirror image flips the second
    term only, so averaging an image with its mirror leaves the first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.float().mean(1)
        half = grey.shape[-1] // 2
        left, right = grey[..., :half].mean((1, 2)), grey[..., half:].mean((1, 2))
        d = (grey.mean((1, 2)) - 128) + right - left
        return torch.stack([-d, d], 1) / 20


def halves(pairs: list[tuple[int, int]]) -> np.ndarray:
    """8x8 images whose left and right halves have the given grey levels."""
    images = np.zeros((len(pairs), 8, 8, 3), dtype=np.uint8)
    for image, (left, right) in zip(images, pairs, strict=True):
        image[:, :4], image[:, 4:] = left, right
    return images


# Left and right grey levels: the first two images are misled by their sides alone.
PAIRS = [(200, 100), (50, 150), (200, 200), (60, 60)]
BRIGHT = np.array([1, 0, 1, 0])  # mean grey level over 128


def test_auto_tta_is_kept_when_the_mirror_raises_validation_accuracy():
    use, check = choose_tta("auto", BrightnessAndSide(), halves(PAIRS), BRIGHT,
                            resolve_runtime("cpu", "off", channels_last=False))
    assert check == {"accuracy": 0.5, "accuracy_tta": 1.0}
    assert use is True


def test_auto_tta_is_dropped_when_the_mirror_lowers_validation_accuracy():
    """Labelled by what the plain model says, which the mirror contradicts on two images."""
    plain = np.array([0, 1, 1, 0])
    use, check = choose_tta("auto", BrightnessAndSide(), halves(PAIRS), plain,
                            resolve_runtime("cpu", "off", channels_last=False))
    assert check == {"accuracy": 1.0, "accuracy_tta": 0.5}
    assert use is False


@pytest.mark.parametrize("setting", ["on", "off"])
def test_tta_on_and_off_are_taken_as_said(setting):
    use, check = choose_tta(setting, BrightnessAndSide(), halves(PAIRS), BRIGHT,
                            resolve_runtime("cpu", "off", channels_last=False))
    assert (use, check) == (setting == "on", None)


@pytest.fixture(scope="module")
def trained_with_tta(trained, tmp_path_factory):
    """The tiny run again, trained with ``train.tta: on``."""
    from conftest import single_thread

    _, data = trained
    root = tmp_path_factory.mktemp("predict-tta")
    with pytest.MonkeyPatch.context() as mp, single_thread():
        mp.setenv("IMGCLF_CACHE_DIR", str(root / "cache"))
        run = imgclf.train(data, out=root / "run", model={"img_size": 32},
                           train={"epochs": 1, "amp": "off", "device": "cpu", "tta": "on"})
    return run, data


def test_a_run_trained_with_tta_evaluates_and_predicts_with_it(trained_with_tta, tmp_path):
    run, data = trained_with_tta
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tta"] is True and metrics["tta_validation"] is None
    images = [data / "test"]
    predictor = Predictor(run, device="cpu")
    by_default = np.array([p.probs for p in predictor.predict(images)])
    mirrored = np.array([p.probs for p in predictor.predict(images, tta=True)])
    plain = np.array([p.probs for p in predictor.predict(images, tta=False)])
    np.testing.assert_array_equal(by_default, mirrored)
    assert not np.allclose(by_default, plain, atol=1e-5)
    # The command line follows the run unless told otherwise.
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "a"), "-q"]) == 0
    assert main(["evaluate", str(run), str(data), "--out", str(tmp_path / "b"), "--no-tta",
                 "-q"]) == 0
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["tta"] is True
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["tta"] is False
    assert main(["predict", str(run), str(data / "test"), "--out", str(tmp_path / "p.csv"),
                 "--no-tta", "-q"]) == 0
    _, rows = read_csv(tmp_path / "p.csv")
    by_path = {Path(p.path).resolve(): p for p in predictor.predict(images, tta=False)}
    assert len(rows) == len(by_path) == 6
    for row in rows:
        expected = by_path[Path(row["path"]).resolve()].probs
        np.testing.assert_allclose([float(row[c]) for c in CLASSES], expected, atol=1e-5)


def test_auto_tta_records_the_validation_check_and_its_choice(trained, tmp_path):
    _, data = trained
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
        run = imgclf.train(data, out=tmp_path / "run", model={"img_size": 32},
                           train={"epochs": 1, "amp": "off", "device": "cpu", "tta": "auto"})
    metrics = json.loads((run / "metrics.json").read_text())
    check = metrics["tta_validation"]
    assert set(check) == {"accuracy", "accuracy_tta"}
    assert metrics["tta"] is (check["accuracy_tta"] > check["accuracy"])
    assert Predictor(run, device="cpu").tta is metrics["tta"]


def test_evaluating_a_split_without_some_class_warns_how_it_counts(trained, tmp_path, caplog):
    run, data = trained
    subset = tmp_path / "subset"
    for name in CLASSES[1:]:
        shutil.copytree(data / "test" / name, subset / name)
    caplog.set_level(logging.WARNING, logger="imgclf")
    metrics, _ = imgclf.evaluate(run, subset, out=tmp_path / "evaluated", device="cpu")
    assert metrics["per_class"][CLASSES[0]]["support"] == 0
    counted = metrics["per_class"][CLASSES[0]]["fp"] > 0  # predicted for some image
    way = "(predicted for some images) counts with recall and F1 of 0" if counted else \
        "is left out"
    assert (f"split has no images of {CLASSES[0]}: in the macro averages {CLASSES[0]} {way} "
            "(balanced accuracy leaves them all out)") in caplog.text
    recalls = [metrics["per_class"][c]["recall"] for c in CLASSES[1:]]
    if not counted:  # the macro average runs over the classes present alone
        assert metrics["recall_macro"] == pytest.approx(sum(recalls) / len(recalls))
    metrics, _ = imgclf.evaluate(run, data, split="train", out=tmp_path / "train",
                                 device="cpu")
    assert "note" not in metrics  # the note is training's, on its validation split


def test_classes_named_like_columns_get_columns_of_their_own(tmp_path, make_image_folder,
                                                            caplog):
    from imgclf.report import write_report

    classes = {"error": 6, "label": 6, "path": 6}
    make_image_folder(tmp_path / "data" / "train", classes, size=(32, 32), seed=0)
    make_image_folder(tmp_path / "data" / "test", dict.fromkeys(classes, 2), size=(32, 32),
                      seed=1)
    run = imgclf.train(tmp_path / "data", out=tmp_path / "run", model={"img_size": 32},
                       train={"epochs": 1, "tta": "off"})
    probabilities = ["error (probability)", "label (probability)", "path (probability)"]
    with open(run / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "predicted", "confidence", *probabilities]
    for row in rows:
        assert Path(row["path"]).parent.name == row["label"]
        assert sum(float(row[c]) for c in probabilities) == pytest.approx(1, abs=1e-5)
    out = Predictor(run).write(Predictor(run).predict(tmp_path / "data" / "test"),
                               tmp_path / "p.csv")
    with open(out, newline="") as fh:
        assert next(csv.reader(fh)) == ["path", "predicted", "confidence", *probabilities,
                                        "error"]
    # The report reads the classes back by their names: it draws the ROC curves again.
    (run / "roc_curves.png").unlink()
    write_report(run)
    assert "cannot be drawn again" not in caplog.text


def test_predicts_batch_size_is_the_models_batch(trained, tmp_path):
    run, data = trained
    image = next((data / "test").rglob("*.png"))
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(70):  # more than the inference batch of evaluation
        shutil.copy(image, folder / f"{i:03d}{image.suffix}")
    predictor = imgclf.load(run, device="cpu")
    batches = []
    predictor.model.register_forward_hook(lambda module, args, out: batches.append(len(out)))
    assert len(predictor.predict(folder, batch_size=70)) == 70
    assert batches == [70]
    batches.clear()
    predictor.predict(folder, batch_size=32)
    assert batches == [32, 32, 6]


def test_an_evaluations_predictions_name_images_as_reached_not_through_followed_links(
        trained, tmp_path, monkeypatch):
    run, data = trained
    linked = tmp_path / "linked"
    linked.symlink_to(data, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    _, out = evaluate_folder(run, "linked", out=tmp_path / "ev")
    with open(out / "predictions.csv", newline="") as fh:
        paths = [row["path"] for row in csv.DictReader(fh)]
    assert paths and all(p.startswith(str(linked / "test") + os.sep) for p in paths)
    assert all(Path(p).is_file() for p in paths)


def test_an_evaluation_of_one_class_still_writes_its_roc_figure(trained, tmp_path):
    run, data = trained
    one = tmp_path / "one"
    shutil.copytree(data / "test" / CLASSES[0], one / CLASSES[0])
    metrics, out = evaluate_folder(run, one, out=tmp_path / "ev")
    assert metrics["n_samples"] == 2
    assert Image.open(out / "roc_curves.png").size[0] > 100


def test_predicts_batch_size_is_checked_before_the_model_loads(trained, monkeypatch, capsys):
    run, data = trained

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("imgclf.predict.Predictor.__init__", load)
    assert main(["predict", str(run), str(data / "test"), "--batch-size", "0"]) == 2
    assert "batch size must be a whole number, at least 1, got 0" in capsys.readouterr().err


def test_an_evaluation_is_never_written_into_the_runs_own_folder(trained, tmp_path):
    run, data = trained
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RunError, match=rf"{re.escape(str(run))} is the run's own folder; an "
                                       rf"evaluation goes into a folder of its own: leave out "
                                       rf"--out for {re.escape(str(run / 'evaluate-test'))}"):
        evaluate_folder(run, data, out=run)
    assert sorted(p.name for p in run.iterdir()) == before
