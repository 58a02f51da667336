"""Tests for imgclf.data.audit and the ``imgclf audit`` command module."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from imgclf.cli import audit as audit_cli
from imgclf.data import audit
from imgclf.data.audit import audit_dataset, format_audit, hamming_pairs, perceptual_hash
from imgclf.data.prepare import prepare_data
from imgclf.errors import ConfigError, DataError

# --- perceptual hash and the near-duplicate search ---------------------------------------------


def _photo_like(seed: int, size: int = 96) -> Image.Image:
    """Smooth random structure (blurred noise), more like a photo than pixel noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def _thumb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))


def _distance(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def test_phash_is_stable_under_small_changes_and_far_for_other_images():
    image = _photo_like(0)
    base = perceptual_hash(_thumb(image))
    brighter = ImageEnhance.Brightness(image).enhance(1.1)
    resized = image.resize((70, 70)).resize((96, 96))
    for variant in (brighter, resized):
        assert _distance(base, perceptual_hash(_thumb(variant))) <= audit.NEAR_DUPLICATE_DISTANCE
    others = [perceptual_hash(_thumb(_photo_like(seed))) for seed in range(1, 21)]
    assert min(_distance(base, other) for other in others) > audit.NEAR_DUPLICATE_DISTANCE
    assert bin(base).count("1") == 32  # split at the median


def test_phash_accepts_grayscale_and_skips_flat_images():
    gray = np.asarray(_photo_like(3).convert("L").resize((32, 32)))
    assert perceptual_hash(gray) == perceptual_hash(np.stack([gray] * 3, axis=-1))
    assert perceptual_hash(np.full((32, 32, 3), 200, dtype=np.uint8)) is None
    with pytest.raises(ValueError, match="needs a 32x32 image, got shape"):
        perceptual_hash(np.zeros((16, 16)))


@pytest.mark.parametrize("without_bitwise_count", [False, True])
def test_hamming_pairs_matches_brute_force(monkeypatch, without_bitwise_count):
    if without_bitwise_count:
        monkeypatch.delattr(np, "bitwise_count", raising=False)
    monkeypatch.setattr(audit, "_PAIR_BLOCK", 500)  # many blocks, uneven last one
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, 90, dtype=np.uint64)
    b = rng.integers(0, 2**63, 40, dtype=np.uint64)
    b[:5] = a[10:15] ^ np.uint64(0b1011)  # 3 bits away
    i, j, d = hamming_pairs(a, b, 12)
    expected = {(x, y, _distance(int(a[x]), int(b[y])))
                for x in range(len(a)) for y in range(len(b))
                if _distance(int(a[x]), int(b[y])) <= 12}
    assert set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == expected
    assert {(10 + k, k, 3) for k in range(5)} <= expected
    assert [len(x) for x in hamming_pairs(a, b[:0], 12)] == [0, 0, 0]


def test_hamming_pairs_at_dataset_scale():
    # The size of Intel Scenes (8741 train x 1597 test): five planted near copies.
    rng = np.random.default_rng(1)
    train = rng.integers(0, 2**63, 8741, dtype=np.uint64) | np.uint64(1 << 63)
    test = rng.integers(0, 2**63, 1597, dtype=np.uint64)
    planted = [(17, 3), (4000, 800), (8740, 1596), (5, 1000), (6000, 0)]
    for k, (x, y) in enumerate(planted):
        test[y] = train[x] ^ np.uint64((1 << k) - 1)
    i, j, d = hamming_pairs(train, test, audit.NEAR_DUPLICATE_DISTANCE)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == sorted(planted)
    assert sorted(d.tolist()) == [0, 1, 2, 3, 4]


# --- the audit of a folder full of awkward files ------------------------------------------------


