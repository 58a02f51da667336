"""Tests for imgclf.data.decode and imgclf.data.layout: awkward files and dataset layouts."""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.data import decode
from imgclf.data.decode import DecodeError, decode_image, probe
from imgclf.data.layout import (
    Skipped,
    data_folders,
    detect_layout,
    find_classes,
    other_data,
    scan_folder,
    scan_split,
    shown,
    skipped_hint,
    summarize,
    warn_small_classes,
)
from imgclf.errors import DataError

# --- decode ------------------------------------------------------------------------------


def test_every_odd_image_decodes_to_rgb_uint8(bad_image_folder, bad_image_cases):
    for rel, (height, width) in bad_image_cases.decodable.items():
        pixels = decode_image(bad_image_folder / rel)
        assert pixels.shape == (height, width, 3), rel
        assert pixels.dtype == np.uint8, rel
        small = decode_image(bad_image_folder / rel, size=(32, 32))
        assert small.shape == (32, 32, 3), rel


@pytest.mark.parametrize("name, opaque", [
    ("rgba.png", (255, 0, 0)),
    ("palette_transparent.png", (255, 0, 0)),
    ("gray_alpha_LA.png", (76, 76, 76)),  # red as luminance
])
def test_transparent_pixels_are_composited_on_white(bad_image_folder, name, opaque):
    pixels = decode_image(bad_image_folder / "odd" / name)
    # Black is stored under the transparent half: it must not show through.
    assert (pixels[:, :8] == 255).all()
    np.testing.assert_allclose(pixels[:, 8:].reshape(-1, 3), [opaque] * (16 * 8), atol=1)


@pytest.mark.parametrize("mode, key, opaque", [
    ("RGB", (0, 0, 0), (255, 0, 0)), ("L", 0, (76, 76, 76)), ("1", 0, (255, 255, 255)),
    ("I;16", 0, (76, 76, 76))])
def test_pixels_of_a_pngs_transparent_colour_are_composited_on_white(tmp_path, mode, key,
                                                                       opaque):
    path = tmp_path / f"{mode}_keyed.png"
    _half_black_half_red(mode).save(path, transparency=key)  # black is the clear colour
    pixels = decode_image(path)
    assert (pixels[:, :8] == 255).all()
    np.testing.assert_allclose(pixels[:, 8:].reshape(-1, 3), [opaque] * (16 * 8), atol=1)


def _half_black_half_red(mode: str) -> Image.Image:
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:, 8:] = (255, 0, 0)
    if mode == "I;16":  # red as 16-bit luminance
        return Image.fromarray((np.asarray(Image.fromarray(rgb).convert("L")) * 257.0)
                               .astype(np.uint16))
    return Image.fromarray(rgb, "RGB").convert(mode)


def test_exif_orientation_is_applied(bad_image_folder):
    pixels = decode_image(bad_image_folder / "odd" / "rotated_exif6.jpg").astype(int)
    assert pixels.shape == (40, 20, 3)  # stored 40 wide x 20 high
    # Stored left half red, right half blue; rotated 90 degrees clockwise for display.
    assert pixels[:16, :, 0].mean() > 200 and pixels[:16, :, 2].mean() < 50
    assert pixels[24:, :, 2].mean() > 200 and pixels[24:, :, 0].mean() < 50
    assert decode_image(bad_image_folder / "odd" / "rotated_exif6.jpg", (8, 4)).shape == (8, 4, 3)


def test_colour_conversions(bad_image_folder):
    odd = bad_image_folder / "odd"
    np.testing.assert_allclose(decode_image(odd / "cmyk.jpg")[4, 4], (255, 0, 0), atol=3)
    assert (decode_image(odd / "gray16.png") == 40000 >> 8).all()  # scaled, not clipped
    assert (decode_image(odd / "gray_L.png") == 100).all()
    # An animated GIF gives its first (red) frame.
    np.testing.assert_array_equal(decode_image(odd / "animated.gif")[0, 0], (255, 0, 0))


def test_32bit_grayscale_is_scaled_by_the_range_it_holds(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    # Pillow's own L -> I conversion: 8-bit values in 32-bit samples.
    Image.fromarray(gray).convert("I").save(tmp_path / "i8.tif")
    Image.fromarray(gray.astype(np.int32) * 257).save(tmp_path / "i16.tif")
    # Over int32's whole range: 2**31 - 1 is white.
    Image.fromarray((gray.astype(np.int64) * 0x01010101 >> 1).astype(np.int32)).save(
        tmp_path / "i32.tif")
    for name in ("i8.tif", "i16.tif", "i32.tif"):
        assert probe(tmp_path / name).mode == "I", name
        np.testing.assert_array_equal(decode_image(tmp_path / name)[..., 0], gray, err_msg=name)
    Image.fromarray(np.full((4, 4), -5, dtype=np.int32)).save(tmp_path / "negative.tif")
    assert (decode_image(tmp_path / "negative.tif") == 0).all()


def test_a_stated_16bit_depth_scales_by_65535_even_for_dark_images(tmp_path):
    # Dark 16-bit data (all below 256) stays dark: the file says it is 16-bit.
    Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)).save(tmp_path / "dark16.png")
    Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)).save(tmp_path / "dark16.tif")
    (tmp_path / "dark16.pgm").write_bytes(b"P5 4 4 65535\n" + np.full(16, 200, ">u2").tobytes())
    for name in ("dark16.png", "dark16.tif", "dark16.pgm"):
        assert (decode_image(tmp_path / name) == 0).all(), name


