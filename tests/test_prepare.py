"""Tests for imgclf.data.prepare: from a dataset folder to labelled splits."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import train_test_split

from imgclf.data.cache import load_images
from imgclf.data.decode import file_digest
from imgclf.data.prepare import copies_of_training_images, decode_split, prepare_data
from imgclf.errors import DataError, RunError
from imgclf.paths import cache_dir


def test_notes_about_the_layout_are_warned(tmp_path, make_image_folder, caplog):
    make_image_folder(tmp_path / "train", {"cat": 10, "dog": 10})
    (tmp_path / "test").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "test" / "0001.png")
    with caplog.at_level(logging.WARNING, logger="imgclf.data.prepare"):
        data = prepare_data(tmp_path)
    assert list(data.splits) == ["train", "val"]
    assert data.layout.unlabelled == tmp_path / "test"
    note = "test/ holds no class folders: its images are taken as unlabelled, for imgclf predict"
    assert note in caplog.text and note in data.warnings
    assert data.found == "found train/ (20 images, 2 classes), test/ (unlabelled, for predict)"


def test_a_run_folder_in_the_data_is_warned_and_not_learnt(tmp_path, make_image_folder,
                                                          make_run_folder, caplog):
    make_image_folder(tmp_path, {"cat": 10, "dog": 10})
    make_run_folder(tmp_path / "run-x")  # left there by an older imgclf
    with caplog.at_level(logging.WARNING, logger="imgclf.data.prepare"):
        data = prepare_data(tmp_path)
    assert data.classes == ["cat", "dog"]
    note = "run-x/ is an imgclf run folder, not data: ignored"
    assert note in caplog.text and note in data.warnings


def test_a_split_with_no_labelled_images_is_an_error(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "train")
    (tmp_path / "loose").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "loose" / "0001.png")
    with pytest.raises(DataError, match=r"the test split .*loose holds no labelled images "
                                        r"\(1 file\(s\) skipped: file outside any class folder"):
        prepare_data(train=tmp_path / "train", test=tmp_path / "loose")


def test_the_same_folder_for_two_splits_is_warned(tmp_path, make_image_folder, caplog):
    make_image_folder(tmp_path / "train", {"cat": 10, "dog": 10})
    with caplog.at_level(logging.WARNING, logger="imgclf.data.prepare"):
        prepare_data(train=tmp_path / "train", val=tmp_path / "train")
    assert "the train and val splits are the same folder" in caplog.text


def test_one_class_is_an_error(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"cat": 4})
    with pytest.raises(DataError, match=r"holds one class folder \('cat'\): a classifier "
                                        "needs at least two classes"):
        prepare_data(tmp_path)


def test_validation_split_too_small_to_stratify_is_not_stratified(tmp_path, make_image_folder,
                                                                  caplog):
    make_image_folder(tmp_path, {"a": 3, "b": 3, "c": 3})
    with caplog.at_level(logging.WARNING, logger="imgclf.data.prepare"):
        data = prepare_data(tmp_path, val_fraction=0.2)
    assert "cannot hold every one of 3 classes on both sides" in caplog.text
    assert (len(data.splits["train"]), len(data.splits["val"])) == (7, 2)
    assert set(data.splits["train"].labels) == {0, 1, 2}
    assert not set(data.splits["train"].paths) & set(data.splits["val"].paths)


def test_a_small_validation_fraction_is_named_as_it_is(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"a": 10, "b": 10})
    assert prepare_data(tmp_path, val_fraction=0.125).val_source.startswith("12.5% of train")
    assert prepare_data(tmp_path, val_fraction=0.001).val_source.startswith("0.1% of train")


def test_a_class_with_one_image_keeps_it_for_training(tmp_path, make_image_folder, caplog):
    make_image_folder(tmp_path, {"forest": 30, "sea": 2, "street": 1})
    for seed in range(8):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            data = prepare_data(tmp_path, val_fraction=0.2, seed=seed)
        train, val = data.splits["train"], data.splits["val"]
        assert set(train.labels) == {0, 1, 2}  # every class is learnt
        assert (len(train), len(val)) == (26, 7)
        assert not set(train.paths) & set(val.paths)
        assert "cannot be stratified (some class has a single image)" in caplog.text
        assert "validation: 20% of train (random, one image of each class kept for " \
               "training, seed" in data.summary()
        # street's one image trains: validation cannot judge it, and says so.
        absent = [name for i, name in enumerate(data.classes) if i not in set(val.labels)]
        assert "street" in absent
        assert (f"the validation images hold no image of class(es) {', '.join(absent)}: the "
                "validation figures, and early stopping on them, leave") in caplog.text
        # Small classes are counted as they will be trained on, after the hold-out.
        sea = train.labels.count(1)
        assert f"class 'sea' has only {sea} training image(s)" in caplog.text
    with pytest.raises(DataError, match="has a single image: none is left for validation"):
        prepare_data(make_image_folder(tmp_path / "single", {"a": 1, "b": 1}))


def test_a_large_validation_fraction_leaves_every_class_a_training_image(
        tmp_path, make_image_folder, caplog):
    # Stratified, 80% of 14 images sends both of b's to validation (seed 0): one goes back.
    make_image_folder(tmp_path, {"a": 12, "b": 2})
    with caplog.at_level(logging.INFO, logger="imgclf.data.prepare"):
        data = prepare_data(tmp_path, val_fraction=0.8, seed=0)
    train, val = data.splits["train"], data.splits["val"]
    assert sorted(train.labels) == [0, 1] and sorted(val.labels) == [0] * 11 + [1]
    assert "took every image of 1 class(es): one image of each moved back" in caplog.text
    assert "validation: 80% of train (stratified" in data.summary()
    # Stratification is kept where it can be: many small classes stay on both sides.
    make_image_folder(tmp_path / "many", {"a": 40, "b": 2, "c": 2, "d": 2, "e": 2})
    for seed in range(5):
        data = prepare_data(tmp_path / "many", val_fraction=0.6, seed=seed)
        train, val = data.splits["train"], data.splits["val"]
        assert set(train.labels) == set(val.labels) == {0, 1, 2, 3, 4}
        assert (len(train), len(val)) == (19, 29)


def test_validation_fraction_that_leaves_no_training_image(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"a": 3, "b": 3})
    with pytest.raises(DataError, match="leaves no images on one side of 6 training images"):
        prepare_data(tmp_path, val_fraction=0.95)


def test_stratified_split_is_scikit_learns(tmp_path, make_image_folder):
    # The validation size is rounded up as train_test_split rounds a fraction, so runs
    # made before it was counted in images keep their splits.
    make_image_folder(tmp_path, {"a": 12, "b": 9})
    data = prepare_data(tmp_path, val_fraction=0.2, seed=3)
    labels = [0] * 12 + [1] * 9
    _, val = train_test_split(np.arange(21), test_size=0.2, stratify=labels, random_state=3)
    everything = sorted(data.splits["train"].paths + data.splits["val"].paths)
    assert data.splits["val"].paths == [everything[i] for i in sorted(val)]


def test_copies_of_training_images_are_counted_per_split(tmp_path, make_image_folder):
    root = tmp_path / "data"
    make_image_folder(root / "train", {"a": 4, "b": 4}, size=(24, 24), seed=0)
    make_image_folder(root / "val", {"a": 2, "b": 2}, size=(24, 24), seed=1)
    make_image_folder(root / "test", {"a": 2, "b": 2}, size=(24, 24), seed=2)
    first = sorted((root / "train" / "a").iterdir())[0]
    shutil.copy(first, root / "test" / "b" / "copy.jpg")  # under another class, too
    shutil.copy(first, root / "test" / "a" / "copy.jpg")
    data = prepare_data(root)
    for split in data.splits.values():
        decode_split(split, 24, "bilinear")
    assert copies_of_training_images(data.splits) == {"val": 0, "test": 2}


def test_a_damaged_image_cache_entry_is_decoded_again(tmp_path, make_image_folder, caplog):
    folder = make_image_folder(tmp_path / "data", {"a": 3}, size=(24, 24), seed=0)
    paths = sorted((folder / "a").iterdir())
    fresh = load_images(paths, (24, 24))
    data_file = cache_dir("images") / f"{fresh.key}.npy"
    meta_file = data_file.with_suffix(".json")
    damage = {
        "truncated": lambda: data_file.write_bytes(data_file.read_bytes()[:100]),
        "another shape": lambda: np.save(data_file, np.zeros((2, 5, 5, 3), np.uint8)),
        "another type": lambda: np.save(data_file, np.zeros((3, 24, 24, 3), np.float32)),
        "record not JSON": lambda: meta_file.write_text("{bad"),
        "record without failures": lambda: meta_file.write_text("{}"),
    }
    for how, spoil in damage.items():
        spoil()
        caplog.clear()
        again = load_images(paths, (24, 24))
        assert np.array_equal(again.array, fresh.array), how
        assert f"the cache file {data_file.with_suffix('')}" in caplog.text, how
        assert "is damaged (" in caplog.text and ": computed again" in caplog.text, how
        caplog.clear()
        load_images(paths, (24, 24))  # written anew: a hit again
        assert "damaged" not in caplog.text, how


def test_images_too_many_for_memory_stay_on_disk_when_a_file_fails(tmp_path, make_image_folder,
                                                                    monkeypatch, caplog):
    from imgclf.data import cache

    folder = make_image_folder(tmp_path / "data", {"a": 3}, size=(24, 24), seed=0)
    (folder / "a" / "broken.png").write_bytes(b"not an image")
    paths = sorted((folder / "a").iterdir())
    in_memory = load_images(paths, (24, 24), use_cache=False)
    assert not isinstance(in_memory.array, np.memmap) and len(in_memory.failures) == 1
    monkeypatch.setattr(cache, "_physical_memory", lambda: 1000)  # far too little for them
    for attempt in ("decoded", "from the cache"):
        decoded = load_images(paths, (24, 24))
        assert isinstance(decoded.array, np.memmap), attempt
        assert np.array_equal(decoded.array, in_memory.array), attempt
        assert decoded.paths == in_memory.paths and len(decoded.failures) == 1, attempt

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", disk_full, raising=False)
    with caplog.at_level(logging.WARNING, logger="imgclf"):
        decoded = load_images(paths, (24, 24))
    assert not isinstance(decoded.array, np.memmap)
    assert np.array_equal(decoded.array, in_memory.array)
    assert "could not be copied to disk ([Errno 28] No space left on device): they are read " \
           "into memory instead" in caplog.text


def test_an_interrupted_decoding_leaves_nothing_in_the_cache(tmp_path, make_image_folder,
                                                             monkeypatch):
    from imgclf.data import cache

    folder = make_image_folder(tmp_path / "data", {"a": 3}, size=(24, 24), seed=0)
    paths = sorted((folder / "a").iterdir())

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "_decode_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_images(paths, (24, 24))
    assert list(cache_dir("images").iterdir()) == []
    monkeypatch.undo()
    assert load_images(paths, (24, 24)).array.shape == (3, 24, 24, 3)


@pytest.mark.parametrize("cache_writable", [True, False])
def test_an_image_that_failed_to_decode_is_tried_again(tmp_path, make_image_folder,
                                                       monkeypatch, cache_writable):
    # As when a file is made readable, or a Pillow plugin for its format installed: the
    # file's size and time, and so the cache key, stay as they were.
    from imgclf.data import cache
    from imgclf.data.decode import DecodeError

    folder = make_image_folder(tmp_path / "data", {"a": 3}, size=(24, 24), seed=0)
    paths = sorted((folder / "a").iterdir())
    real_decode = cache.decode_image

    def failing_for_the_second(path, *args):
        if path == paths[1]:
            raise DecodeError(path, "cannot read: Permission denied")
        return real_decode(path, *args)

    with monkeypatch.context() as patched:
        patched.setattr(cache, "decode_image", failing_for_the_second)
        first = load_images(paths, (24, 24))
    assert first.failures == {paths[1]: "cannot read: Permission denied"}
    if not cache_writable:
        monkeypatch.setattr(cache, "cache_writable", lambda folder: False)
    again = load_images(paths, (24, 24))
    whole = load_images(paths, (24, 24), use_cache=False)
    assert again.failures == {} and again.paths == paths and again.digests == whole.digests
    # What is computed from the images (the frozen features) is keyed by what they hold.
    assert first.key != again.key == whole.key
    assert np.array_equal(again.array, whole.array)
    # Written into the cache entry where it can be: read from there next time.
    with monkeypatch.context() as patched:
        patched.setattr(cache, "decode_image", failing_for_the_second)
        third = load_images(paths, (24, 24))
    assert (third.failures == {}) is cache_writable
    if cache_writable:
        assert np.array_equal(third.array, whole.array)


@pytest.mark.parametrize("damage", ["none", "one short"])
def test_an_image_cache_record_without_every_files_digest_is_decoded_again(
        tmp_path, make_image_folder, caplog, damage):
    folder = make_image_folder(tmp_path / "data", {"a": 3}, size=(24, 24), seed=0)
    paths = sorted((folder / "a").iterdir())
    fresh = load_images(paths, (24, 24))
    meta_file = cache_dir("images") / f"{fresh.key}.json"
    meta = json.loads(meta_file.read_text())
    assert meta["digests"] == [file_digest(p) for p in paths] == fresh.digests
    if damage == "none":
        del meta["digests"]
    else:
        meta["digests"].pop()
    meta_file.write_text(json.dumps(meta))
    assert load_images(paths, (24, 24)).digests == fresh.digests
    assert "damaged" in caplog.text
    assert json.loads(meta_file.read_text())["digests"] == fresh.digests


def test_resuming_on_changed_data_names_the_files_that_changed(tmp_path, make_image_folder,
                                                                caplog):
    make_image_folder(tmp_path / "train", {"a": 6, "b": 6})
    make_image_folder(tmp_path / "test", {"a": 2, "b": 2})
    began = prepare_data(tmp_path).contents()
    # The test split alone: training goes on, with a warning naming the files.
    new = tmp_path / "test" / "b" / "new.png"
    new.write_bytes(next((tmp_path / "test" / "a").iterdir()).read_bytes())
    with caplog.at_level(logging.WARNING, logger="imgclf.data.prepare"):
        assert prepare_data(tmp_path).check_resumable(began) is None
    assert ("the test split changed since the run last trained (new: b/new.png (test)): its "
            "figures will be on the test images as they are now") in caplog.text
    # Without a test split, the figures would be on validation: refused.
    (tmp_path / "test").rename(tmp_path / "elsewhere")
    with pytest.raises(RunError, match=r"the data's test split was removed since the run "
                                       r"last trained \(gone: a/a_000\.\w+ \(test\), .* and 1 "
                                       r"more\), so its figures would be on another split"):
        prepare_data(tmp_path).check_resumable(began)
    (tmp_path / "elsewhere").rename(tmp_path / "test")
    first, second = sorted((tmp_path / "train" / "a").iterdir())[:2]
    first.rename(tmp_path / "train" / "b" / first.name)  # the same name, in another class
    second.unlink()
    with pytest.raises(RunError) as changed:
        prepare_data(tmp_path).check_resumable(began)
    message = str(changed.value)
    # Named: the training and validation files alone (the new test image is no reason).
    assert "(12 training and validation files then, 11 now; gone: " in message
    for kind, name in (("gone", f"a/{first.name} (training)"),
                       ("gone", f"a/{second.name} (training)")):
        assert re.search(rf"; {kind}: [^;]*{re.escape(name)}", message), (kind, name, message)
    assert "(test)" not in message
    assert re.search(rf"; new: [^;]*b/{re.escape(first.name)} \((training|validation)\)",
                     message)
    # Another draw of the validation images moves files between training and validation.
    new.unlink()
    moved = prepare_data(tmp_path, seed=7)
    began = prepare_data(tmp_path).contents()
    with pytest.raises(RunError, match=r"; moved: ./[^;]* \((training to validation|validation "
                                       r"to training)\)[^;]* and \d+ more\), so it would"):
        moved.check_resumable(began)
    assert prepare_data(tmp_path).check_resumable(began) is None
    listing = dict(began, listing=None)  # a checkpoint from before the listing
    with pytest.raises(RunError, match=r"\(15 files then, 15 now\), so it would"):
        moved.check_resumable(listing)