def test_bad_folder_every_problem_listed_once(bad_image_folder, bad_image_cases, capsys):
    report = audit_dataset(bad_image_folder, workers=2)
    assert capsys.readouterr().out == ""  # library code logs, never prints
    json.dumps(report, allow_nan=False)

    unreadable = {r["path"]: r["reason"] for r in report["unreadable"]}
    assert len(unreadable) == len(report["unreadable"])
    assert set(unreadable) == set(bad_image_cases.unreadable)
    for rel, pattern in bad_image_cases.unreadable.items():
        assert re.search(pattern, unreadable[rel]), (rel, unreadable[rel])
    skipped = {r["path"]: r["reason"] for r in report["skipped"]}
    assert len(skipped) == len(report["skipped"])
    assert set(skipped) == set(bad_image_cases.ignored)
    for rel, pattern in bad_image_cases.ignored.items():
        assert re.search(pattern, skipped[rel]), (rel, skipped[rel])

    mismatches = {r["path"]: (r["extension"], r["format"]) for r in report["extension_mismatches"]}
    assert mismatches == {"odd/png_named.jpg": (".jpg", "PNG")}

    assert report["layout"] == "single"
    assert report["classes"] == ["broken", "odd"]
    train = report["splits"]["train"]
    assert train["path"] == "."
    assert train["classes"] == {"broken": 1, "odd": 13}
    assert train["images"] == len(bad_image_cases.decodable) == 14
    assert (train["unreadable"], train["skipped"]) == (4, 5)
    assert train["imbalance_ratio"] == report["imbalance_ratio"] == 13.0
    assert train["width"] == {"min": 16, "median": 20, "max": 5000}  # (16 + 24) / 2
    assert {"RGB", "P", "L", "LA", "RGBA", "CMYK", "I;16"} <= set(train["modes"])
    assert train["formats"] == {"PNG": 7, "JPEG": 6, "GIF": 1}
    assert train["common_sizes"][0] == {"size": "16x16", "count": 7}


def test_bad_folder_terminal_report(bad_image_folder):
    text = format_audit(audit_dataset(bad_image_folder))
    assert "Images per class" in text
    assert re.search(r"odd\s+13", text)
    assert "odd/png_named.jpg: named .jpg, is PNG" in text
    assert "Unreadable files: 4" in text
    assert re.search(r"broken/truncated.jpg: truncated", text)
    assert "Skipped files (hidden, system, not images): 5" in text
    assert "4 x hidden or system file" in text
    assert "Exact duplicates (identical files): none" in text


# --- duplicates and leakage across splits --------------------------------------------------------


@pytest.fixture
def leaky(tmp_path, make_image_folder):
    """train/ and test/ with each kind of duplicate planted, plus an unlabelled seg_pred/."""
    root = tmp_path / "data"
    train = make_image_folder(root / "train", {"cat": 6, "dog": 4}, size=(32, 32), seed=0)
    test = make_image_folder(root / "test", {"cat": 3, "dog": 3}, size=(32, 32), seed=1)
    shutil.copy(train / "cat" / "cat_000.jpg", test / "cat" / "leak_same.jpg")
    shutil.copy(train / "cat" / "cat_001.png", test / "dog" / "leak_other.png")
    shutil.copy(train / "dog" / "dog_000.jpg", train / "cat" / "conflict.jpg")
    shutil.copy(train / "dog" / "dog_001.png", train / "dog" / "again.png")
    # A near copy: re-encoded as JPEG, slightly brighter and softer.
    near = Image.open(train / "dog" / "dog_003.png").resize((28, 28)).resize((32, 32))
    ImageEnhance.Brightness(near).enhance(1.05).save(test / "dog" / "near.jpg", quality=90)
    (root / "pred").mkdir()
    for name in ("a.jpg", "b.png"):
        shutil.copy(train / "cat" / "cat_002.jpg", root / "pred" / name)
    (root / "pred" / "notes.txt").write_text("x")
    return root


def _paths(group: dict) -> list[str]:
    return sorted(f"{f['split']}:{f['path']}" for f in group["files"])