def test_tiff_sample_format_sets_the_scale(tmp_path):
    tifffile = pytest.importorskip("tifffile")  # Pillow writes neither of these
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    tifffile.imwrite(tmp_path / "int16.tif", gray.astype(np.int16) << 7)  # 32767 is white
    # Unsigned 32-bit samples, which Pillow reads as signed.
    tifffile.imwrite(tmp_path / "uint32.tif", gray.astype(np.uint32) * 0x01010101)
    for name in ("int16.tif", "uint32.tif"):
        np.testing.assert_array_equal(decode_image(tmp_path / name)[..., 0], gray, err_msg=name)


def test_probe_reads_headers(bad_image_folder):
    odd = bad_image_folder / "odd"
    info = probe(odd / "png_named.jpg")
    assert (info.format, info.mode, info.width, info.height) == ("PNG", "RGB", 30, 20)
    assert probe(odd / "animated.gif").frames == 2
    assert probe(odd / "gray16.png").mode == "I;16"
    assert probe(odd / "cmyk.jpg").mode == "CMYK"
    # A truncated file has a sound header: only a full decode finds it.
    assert probe(bad_image_folder / "broken" / "truncated.jpg").format == "JPEG"


def test_non_ascii_name_with_spaces(bad_image_folder):
    path = bad_image_folder / "odd" / "été photo 1.jpg"
    assert decode_image(path).shape == (24, 24, 3)
    assert probe(path).format == "JPEG"


def test_large_jpeg_decodes_at_small_size(bad_image_folder):
    big = bad_image_folder / "odd" / "big.jpg"
    assert probe(big).width == 5000
    pixels = decode_image(big, size=(64, 64))
    assert pixels.shape == (64, 64, 3)
    np.testing.assert_allclose(pixels[32, 32], (30, 120, 60), atol=4)
    assert decode_image(big, size=(48, 80)).shape == (48, 80, 3)


@pytest.mark.parametrize("rel", ["broken/truncated.jpg", "broken/corrupt.jpg",
                                 "broken/empty.jpg"])
def test_unreadable_files_raise_decode_error_with_reason(bad_image_folder, bad_image_cases, rel):
    pattern = bad_image_cases.unreadable[rel]
    with pytest.raises(DecodeError, match=pattern) as info:
        decode_image(bad_image_folder / rel, size=(32, 32))
    assert info.value.path == bad_image_folder / rel
    assert info.value.reason and str(bad_image_folder / rel) in str(info.value)


def test_damaged_header_that_pillow_reports_as_type_error(bad_image_folder):
    # Counting the pages reads the second one, whose missing width makes Pillow raise
    # TypeError: probing must turn that into a reason like any other damage.
    path = bad_image_folder / "broken" / "page2_without_width.tif"
    with pytest.raises(DecodeError, match="corrupt image: Missing dimensions"):
        probe(path)


def test_pixel_limit_refuses_large_non_jpeg(tmp_path, monkeypatch):
    png = tmp_path / "wide.png"
    Image.new("RGB", (600, 400), (10, 20, 30)).save(png)
    jpeg = tmp_path / "wide.jpg"
    Image.new("RGB", (600, 400), (10, 20, 30)).save(jpeg)
    assert decode_image(png).shape == (400, 600, 3)
    monkeypatch.setattr(decode, "MAX_PIXELS", 100_000)
    with pytest.raises(DecodeError, match=r"too large to decode \(600x400 PNG, "
                                          r"limit 100,000 pixels\); downscale it first"):
        decode_image(png, size=(32, 32))
    # JPEGs decoded at a small size go through draft mode, which the limit does not cover.
    assert decode_image(jpeg, size=(32, 32)).shape == (32, 32, 3)
    with pytest.raises(DecodeError, match="too large to decode"):
        decode_image(jpeg)


def test_an_image_past_pillows_own_limit_is_refused_before_it_decodes(tmp_path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I",
                                                                       zlib.crc32(kind + data))

    # A 16-bit grayscale PNG that declares 13,400 x 13,400 pixels (a few hundred bytes
    # of compressed rows would do): no pixel of it is read.
    png = tmp_path / "bomb.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n"
                    + chunk(b"IHDR", struct.pack(">IIBBBBB", 13_400, 13_400, 16, 0, 0, 0, 0))
                    + chunk(b"IEND", b""))
    with pytest.raises(DecodeError, match=r"too large to decode \(13400x13400 PNG, "
                                          r"limit 178,956,970 pixels\)"):
        decode_image(png, size=(32, 32))


