"""Tests for imgclf.export: ONNX and TorchScript files that match PyTorch, and OnnxPredictor.

One tiny run is trained per module (2 colour classes of 32 px images, one epoch); timm
backbones are checked on fake run folders holding randomly initialised weights.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch

import imgclf
from imgclf.cli import export as export_cli
from imgclf.cli import predict as predict_cli
from imgclf.cli.main import main
from imgclf.config import build_config
from imgclf.engine.checkpoints import save_atomic
from imgclf.engine.trainer import checkpoint_meta
from imgclf.errors import ConfigError, RunError
from imgclf.export import OnnxPredictor, export_model, sidecar_path
from imgclf.models.factory import create_model
from imgclf.predict import Predictor, load_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CLASSES = {"red": 8, "cyan": 8}




@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """(run folder, test images folder) of a tiny scratch run; trained once per module,
    with mirror-image test-time augmentation on, which the exports must carry."""
    from conftest import write_image_folder

    root = tmp_path_factory.mktemp("export")
    write_image_folder(root / "data" / "train", CLASSES, size=(32, 32), seed=0)
    write_image_folder(root / "data" / "test", {"red": 3, "cyan": 3}, size=(32, 32), seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLF_CACHE_DIR", str(root / "cache"))
        torch.set_num_threads(1)
        run = imgclf.train(str(root / "data"), method="scratch", out=str(root / "run"),
                           model={"img_size": 32},
                           train={"epochs": 1, "device": "cpu", "tta": "on"})
    return run, root / "data" / "test"


@pytest.fixture(scope="module")
def onnx_run(trained):
    """The trained run with model.onnx exported (with the numerical check)."""
    run, _ = trained
    export_model(run, "onnx")
    return run


def run_cli(module, argv: list[str]) -> int:
    """Parse ``argv`` with one subcommand module's parser and run it."""
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def pixels(batch: int, size: int, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size),
                         generator=torch.Generator().manual_seed(seed)).float()


def fake_run(root, name: str, img_size: int):
    """A run folder whose model.pt holds a random-init ``name``, saved as the trainer does."""
    model, prep, _ = create_model(name, 3, img_size=img_size, pretrained=False)
    config = build_config("transfer", None, {"model": {"name": name, "img_size": img_size}})
    meta = checkpoint_meta(config, ["a", "b", "c"], prep, "random")
    root.mkdir(parents=True)
    save_atomic(dict(meta, model=model.state_dict()), root / "model.pt")
    return root


def test_onnx_export_matches_pytorch(onnx_run):
    path = onnx_run / "model.onnx"
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    info = json.loads(sidecar_path(path).read_text())
    assert info["classes"] == sorted(CLASSES)
    assert info["preprocessing"]["img_size"] == 32
    assert info["check_max_abs_diff"] <= 1e-4
    assert "decode_image" in info["input"]["decoding"]  # how a caller makes its inputs

    model, *_ = load_model(onnx_run)
    x = pixels(5, 32)  # a batch size never traced: the batch axis must be dynamic
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches_pytorch(trained, tmp_path):
    run, _ = trained
    out = export_model(run, "torchscript", out=tmp_path / "sub" / "clf.pt")
    assert out == tmp_path / "sub" / "clf.pt"
    assert json.loads((tmp_path / "sub" / "clf.pt.json").read_text())["format"] == "torchscript"
    model, *_ = load_model(run)
    x = pixels(4, 32)
    with torch.no_grad():
        np.testing.assert_allclose(torch.jit.load(str(out))(x).numpy(), model(x).numpy(),
                                   atol=1e-4)