def test_exact_duplicates_within_across_and_between_classes(leaky):
    report = audit_dataset(leaky)
    dups = report["exact_duplicates"]
    across = {tuple(_paths(g)): g["same_class"] for g in dups["across_splits"]}
    assert across == {
        ("test:test/cat/leak_same.jpg", "train:train/cat/cat_000.jpg"): True,
        ("test:test/dog/leak_other.png", "train:train/cat/cat_001.png"): False,
    }
    assert all(g["splits"] == ["train", "test"] for g in dups["across_splits"])
    conflicts = sorted(_paths(g) for g in dups["label_conflicts"])
    assert conflicts == [
        ["test:test/dog/leak_other.png", "train:train/cat/cat_001.png"],
        ["train:train/cat/conflict.jpg", "train:train/dog/dog_000.jpg"],
    ]
    within = sorted((g["split"], g["classes"], _paths(g)) for g in dups["within_split"])
    assert within == [
        ("train", ["cat", "dog"], ["train:train/cat/conflict.jpg", "train:train/dog/dog_000.jpg"]),
        ("train", ["dog"], ["train:train/dog/again.png", "train:train/dog/dog_001.png"]),
    ]
    # The text lists each group once: the conflict within train is not repeated below.
    text = format_audit(report)
    assert text.count("train:train/cat/conflict.jpg") == 1
    assert text.count("train:train/dog/dog_001.png") == 1
    assert "  within a split: 2 group(s), 1 of them listed above\n" in text
    assert "  across classes (label conflicts): 2 group(s), 1 of them listed above\n" in text


def test_near_duplicates_across_splits_exclude_exact_copies(leaky):
    near = audit_dataset(leaky)["near_duplicates"]
    assert near["checked"] and near["max_distance"] == audit.NEAR_DUPLICATE_DISTANCE
    assert near["found"] == len(near["pairs"]) == 1
    pair = near["pairs"][0]
    assert (pair["a"]["path"], pair["b"]["path"]) == ("train/dog/dog_003.png", "test/dog/near.jpg")
    assert pair["same_class"] and 0 <= pair["distance"] <= audit.NEAR_DUPLICATE_DISTANCE
    assert near["different_class"] == 0


def test_split_counts_unlabelled_and_json(leaky):
    report = audit_dataset(leaky, near_duplicates=False)
    assert report["layout"] == "splits"
    assert report["root"] == str(leaky)
    assert report["splits"]["train"]["classes"] == {"cat": 7, "dog": 5}
    assert report["splits"]["test"]["classes"] == {"cat": 4, "dog": 5}
    assert report["imbalance_ratio"] == 1.4
    assert report["unlabelled"] == {"path": "pred", "images": 2, "skipped": 1,
                                    "skipped_reasons": {"not an image (not a recognised image "
                                                        "format)": 1}}
    assert report["near_duplicates"] == {"checked": False}
    assert json.loads(json.dumps(report)) == report
    text = format_audit(report)
    assert "Near-duplicates across splits: not checked" in text
    assert "unlabelled pred/: 2 image(s), 1 skipped" in text
    assert "across splits (leakage), 1 under a different class: 2 group(s)" in text