def test_a_dds_file_of_a_pixel_format_pillow_lacks_is_a_corrupt_image(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "DDS")
    data = bytearray(buffer.getvalue())
    data[80:84] = b"\x91\x00\x00\x00"  # the pixel format's flags: none Pillow knows
    path = tmp_path / "texture.jpg"
    path.write_bytes(bytes(data))
    for read in (probe, decode_image):
        with pytest.raises(DecodeError, match="corrupt image: Unknown pixel format flags"):
            read(path)


def test_pipes_devices_and_looping_links_are_named_for_what_they_are(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")  # read, it would wait for a writer forever
    (tmp_path / "zeros.png").symlink_to("/dev/zero")
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    expected = {"pipe.jpg": "not a regular file (a folder, pipe, device or socket)",
                "zeros.png": "not a regular file (a folder, pipe, device or socket)",
                "loop.jpg": "cannot read: Too many levels of symbolic links"}
    for name, reason in expected.items():
        for read in (probe, decode_image):
            with pytest.raises(DecodeError) as caught:
                read(tmp_path / name)
            assert caught.value.reason == reason


def test_decode_error_for_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="cannot read|No such file"):
        decode_image(tmp_path / "nope.jpg")


# --- layout detection ----------------------------------------------------------------------


def _images(folder: Path, n: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 40 % 256, 100, 50)).save(folder / f"{i}.png")


def test_train_and_test_folders(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "train", seed=0)
    make_image_folder(tmp_path / "test", seed=1)
    layout = detect_layout(tmp_path)
    assert layout.kind == "splits"
    assert (layout.train, layout.val, layout.test) == (tmp_path / "train", None, tmp_path / "test")
    assert layout.unlabelled is None
    assert list(layout.splits()) == ["train", "test"]


def test_valid_folder_is_validation(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "Training", seed=0)
    make_image_folder(tmp_path / "valid", seed=1)
    layout = detect_layout(tmp_path)
    assert (layout.train, layout.val, layout.test) == (tmp_path / "Training", tmp_path / "valid",
                                                       None)


def test_kaggle_doubled_folders(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "seg_train" / "seg_train", {"sea": 2, "street": 2}, seed=0)
    make_image_folder(tmp_path / "seg_test" / "seg_test", {"sea": 1, "street": 1}, seed=1)
    _images(tmp_path / "seg_pred" / "seg_pred", 3)
    # A zip that unpacks into a folder of its own name is followed too.
    layout = detect_layout(tmp_path)
    assert layout.kind == "splits"
    assert layout.train == tmp_path / "seg_train" / "seg_train"
    assert layout.test == tmp_path / "seg_test" / "seg_test"
    assert layout.unlabelled == tmp_path / "seg_pred" / "seg_pred"
    assert find_classes(layout.train) == ["sea", "street"]
    images, skipped = scan_folder(layout.unlabelled)
    assert len(images) == 3 and not skipped


def test_doubled_root_folder_is_followed(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "intel" / "intel" / "train", seed=0)
    layout = detect_layout(tmp_path / "intel")
    assert layout.train == tmp_path / "intel" / "intel" / "train"


def test_single_folder_of_classes(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"b": 2, "a": 2, "c": 1})
    (tmp_path / ".git").mkdir()
    layout = detect_layout(tmp_path)
    assert layout.kind == "single"
    assert layout.train == tmp_path and layout.val is None and layout.test is None
    assert find_classes(layout.train) == ["a", "b", "c"]  # sorted; hidden folders ignored


def test_system_files_beside_a_doubled_folder_are_passed_over(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "seg_train" / "seg_train", seed=0)
    make_image_folder(tmp_path / "seg_test" / "seg_test", seed=1)
    (tmp_path / "seg_train" / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "seg_test" / "desktop.ini").write_bytes(b"x")
    layout = detect_layout(tmp_path)
    assert layout.train == tmp_path / "seg_train" / "seg_train"
    assert layout.test == tmp_path / "seg_test" / "seg_test"


def test_a_whole_dataset_in_a_sole_folder_is_read_from_there(tmp_path, make_image_folder):
    inner = tmp_path / "archive"
    make_image_folder(inner / "seg_train" / "seg_train", seed=0)
    make_image_folder(inner / "seg_test" / "seg_test", seed=1)
    (tmp_path / ".DS_Store").write_bytes(b"x")
    layout = detect_layout(tmp_path)
    assert (layout.kind, layout.train) == ("splits", inner / "seg_train" / "seg_train")
    assert layout.notes == [f"{tmp_path} holds only archive/, a whole dataset (split "
                            "folders): it is read from there"]
    # A sole folder of classes is one class, as before: the error names it.
    make_image_folder(tmp_path / "other" / "one" / "cats", seed=2)
    layout = detect_layout(tmp_path / "other")
    assert (layout.kind, find_classes(layout.train)) == ("single", ["one"])