@pytest.mark.parametrize("tta", [None, False, True])  # None: as the run was trained to
def test_onnx_predictor_matches_predictor(onnx_run, trained, tmp_path, tta):
    _, test_dir = trained
    images = shutil.copytree(test_dir, tmp_path / "images")
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    expected = Predictor(onnx_run, device="cpu").predict([images], batch_size=4, tta=tta)
    predictor = OnnxPredictor(onnx_run, threads=1)
    got = predictor.predict([images], batch_size=4, tta=tta)

    assert predictor.classes == sorted(CLASSES)
    assert [p.path for p in got] == [p.path for p in expected]
    assert [p.predicted for p in got] == [p.predicted for p in expected]
    assert [p.error for p in got] == [p.error for p in expected]
    assert sum(p.error is not None for p in got) == 1
    good = [(g, e) for g, e in zip(got, expected, strict=True) if g.error is None]
    np.testing.assert_allclose(np.stack([g.probs for g, _ in good]),
                               np.stack([e.probs for _, e in good]), atol=1e-4)

    predictor.write(got, tmp_path / "onnx.csv")
    with open(tmp_path / "onnx.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["path", "predicted", "confidence", *sorted(CLASSES), "error"]


def test_predict_cli_onnx_engine(onnx_run, trained, tmp_path):
    _, test_dir = trained
    out = tmp_path / "preds.csv"
    assert run_cli(predict_cli, ["predict", str(onnx_run), str(test_dir), "--engine", "onnx",
                                 "--out", str(out)]) == 0
    with open(out, newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 6


@pytest.mark.parametrize("checkpoint", ["model.pt", "best.pt"])  # finished, or still training
def test_missing_onnx_says_how_to_export(trained, tmp_path, checkpoint):
    run, _ = trained
    bare = tmp_path / "bare run"  # the command to copy quotes it
    bare.mkdir()
    shutil.copy(run / checkpoint, bare / checkpoint)
    with pytest.raises(RunError, match=rf"has no model\.onnx; create it with `imgclf export "
                                       rf"'{re.escape(str(bare))}' --format onnx`"):
        OnnxPredictor(bare)


def test_a_run_whose_export_is_named_otherwise_points_to_it(onnx_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.pt", "config.yaml"):
        shutil.copy(onnx_run / name, run / name)
    shutil.copy(onnx_run / "model.onnx", run / "Model.ONNX")  # `export --out RUN/Model.ONNX`
    with pytest.raises(RunError, match=r"has no model\.onnx; create it with .*, or give the "
                                       rf"export it holds itself "
                                       rf"\({re.escape(str(run / 'Model.ONNX'))}\)\."):
        OnnxPredictor(run)


def test_an_export_named_in_capitals_is_used(onnx_run, trained, tmp_path):
    named = tmp_path / "MODEL.ONNX"
    shutil.copy(onnx_run / "model.onnx", named)
    shutil.copy(sidecar_path(onnx_run / "model.onnx"), sidecar_path(named))
    predictor = OnnxPredictor(named, threads=1)
    assert predictor.predict_arrays(np.zeros((1, 32, 32, 3), np.uint8)).shape == \
        (1, len(predictor.classes))


def test_onnx_predictor_rejects_a_checkpoint_file(trained):
    with pytest.raises(RunError, match=r"model\.pt is not an ONNX file"):
        OnnxPredictor(trained[0] / "model.pt")


def test_missing_sidecar_is_reported(onnx_run, tmp_path):
    lone = tmp_path / "model.onnx"
    shutil.copy(onnx_run / "model.onnx", lone)
    with pytest.raises(RunError, match=r"model\.onnx\.json .* is missing"):
        OnnxPredictor(lone)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("model.onnx", "junk\n", "ONNX Runtime cannot load {file}: it is damaged or not an "
                                 "ONNX model ([ONNXRuntimeError] : 7 : INVALID_PROTOBUF"),
        ("model.onnx.json", "{\n", "{file} is not valid JSON (Expecting property name"),
        ("model.onnx.json", "[]\n", "{file} holds list, not a mapping of the classes"),
        ("model.onnx.json", "{}\n", "{file} lacks the classes or preprocessing of model.onnx"),
    ],
    ids=["onnx", "sidecar-not-json", "sidecar-list", "sidecar-empty"],
)
def test_a_damaged_export_is_named_with_the_fix(onnx_run, trained, tmp_path, capsys, name,
                                                text, message):
    run = shutil.copytree(onnx_run, tmp_path / "run")
    (run / name).write_text(text)
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(trained[1]), "--engine", "onnx", "--out", str(out),
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.format(file=run / name)}")
    assert err.endswith(f"export again with `imgclf export {run} --format onnx`.\n")
    assert err.count("\n") == 1 and not out.exists()