def test_only_the_kinds_of_duplicate_found_are_listed(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data", {"cat": 3, "dog": 3}, size=(24, 24))
    shutil.copy(data / "cat" / "cat_000.jpg", data / "cat" / "again.jpg")
    text = format_audit(audit_dataset(data, near_duplicates=False))
    assert "Exact duplicates (identical files)\n  within a split: 1 group(s)\n" in text
    assert "leakage" not in text and "label conflicts" not in text


def test_kaggle_layout_paths_are_relative_to_root(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "seg_train" / "seg_train", {"sea": 3, "street": 2}, seed=0)
    make_image_folder(tmp_path / "seg_test" / "seg_test", {"sea": 1, "street": 1}, seed=1)
    shutil.copy(tmp_path / "seg_train" / "seg_train" / "sea" / "sea_000.jpg",
                tmp_path / "seg_test" / "seg_test" / "street" / "same.jpg")
    report = audit_dataset(tmp_path)
    assert report["splits"]["train"]["path"] == "seg_train/seg_train"
    assert report["splits"]["test"]["path"] == "seg_test/seg_test"
    assert _paths(report["exact_duplicates"]["across_splits"][0]) == [
        "test:seg_test/seg_test/street/same.jpg", "train:seg_train/seg_train/sea/sea_000.jpg"]


def test_layout_notes_are_reported(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "train", seed=0)
    make_image_folder(tmp_path / "backup", seed=1)
    report = audit_dataset(tmp_path, near_duplicates=False)
    assert report["layout_notes"] == [
        "backup/ is not a split folder (train, val, test, pred): ignored"]
    assert "  note: backup/ is not a split folder" in format_audit(report)


def test_run_folders_are_noted_and_skipped(tmp_path, make_image_folder, make_run_folder):
    make_image_folder(tmp_path, {"cat": 2, "dog": 2})
    make_run_folder(tmp_path / "run-x")
    make_run_folder(tmp_path / "dog" / "run-y", "model.pt")
    report = audit_dataset(tmp_path, near_duplicates=False)
    assert report["classes"] == ["cat", "dog"]
    assert report["layout_notes"] == ["run-x/ is an imgclf run folder, not data: ignored"]
    assert report["skipped"] == [{"split": "train", "path": "dog/run-y",
                                  "reason": "imgclf run folder, not data"}]
    assert report["splits"]["train"]["images"] == 4
    text = format_audit(report)
    assert "  note: run-x/ is an imgclf run folder, not data: ignored" in text
    assert "  dog/run-y: imgclf run folder, not data" in text


def test_explicit_split_paths(tmp_path, make_image_folder):
    train = make_image_folder(tmp_path / "a" / "train_set", seed=0)
    test = make_image_folder(tmp_path / "b" / "holdout", {"cat": 2}, seed=1)
    report = audit_dataset(train=train, test=str(test))
    assert report["layout"] == "explicit"
    assert report["root"] == str(tmp_path)
    assert report["splits"]["test"]["path"] == "b/holdout"
    assert report["splits"]["test"]["classes"] == {"cat": 2, "dog": 0}
    assert report["splits"]["test"]["imbalance_ratio"] is None  # a class with no image
    assert "imbalance" in format_audit(report)


def test_unreadable_whole_class_gives_no_imbalance(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"cat": 2, "dog": 1}, size=(64, 64))
    dog = tmp_path / "dog" / "dog_000.jpg"
    dog.write_bytes(dog.read_bytes()[:-600])  # header intact, pixels cut off
    report = audit_dataset(tmp_path)
    assert report["splits"]["train"]["classes"] == {"cat": 2, "dog": 0}
    assert report["imbalance_ratio"] is None
    assert [r["path"] for r in report["unreadable"]] == ["dog/dog_000.jpg"]
    json.dumps(report, allow_nan=False)


def test_what_training_stops_on_is_listed(tmp_path, make_image_folder, bad_image_folder):
    make_image_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    # found as an image, but it does not decode: the counts below leave it out
    shutil.copy(bad_image_folder / "broken" / "truncated.jpg", tmp_path / "train" / "dog")
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "val" / "cat").mkdir(parents=True)
    report = audit_dataset(tmp_path, near_duplicates=False)
    assert report["problems"] == ["class 'empty' has no readable training image",
                                  "the val split holds no labelled image"]
    assert "  problem (training stops on it): class 'empty' has no readable" in \
        format_audit(report)
    with pytest.raises(DataError, match="holds no readable images"):
        prepare_data(tmp_path)
    from imgclf.cli.main import main

    assert main(["audit", str(tmp_path), "-q"]) == 1  # so `audit && train` stops there
    make_image_folder(tmp_path / "test", {"cat": 1, "alien": 1})
    report = audit_dataset(tmp_path, near_duplicates=False)
    assert "the test split has class folder(s) ['alien'] that the training split does not " \
           "have" in report["problems"]
    assert report["splits"]["test"]["classes"] == {"cat": 1, "dog": 0, "empty": 0, "alien": 1}
    assert report["splits"]["test"]["images"] == 2  # the unknown class is audited too
    # A class that a split lacks is a dash in its column, the counts aligned to the right.
    table = format_audit(report).split("Images per class")[1].splitlines()
    assert [line.split() for line in table[2:6]] == [
        ["cat", "2", "0", "1"], ["dog", "2", "0", "0"], ["empty", "0", "0", "0"],
        ["alien", "-", "-", "1"]]
    assert len({len(line) for line in [table[1], *table[2:6]]}) == 1  # under "test"
    assert report["warnings"] == [
        "class 'cat' has only 2 training image(s); results for it will be unreliable",
        "class 'dog' has only 2 training image(s); results for it will be unreliable",
        f"class folder {tmp_path / 'val' / 'cat'} holds no readable images: the val split has "
        "no image of class 'cat'",
        *(f"{tmp_path / split} has no folder of class {cls!r}: the {split} split has no image "
          f"of class {cls!r}" for split in ("val", "test") for cls in ("dog", "empty"))]
    assert "  warning: class 'cat' has only 2 training image(s); results for it will be " \
        "unreliable" in format_audit(report)
    one = make_image_folder(tmp_path / "one", {"cat": 2})
    report = audit_dataset(one)
    assert report["problems"] == ["one class only ('cat'): a classifier needs at least two"]
    assert "  layout: single; 1 class; 2 image files audited" in format_audit(report)