def test_explicit_paths(tmp_path, make_image_folder):
    train = make_image_folder(tmp_path / "mine" / "tr", seed=0)
    test = make_image_folder(tmp_path / "elsewhere" / "te", seed=1)
    layout = detect_layout(train=train, test=test)
    assert layout.kind == "explicit"
    assert (layout.train, layout.val, layout.test) == (train, None, test)
    assert not layout.notes
    whole = make_image_folder(tmp_path / "kaggle" / "seg_train" / "seg_train", seed=2)
    layout = detect_layout(train=tmp_path / "kaggle")
    assert layout.train == tmp_path / "kaggle" and whole.is_dir()
    assert layout.notes == [
        f"the training folder {tmp_path / 'kaggle'} looks like a whole dataset (split folders "
        "such as train/ or seg_train/), yet each of its folders is taken as a class: pass it "
        "as DATA, not as --train, to use its splits"]


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"data folder '.*nowhere' does not exist"):
        detect_layout(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"test folder '.*nowhere' does not exist"):
        detect_layout(train=tmp_path, test=tmp_path / "nowhere")
    with pytest.raises(DataError, match="No dataset given"):
        detect_layout()


def test_no_class_folders_is_an_error(tmp_path):
    _images(tmp_path, 2)  # images straight in the root, no class folders
    with pytest.raises(DataError, match=r"holds no class folders.*DATA/<class>/\*\.jpg.*"
                                        r"\.jpg\)\. Its 2 image file\(s\) outside any class "
                                        r"folder have no label"):
        detect_layout(tmp_path)
    # An empty train/ holds no class folders: it is a (so far empty) class, not a split.
    (tmp_path / "train").mkdir()
    layout = detect_layout(tmp_path)
    assert (layout.kind, layout.train, find_classes(layout.train)) == ("single", tmp_path,
                                                                       ["train"])
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DataError, match="No class folders in .*elsewhere"):
        find_classes(tmp_path / "elsewhere")


def test_kaggle_training_set_and_test_set(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "training_set" / "training_set", seed=0)
    make_image_folder(tmp_path / "Test_Set" / "Test_Set", seed=1)
    layout = detect_layout(tmp_path)
    assert layout.kind == "splits"
    assert layout.train == tmp_path / "training_set" / "training_set"
    assert layout.test == tmp_path / "Test_Set" / "Test_Set"
    assert find_classes(layout.train) == ["cat", "dog"]


def test_a_class_called_train_is_a_class(tmp_path, make_image_folder):
    # The vehicles dataset: airplane/, bus/, car/, train/, each of images.
    make_image_folder(tmp_path, {"airplane": 2, "bus": 2, "train": 2, "blood_test": 2})
    layout = detect_layout(tmp_path)
    assert layout.kind == "single" and layout.train == tmp_path
    assert find_classes(layout.train) == ["airplane", "blood_test", "bus", "train"]


def test_classes_named_like_splits_with_subfolders_stay_classes(tmp_path, make_image_folder):
    # Two folders for one split, neither named for it alone: classes, not training splits.
    for name in ("freight_train", "passenger_train", "city_bus"):
        make_image_folder(tmp_path / name, {"day": 1, "night": 1}, seed=len(name))
    layout = detect_layout(tmp_path)
    assert layout.kind == "single" and not layout.notes
    assert find_classes(layout.train) == ["city_bus", "freight_train", "passenger_train"]


def test_a_folder_named_for_its_split_alone_is_that_split_before_prefixed_ones(
        tmp_path, make_image_folder):
    for name in ("other_train", "seg_train", "train", "test"):
        make_image_folder(tmp_path / name, seed=len(name))
    layout = detect_layout(tmp_path)
    assert (layout.kind, layout.train, layout.test) == ("splits", tmp_path / "train",
                                                        tmp_path / "test")
    assert layout.notes == ["other_train/ ignored: train/ is already the train split",
                            "seg_train/ ignored: train/ is already the train split"]


@pytest.mark.parametrize("train, test", [("train_data", "test_data"), ("trainset", "testset"),
                                         ("Train Images", "val-images"), ("train-imgs", "test")])
def test_split_folders_named_for_their_data(tmp_path, make_image_folder, train, test):
    make_image_folder(tmp_path / train, seed=0)
    make_image_folder(tmp_path / test, seed=1)
    layout = detect_layout(tmp_path)
    assert layout.kind == "splits" and layout.train == tmp_path / train
    assert tmp_path / test in (layout.val, layout.test)