def test_failed_check_writes_nothing(trained, tmp_path, monkeypatch):
    run, _ = trained
    monkeypatch.setattr("imgclf.export.TOLERANCE", -1.0)
    out = tmp_path / "model.torchscript.pt"
    with pytest.raises(RunError, match=r"differ from PyTorch's by up to .*not saved"):
        export_model(run, "torchscript", out=out)
    assert list(tmp_path.iterdir()) == []


def test_an_unfinished_run_is_not_exported(trained, tmp_path):
    # As an interrupted run leaves its folder: best.pt and last.pt, no model.pt (nor exports).
    run = shutil.copytree(trained[0], tmp_path / "run", ignore=shutil.ignore_patterns("model.*"))
    with pytest.raises(RunError, match=r"best\.pt is a checkpoint saved during training, not "
                                       r"the final model\.pt .*imgclf train --resume --out"):
        export_model(run, "onnx")
    with pytest.raises(RunError, match=r"last\.pt is a checkpoint saved during training"):
        export_model(run / "last.pt", "torchscript", out=tmp_path / "m.pt")
    assert not (run / "model.onnx").exists() and not (tmp_path / "m.pt").exists()


def test_unknown_format(trained):
    with pytest.raises(ConfigError, match=r"'tflite' is not known; choose one of onnx, "
                                          r"torchscript"):
        export_model(trained[0], "tflite")


def test_cli_export(trained, tmp_path):
    out = tmp_path / "m.onnx"
    assert run_cli(export_cli, ["export", str(trained[0]), "--out", str(out), "--no-check"]) == 0
    assert out.exists() and sidecar_path(out).exists()
    assert json.loads(sidecar_path(out).read_text())["check_max_abs_diff"] is None