def test_an_empty_test_class_folder_gets_the_warning_training_logs(tmp_path, make_image_folder,
                                                                   caplog):
    make_image_folder(tmp_path / "train", {"cat": 10, "dog": 10})
    make_image_folder(tmp_path / "test", {"cat": 2})
    (tmp_path / "test" / "dog").mkdir()
    (tmp_path / "test" / "dog" / "notes.txt").write_text("not a picture\n")
    report = audit_dataset(tmp_path, near_duplicates=False)
    assert report["problems"] == []  # training goes on, with a warning
    [warning] = report["warnings"]
    assert re.fullmatch(r"class folder .*dog holds no readable images \(1 file\(s\) skipped: "
                        r"not an image .*\): the test split has no image of class 'dog'", warning)
    assert f"  warning: {warning}\n" in format_audit(report)
    with caplog.at_level(logging.WARNING, logger="imgclf.data.layout"):
        prepare_data(tmp_path)
    assert warning in caplog.messages


def test_long_lists_are_cut_in_the_terminal(tmp_path, make_image_folder, monkeypatch):
    make_image_folder(tmp_path, {"cat": 2})
    for i in range(5):
        (tmp_path / "cat" / f"broken_{i}.jpg").write_bytes(b"")
    monkeypatch.setattr(audit, "MAX_SHOWN", 3)
    text = format_audit(audit_dataset(tmp_path))
    assert "Unreadable files: 5" in text
    assert "... and 2 more (see the JSON report)" in text


def test_errors_are_the_ones_training_raises(tmp_path, make_image_folder):
    with pytest.raises(DataError, match="does not exist"):
        audit_dataset(tmp_path / "missing")
    make_image_folder(tmp_path / "train", {"cat": 2}, seed=0)
    for wrong in (0, 1.5, True):
        with pytest.raises(ConfigError, match=r"workers \(threads reading the files\) must be a "
                                              rf"whole number, at least 1 \(or left out: one per "
                                              rf"CPU core\), got {wrong}"):
            audit_dataset(tmp_path, workers=wrong)


# --- the command module ---------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclf")
    audit_cli.add_parser(parser.add_subparsers())
    return parser


def test_cli_prints_tables_and_writes_json(leaky, tmp_path, capsys):
    out = tmp_path / "reports" / "audit.json"
    args = _parser().parse_args(["audit", str(leaky), "--json", str(out), "--workers", "1"])
    assert args.func is audit_cli.run
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "Images per class" in printed and "Near-duplicates across splits" in printed
    assert f"full report written to {out}" in printed
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["near_duplicates"]["found"] == 1


def test_cli_explicit_splits_without_near_duplicates(leaky, capsys):
    args = _parser().parse_args(["audit", "--train", str(leaky / "train"),
                                 "--test", str(leaky / "test"), "--no-near-duplicates"])
    assert args.data is None and args.near_duplicates is False
    assert audit_cli.run(args) == 0
    assert "Near-duplicates across splits: not checked" in capsys.readouterr().out


def test_cli_every_option_has_help():
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    audit_parser = sub.choices["audit"]
    for action in audit_parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.dest
    assert "near-duplicates" in audit_parser.format_help()


def test_a_class_name_with_spaces_at_an_end_is_quoted_in_the_counts(tmp_path,
                                                                      make_image_folder):
    make_image_folder(tmp_path, {"sea": 3, "sea ": 3})
    text = format_audit(audit_dataset(tmp_path, near_duplicates=False))
    assert re.search(r"^  sea\s+3$", text, re.M) and re.search(r"^  'sea '\s+3$", text, re.M)
    assert "the class folders 'sea', 'sea ' in" in text