def test_split_folder_without_classes_is_unlabelled(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "train", seed=0)
    _images(tmp_path / "test", 3)  # a competition's test set: loose, unlabelled images
    layout = detect_layout(tmp_path)
    assert (layout.train, layout.test, layout.unlabelled) == (tmp_path / "train", None,
                                                              tmp_path / "test")
    assert layout.notes == [
        "test/ holds no class folders: its images are taken as unlabelled, for imgclf predict"]
    # With an unlabelled folder of its own, the flat one is only mentioned.
    _images(tmp_path / "pred", 2)
    layout = detect_layout(tmp_path)
    assert layout.unlabelled == tmp_path / "pred" and layout.test is None
    assert layout.notes == ["test/ holds no class folders: ignored"]


def test_folders_left_out_of_the_splits_are_noted(tmp_path, make_image_folder):
    for name in ("train", "val", "valid", "extra_images"):
        make_image_folder(tmp_path / name)
    layout = detect_layout(tmp_path)
    assert (layout.train, layout.val) == (tmp_path / "train", tmp_path / "val")
    assert layout.notes == [
        "extra_images/ is not a split folder (train, val, test, pred): ignored",
        "valid/ ignored: val/ is already the val split",
    ]


def test_explicit_split_folders_override_the_datasets_own(tmp_path, make_image_folder):
    for name in ("data/train", "data/val", "data/test", "mine/val", "mine/test"):
        make_image_folder(tmp_path / name)
    layout = detect_layout(tmp_path / "data", val=tmp_path / "mine" / "val")
    assert (layout.val, layout.test) == (tmp_path / "mine" / "val", tmp_path / "data" / "test")
    layout = detect_layout(tmp_path / "data", test=tmp_path / "mine" / "test")
    assert (layout.val, layout.test) == (tmp_path / "data" / "val", tmp_path / "mine" / "test")
    with pytest.raises(DataError, match=r"Both a DATA folder .* and a train folder .*; --train, "
                                        r"or data.train in a config file\) were given"):
        detect_layout(tmp_path / "data", train=tmp_path / "data" / "train")


def test_empty_class_folder_is_an_error(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"cat": 2})
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"x")
    classes = find_classes(tmp_path)
    with pytest.raises(DataError, match=r"Class folder .*dog holds no readable images "
                                        r"\(1 file\(s\) skipped: hidden or system file"):
        scan_split("train", tmp_path, classes)


def test_class_only_in_test_is_an_error(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "train", {"cat": 2, "dog": 2}, seed=0)
    make_image_folder(tmp_path / "test", {"cat": 1, "cow": 1}, seed=1)
    layout = detect_layout(tmp_path)
    classes = find_classes(layout.train)
    with pytest.raises(DataError, match=r"test split .* class folder\(s\) \['cow'\] that the "
                                        r"training split does not have"):
        scan_split("test", layout.test, classes)


# --- scanning --------------------------------------------------------------------------------


def test_scan_lists_every_skipped_file_once_with_reason(bad_image_folder, bad_image_cases):
    classes = find_classes(bad_image_folder)
    assert classes == ["broken", "odd"]
    split = scan_split("train", bad_image_folder, classes)
    skipped = {s.path.relative_to(bad_image_folder).as_posix(): s.reason for s in split.skipped}
    assert len(skipped) == len(split.skipped)  # each file once
    # The truncated JPEG's header is sound: scanning keeps it, decoding rejects it.
    expected = {**bad_image_cases.ignored,
                **{k: v for k, v in bad_image_cases.unreadable.items() if "truncated" not in k}}
    assert set(skipped) == set(expected)
    for rel, pattern in expected.items():
        assert re.search(pattern, skipped[rel]), (rel, skipped[rel])
    kept = {p.relative_to(bad_image_folder).as_posix() for p in split.paths}
    assert kept == set(bad_image_cases.decodable) | {"broken/truncated.jpg"}
    for path, label in zip(split.paths, split.labels, strict=True):
        assert classes[label] == path.relative_to(bad_image_folder).parts[0]


def test_scan_reports_loose_files_and_finds_images_by_content(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"cat": 2, "dog": 2})
    (tmp_path / "README.md").write_text("about the data")
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "no_extension", format="PNG")
    split = scan_split("train", tmp_path, ["cat", "dog"])
    assert Skipped(tmp_path / "README.md", "file outside any class folder") in split.skipped
    assert tmp_path / "cat" / "no_extension" in split.paths
    assert len(split) == 5
    assert summarize(split) == f"{tmp_path.name}/ (5 images, 2 classes, 1 skipped)"


def test_summary_names_the_role_of_a_folder_named_for_another(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "test")
    split = scan_split("val", tmp_path / "test", ["cat", "dog"])
    assert summarize(split) == "val test/ (11 images, 2 classes)"
    make_image_folder(tmp_path / "holdout")
    split = scan_split("test", tmp_path / "holdout", ["cat", "dog"])
    assert summarize(split) == "test holdout/ (11 images, 2 classes)"


def test_summary_names_the_current_folder(tmp_path, make_image_folder, monkeypatch):
    make_image_folder(tmp_path / "pets")
    monkeypatch.chdir(tmp_path / "pets")
    split = scan_split("train", Path("."), ["cat", "dog"])
    assert summarize(split) == "pets/ (11 images, 2 classes)"