@pytest.mark.parametrize("name", ["mobilenetv2_100", "tf_efficientnet_lite0"])
def test_timm_backbone_exports_to_onnx(name, tmp_path):
    """timm nets export and match PyTorch (lite0: TF-"same" padding)."""
    run = fake_run(tmp_path / "run", name, img_size=64)
    path = export_model(run, "onnx")  # the check compares with PyTorch on 3 images
    probs = OnnxPredictor(run, threads=1).predict_arrays(
        np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), tta=True)
    assert path == run / "model.onnx"
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_tf_same_padding_is_exported_fixed(tmp_path):
    """Lite0's TF-"same" padding is exported as fixed amounts (no shape arithmetic in the
    graph), which ONNX Runtime folds into the convolutions; the check still matches."""
    run = fake_run(tmp_path / "run", "tf_efficientnet_lite0", img_size=64)
    path = export_model(run, "onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Pad" in ops
    assert not ops & {"Shape", "Ceil", "Gather"}, ops
    # the model in the run keeps its shape-driven padding, for inputs of any size
    model, _, _, _ = load_model(run / "model.pt")
    assert model(pixels(1, 80)).shape == (1, 3)


def test_export_refuses_the_runs_own_files_and_the_dataset(trained, tmp_path):
    run, test_images = trained
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    other = shutil.copytree(run, tmp_path / "other")
    others = sorted((p.name, p.read_bytes()) for p in other.iterdir() if p.is_file())
    for fmt, out, message in (
            ("torchscript", run / "model.pt", "would replace the model.pt that imgclf wrote"),
            ("onnx", run / "metrics.json", r"is written as \.onnx"),
            ("torchscript", tmp_path / "m.onnx", r"is written as \.pt or \.pth or \.ts"),
            ("onnx", other / "model.onnx", f"would be inside {other}, the folder of another run"),
            ("onnx", other / "sub" / "m.onnx", f"would be inside {other}, the folder of another"),
            ("onnx", test_images / "m.onnx", "would be inside the dataset"),
            ("onnx", tmp_path, "is a folder: give a file name such as")):
        with pytest.raises(ConfigError, match=message):
            export_model(run, fmt, out)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted((p.name, p.read_bytes()) for p in other.iterdir() if p.is_file()) == others
    assert not (test_images / "m.onnx").exists()


def test_export_never_writes_over_a_users_files(trained, tmp_path):
    run, _ = trained
    mine, sidecar = tmp_path / "my.onnx", tmp_path / "my.onnx.json"
    mine.write_text("user\n")
    sidecar.write_text("user sidecar\n")
    # A run whose model.onnx is the user's, and a sidecar of the user's without its model.
    bare = shutil.copytree(run, tmp_path / "e", ignore=shutil.ignore_patterns("model.onnx*"))
    (bare / "model.onnx").write_text("user\n")
    lone = tmp_path / "lone.pt.json"
    lone.write_text("{}\n")
    # imgclf's sidecar beside a model that is not an export (the format tells it).
    swapped = tmp_path / "swapped.onnx"
    export_model(run, "onnx", swapped, check=False)
    swapped.write_text("user\n")
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for source, fmt, out, refused in (
            (run, "onnx", mine, mine), (bare, "onnx", None, bare / "model.onnx"),
            (run, "torchscript", tmp_path / "lone.pt", lone), (run, "onnx", swapped, swapped)):
        with pytest.raises(ConfigError, match=f"{refused} exists and is not an (exported model|"
                                              "export's sidecar) that imgclf wrote"):
            export_model(source, fmt, out, check=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == kept
    assert not (tmp_path / "lone.pt").exists()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_writes_over_its_own_files(trained, tmp_path, fmt):
    run = shutil.copytree(trained[0], tmp_path / "run",
                          ignore=shutil.ignore_patterns("model.onnx*", "model.torchscript*"))
    for _ in range(2):
        path = export_model(run, fmt, check=False)
        assert run_cli(export_cli, ["export", str(run), "--format", fmt, "--out",
                                    str(tmp_path / f"m{path.suffix}"), "--no-check"]) == 0
    assert json.loads(sidecar_path(path).read_text())["file"] == path.name


def test_a_copied_export_without_its_sidecar_points_to_its_run_folder(onnx_run, trained,
                                                                      tmp_path, capsys):
    away = tmp_path / "away"
    away.mkdir()
    shutil.copy(onnx_run / "model.onnx", away / "m.onnx")  # the sidecar left behind
    assert main(["predict", str(away / "m.onnx"), str(trained[1]), "--engine", "onnx",
                 "--out", str(tmp_path / "p.csv"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {away / 'm.onnx.json'} (classes and preprocessing of "
                          "m.onnx) is missing; export again from its run folder (`imgclf "
                          "export RUN_DIR --format onnx --out FILE`), or copy the sidecar")


def test_a_folder_that_is_no_run_is_told_to_give_the_onnx_file(onnx_run, trained, tmp_path,
                                                                 capsys):
    away = tmp_path / "away"
    away.mkdir()
    shutil.copy(onnx_run / "model.onnx", away / "m.onnx")
    assert main(["predict", str(away), str(trained[1]), "--engine", "onnx",
                 "--out", str(tmp_path / "p.csv"), "-q"]) == 2
    assert capsys.readouterr().err == (f"error: {away} is not a run folder and has no "
                                       "model.onnx: give the .onnx file itself, or the folder "
                                       "of the run it was exported from.\n")