def test_nested_images_belong_to_their_class(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"cat": 1, "dog": 1})
    _images(tmp_path / "cat" / "2019" / "june", 2)
    split = scan_split("train", tmp_path, ["cat", "dog"])
    assert sorted(split.labels) == [0, 0, 0, 1]


def test_linked_folders_are_followed_once_and_loops_are_skipped(tmp_path, make_image_folder):
    data = tmp_path / "data"
    make_image_folder(data, {"cat": 2, "dog": 3})
    _images(tmp_path / "shared", 1)
    (data / "cat" / "up").symlink_to("..")  # a loop through the whole dataset
    (data / "cat" / "self").symlink_to(".")
    (data / "dog" / "a_more").symlink_to("../../shared")  # a linked folder: followed
    (data / "dog" / "b_again").symlink_to("../../shared")  # the same folder again
    split = scan_split("train", data, ["cat", "dog"])
    assert sorted(split.labels) == [0, 0, 1, 1, 1, 1]  # no dog image counted as a cat
    reasons = {s.path.relative_to(data).as_posix(): s.reason for s in split.skipped}
    assert reasons == {
        "cat/self": "linked folder that loops back to a folder above it",
        "cat/up": "linked folder that loops back to a folder above it",
        "dog/b_again": "folder reached twice through links (read once)",
    }


def test_a_class_folder_linked_under_other_names_is_one_class(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"cat": 2, "dog": 3})
    (tmp_path / "a_dog").symlink_to("dog")  # before it by name: the folder itself is kept
    (tmp_path / "dog_again").symlink_to("dog")
    layout = detect_layout(tmp_path)
    assert find_classes(layout.train) == ["cat", "dog"]
    assert layout.notes == ["a_dog/ is dog/ again, through a link (read once): ignored",
                            "dog_again/ is dog/ again, through a link (read once): ignored"]
    split = scan_split("train", tmp_path, ["cat", "dog"])
    assert sorted(split.labels) == [0, 0, 1, 1, 1]  # each image once, with one label


def test_a_link_in_one_class_folder_into_another_class_is_not_followed(tmp_path,
                                                                        make_image_folder):
    make_image_folder(tmp_path, {"ant": 1, "bee": 2, "fox": 3})
    _images(tmp_path / "bee" / "wild", 3)
    (tmp_path / "fox" / "ants").symlink_to("../ant")  # a whole class, after it by name
    (tmp_path / "ant" / "more").symlink_to("../bee/wild")  # part of a class, before it
    split = scan_split("train", tmp_path, ["ant", "bee", "fox"])
    assert sorted(split.labels) == [0, 1, 1, 1, 1, 1, 2, 2, 2]  # each image, its own class
    assert sorted((s.path.relative_to(tmp_path).as_posix(), s.reason)
                  for s in split.skipped) == [
        ("ant/more", "folder of another class (read as that class)"),
        ("fox/ants", "folder of another class (read as that class)")]


def test_a_class_folder_inside_another_keeps_its_images(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"cat": 2})
    _images(tmp_path / "cat" / "young", 2)
    _images(tmp_path / "cat" / "young" / "sub", 3)
    (tmp_path / "kitten").symlink_to("cat/young")  # a class that is part of another
    split = scan_split("train", tmp_path, ["cat", "kitten"])
    assert sorted(split.labels) == [0, 0, 1, 1, 1, 1, 1]  # each image once, the young kittens
    assert [(s.path.relative_to(tmp_path).as_posix(), s.reason) for s in split.skipped] == [
        ("cat/young", "folder of another class (read as that class)")]


def test_a_split_folder_that_cannot_be_read_is_named(tmp_path, make_image_folder,
                                                     monkeypatch):
    make_image_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    make_image_folder(tmp_path / "test", {"cat": 1, "dog": 1}, seed=1)
    real_iterdir = Path.iterdir

    def iterdir(path):
        if path.name == "test":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_iterdir(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(DataError, match=rf"cannot read the folder {re.escape(str(tmp_path))}"
                                        r"/test: Permission denied\. Give this user"):
        detect_layout(tmp_path)


def test_a_split_folder_that_links_to_another_folder_stays_the_split(tmp_path,
                                                                    make_image_folder):
    make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2})
    make_image_folder(tmp_path / "test", {"cat": 1, "dog": 1}, seed=1)
    (tmp_path / "train").symlink_to("images")  # the folder itself is named otherwise
    layout = detect_layout(tmp_path)
    assert (layout.kind, layout.train, layout.test) == ("splits", tmp_path / "train",
                                                        tmp_path / "test")
    assert find_classes(layout.train) == ["cat", "dog"]


def test_folders_that_cannot_be_read_are_skipped_with_the_reason(tmp_path, make_image_folder,
                                                                monkeypatch):
    data = tmp_path / "data"
    make_image_folder(data, {"cat": 2, "dog": 3})
    _images(data / "dog" / "listless", 2)  # may be entered, not listed (chmod 711)
    _images(data / "dog" / "closed", 2)  # neither (chmod 000)
    real_scandir, real_is_file = os.scandir, Path.is_file

    def scandir(path="."):
        if isinstance(path, str | os.PathLike) and Path(path).name in ("listless", "closed"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    def is_file(path):
        if path.parent.name == "closed":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_is_file(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(Path, "is_file", is_file)
    split = scan_split("train", data, ["cat", "dog"])
    assert sorted(split.labels) == [0, 0, 1, 1, 1]
    assert {s.path.relative_to(data).as_posix(): s.reason for s in split.skipped} == {
        "dog/closed": "cannot read folder: Permission denied",
        "dog/listless": "cannot read folder: Permission denied",
    }


def test_hidden_and_looping_folders_are_neither_classes_nor_splits(tmp_path,
                                                                   make_image_folder):
    make_image_folder(tmp_path, {"forest": 2, "sea": 2, ".street": 2})
    (tmp_path / "loop").symlink_to(".")
    (tmp_path / ".git").mkdir()
    layout = detect_layout(tmp_path)
    assert find_classes(layout.train) == ["forest", "sea"]
    assert layout.notes == [
        ".street/ is hidden (its name starts with a dot): ignored",
        "loop/ is a linked folder that loops back to a folder above it: ignored",
    ]
    make_image_folder(tmp_path / "data" / "train", seed=1)
    (tmp_path / "data" / "train" / "up").symlink_to("..")
    layout = detect_layout(tmp_path / "data")
    assert find_classes(layout.train) == ["cat", "dog"]
    assert layout.notes == [
        "train/up/ is a linked folder that loops back to a folder above it: ignored"]


def test_run_folders_are_neither_classes_nor_splits(tmp_path, make_image_folder,
                                                   make_run_folder):
    make_image_folder(tmp_path / "flat", {"a": 2, "b": 2})
    make_run_folder(tmp_path / "flat" / "run-x")
    layout = detect_layout(tmp_path / "flat")
    assert (layout.kind, find_classes(layout.train)) == ("single", ["a", "b"])
    assert layout.notes == ["run-x/ is an imgclf run folder, not data: ignored"]

    data = tmp_path / "data"
    make_image_folder(data / "train", {"a": 2, "b": 2}, seed=0)
    make_image_folder(data / "test", {"a": 1, "b": 1}, seed=1)
    make_run_folder(data / "run-y", "metrics.json")
    make_run_folder(data / "train" / "run-1", "model.pt")
    make_run_folder(data / "test" / "run-2", "last.pt")
    layout = detect_layout(data)
    assert (layout.kind, find_classes(layout.train)) == ("splits", ["a", "b"])
    assert layout.notes == [f"{name}/ is an imgclf run folder, not data: ignored"
                            for name in ("run-y", "train/run-1", "test/run-2")]
    split = scan_split("test", layout.test, ["a", "b"])  # not an unknown class either
    assert (sorted(split.labels), split.skipped) == ([0, 1], [])
    # Explicit split folders name their run folders in full.
    layout = detect_layout(train=data / "train")
    assert layout.notes == [f"{data / 'train' / 'run-1'}/ is an imgclf run folder, not data: "
                            "ignored"]


def test_a_folder_of_runs_alone_holds_no_classes(tmp_path, make_run_folder):
    make_run_folder(tmp_path / "run-x")
    with pytest.raises(DataError, match=r"holds no class folders \(only imgclf run folders, "
                                        r"which are not data: \['run-x'\]\)"):
        detect_layout(tmp_path)


def test_a_run_folder_inside_a_class_is_skipped_and_named(tmp_path, make_image_folder,
                                                          make_run_folder, caplog):
    make_image_folder(tmp_path, {"cat": 2, "dog": 2})
    make_run_folder(tmp_path / "cat" / "old" / "run-x")
    with caplog.at_level(logging.WARNING, logger="imgclf.data.layout"):
        split = scan_split("train", tmp_path, ["cat", "dog"])
    assert sorted(split.labels) == [0, 0, 1, 1]  # no plot is a cat
    run = tmp_path / "cat" / "old" / "run-x"
    assert split.skipped == [Skipped(run, "imgclf run folder, not data")]
    assert f"{run} is an imgclf run folder, not data: left out" in caplog.text


def test_missing_class_in_test_split_is_fine(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"dog": 2})
    split = scan_split("test", tmp_path, ["cat", "dog"])
    assert split.labels == [1, 1]


def test_subset_and_small_class_warning(tmp_path, make_image_folder, caplog):
    make_image_folder(tmp_path, {"cat": 3, "dog": 12})
    split = scan_split("train", tmp_path, ["cat", "dog"])
    sub = split.subset([0, 5], "val")
    assert sub.name == "val" and sub.paths == [split.paths[0], split.paths[5]]
    assert sub.labels == [split.labels[0], split.labels[5]]
    with caplog.at_level(logging.WARNING, logger="imgclf.data.layout"):
        warnings = warn_small_classes(split, ["cat", "dog"])
    assert warnings == ["class 'cat' has only 3 training image(s); results for it will be "
                        "unreliable"]
    assert caplog.messages == warnings


def test_a_test_split_alone_counts_only_where_no_training_split_is_needed(tmp_path,
                                                                          make_image_folder):
    make_image_folder(tmp_path / "test")
    assert detect_layout(tmp_path).kind == "single"  # for training: a class called "test"
    layout = detect_layout(tmp_path, need_train=False)  # for evaluation: the test split
    assert (layout.kind, layout.train, layout.test) == ("splits", None, tmp_path / "test")


def test_skipped_hint_marks_other_reasons_only_when_there_are_some():
    cut = Skipped(Path("a.jpg"), "truncated file")
    assert skipped_hint([]) == ""
    assert skipped_hint([cut, cut]) == " (2 file(s) skipped: truncated file)"
    assert skipped_hint([cut, Skipped(Path("b.txt"), "not an image")]) == \
        " (2 file(s) skipped: truncated file, ...)"


def test_a_validation_split_without_a_class_folder_is_warned_of(tmp_path, make_image_folder,
                                                                caplog):
    # Early stopping and the mirror-image check then judge without that class.
    val = make_image_folder(tmp_path / "val", {"cat": 2})
    with caplog.at_level(logging.WARNING, logger="imgclf"):
        split = scan_split("val", val, ["cat", "dog"])
    assert split.warnings == [f"{val} has no folder of class 'dog': the val split has no "
                              "image of class 'dog'"]
    assert split.warnings[0] in caplog.text
    assert scan_split("train", val, ["cat", "dog"]).warnings == []  # its folders are the classes


def test_class_folders_alike_but_for_case_or_spaces_are_noted(tmp_path, make_image_folder):
    make_image_folder(tmp_path / "train", {"sea": 1, "sea ": 1, "Sea": 1, "forest": 1})
    make_image_folder(tmp_path / "test", {"sea": 1, "Forest": 1})
    notes = detect_layout(tmp_path).notes
    assert notes == [
        f"the class folders 'Sea', 'sea', 'sea ' in {tmp_path / 'train'} differ only in case "
        "or spaces: they are 3 classes. Merge them if they are one",
        "the test split's class folder 'Forest' differs from the training class 'forest' "
        "only in case or spaces: rename it to match"]
    make_image_folder(tmp_path / "plain" / "train", {"a": 1, "b": 1})
    make_image_folder(tmp_path / "plain" / "test", {"a": 1, "b": 1})
    assert detect_layout(tmp_path / "plain").notes == []


def test_a_class_name_with_spaces_at_an_end_is_quoted_in_messages(tmp_path, make_image_folder):
    make_image_folder(tmp_path, {"sea": 2})
    (tmp_path / "sea ").mkdir()
    with pytest.raises(DataError, match=re.escape(f"Class folder '{tmp_path / 'sea '}' holds "
                                                  "no readable images")):
        scan_split("train", tmp_path, ["sea", "sea "])
    assert [shown(name) for name in ("sea", "sea ", " sea", "deep sea")] == [
        "sea", "'sea '", "' sea'", "deep sea"]
    assert shown(tmp_path / " sea") == repr(str(tmp_path / " sea"))
    assert shown(tmp_path / "sea") == str(tmp_path / "sea")


def test_runs_take_the_same_data_by_any_settings_that_find_its_folders(tmp_path,
                                                                      make_image_folder):
    for split in ("train", "test"):
        make_image_folder(tmp_path / "d" / split, {"a": 1, "b": 1}, size=(8, 8))
    (tmp_path / "link").symlink_to(tmp_path / "d")
    whole = {"data": {"data": str(tmp_path / "d")}}
    assert data_folders(whole) == {"data.train": str(tmp_path / "d" / "train"),
                                   "data.test": str(tmp_path / "d" / "test")}
    for same in ({"data": {"train": str(tmp_path / "d" / "train"),
                           "test": str(tmp_path / "link" / "test")}},
                 {"data": {"data": str(tmp_path / "link")}}):
        assert other_data(whole, same) == {}
    no_test = {"data": {"train": str(tmp_path / "d" / "train")}}
    assert other_data(whole, no_test) == {"data.test": (str(tmp_path / "d" / "test"), None)}
    classes = {"data": {"data": str(tmp_path / "d" / "train")}}  # its classes, as one folder
    assert list(other_data(whole, classes)) == ["data.test"]
    # A dataset no longer there: compared by the settings that name it.
    gone = {"data": {"data": str(tmp_path / "gone")}}
    assert data_folders(gone) is None
    assert other_data(whole, gone) == {"data.data": (str(tmp_path / "d"), str(tmp_path / "gone"))}
    assert other_data(gone, {"data": {"data": str(tmp_path / "gone")}}) == {}
