"""Tests for imgclf.report: self-contained HTML reports of run and compare folders.

Two tiny scratch runs are trained once per module (3 colour classes of 32 px images, with a
test split); a compare folder is faked from them plus a failed run, a hand-written
leaderboard.csv and audit.json. Each report is parsed with html.parser: it must be
well-formed, hold every section, embed every image, and reference nothing on the network.
Where Chromium is installed, one report is also rendered to a screenshot.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import imgclf
from imgclf.cli import report as report_cli
from imgclf.cli.main import main
from imgclf.errors import ConfigError, RunError
from imgclf.report import write_report

CLASSES = {"red": 8, "green": 8, "blue": 8}
HEADINGS = [
    "Dataset",
    "Leaderboard",
    "Learning curves",
    "Confusion matrices",
    "ROC curves",
    "Per-class precision, recall and F1",
    "Most confident mistakes",
    "Configuration",
]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Page(HTMLParser):
    """Checks that tags nest and close, and collects the text the tests look at.

    ``text["h2"]``, ``text["h3"]``: headings; ``text["gallery"]``: the caption of each
    gallery picture; ``text["leaderboard"]``: the run cell of each leaderboard row.
    """

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str, str]] = []  # (tag, class, id) of open elements
        self.errors: list[str] = []
        self.text: dict[str, list[str]] = {"h2": [], "h3": [], "gallery": [], "leaderboard": []}
        self.images: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self._captures: list[tuple[str, int, list[str]]] = []
        self._cell = 0
        self.feed(html)
        self.close()
        if self.stack:
            self.errors.append(f"still open at the end: {[tag for tag, _, _ in self.stack]}")

    def _has_class(self, css_class: str) -> bool:
        return any(css_class in classes.split() for _, classes, _ in self.stack)

    def _in(self, tag: str = "", anchor: str = "") -> bool:
        return any((tag and t == tag) or (anchor and i == anchor) for t, _, i in self.stack)

    def _capture(self, tag: str) -> str | None:
        if tag in ("h2", "h3"):
            return tag
        if tag == "figure" and self._has_class("gallery"):
            return "gallery"
        if tag == "tr":
            self._cell = 0
        if tag == "td":
            self._cell += 1
            # The run is the second cell (after the rank) of the main leaderboard table.
            if self._cell == 2 and self._in(anchor="leaderboard") and not self._in("details"):
                return "leaderboard"
        return None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        self.urls += [attrs[name] for name in ("src", "href") if attrs.get(name)]
        if tag == "img":
            self.images.append(attrs.get("src") or "")
        if tag == "br":
            self.handle_data(" ")
        kind = self._capture(tag)
        if tag not in VOID:
            self.stack.append((tag, attrs.get("class") or "", attrs.get("id") or ""))
            if kind:
                self._captures.append((kind, len(self.stack), []))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        if self._captures and self._captures[-1][1] == len(self.stack):
            kind, _, parts = self._captures.pop()
            self.text[kind].append(" ".join("".join(parts).split()))
        self.stack.pop()

    def handle_data(self, data):
        for _, _, parts in self._captures:
            parts.append(data)


def parse(html: str) -> Page:
    page = Page(html)
    assert not page.errors, page.errors
    return page


def assert_self_contained(html: str, page: Page) -> None:
    assert page.text["h2"] == HEADINGS
    assert page.images, "the report shows no image"
    for src in page.images:
        assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), src[:60]
    for url in page.urls:
        assert url.startswith(("data:", "#")), f"external reference {url[:80]}"
    assert "http://" not in html and "https://" not in html
    assert not page.tags & {"script", "link", "iframe"}


def read_predictions(run: Path) -> list[dict]:
    with open(run / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def expected_gallery(rows: list[dict], limit: int = 12) -> list[str]:
    """File names of the wrong predictions, most confident first."""
    wrong = [r for r in rows if r["label"] != r["predicted"]]
    wrong.sort(key=lambda r: -float(r["confidence"]))
    return [Path(r["path"]).name for r in wrong[:limit]]


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run A, run B, data folder): two tiny scratch runs on the same data, trained once."""
    from conftest import single_thread, write_image_folder

    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    write_image_folder(data / "train", CLASSES, size=(32, 32), seed=0)
    write_image_folder(data / "test", {name: 4 for name in CLASSES}, size=(32, 32), seed=1)
    runs = []
    with pytest.MonkeyPatch.context() as mp, single_thread():
        mp.setenv("IMGCLF_CACHE_DIR", str(root / "cache"))
        for name, seed in (("a", 0), ("b", 1)):
            runs.append(imgclf.train(
                str(data), method="scratch", out=str(root / f"run-{name}"), seed=seed,
                model={"img_size": 32}, train={"epochs": 2, "device": "cpu"}))
    return Path(runs[0]), Path(runs[1]), data


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    """A fresh copy of run A, free to modify."""
    return Path(shutil.copytree(trained[0], tmp_path / "scratch-small_cnn"))


LEADERBOARD_HEADER = ["run", "method", "backbone", "img_size", "params_total",
                      "params_trainable", "epochs", "train_seconds",
                      "inference_images_per_second", "status", "error", "accuracy",
                      "balanced_accuracy", "f1_macro", "ranked_by"]


def leaderboard_row(name: str, run: Path) -> list:
    metrics = json.loads((run / "metrics.json").read_text())
    return [name, "scratch", "small_cnn", 32, metrics["parameters"]["total"],
            metrics["parameters"]["trainable"], 2, metrics["train_seconds"],
            metrics["inference_images_per_second"], "ok", "", metrics["accuracy"],
            metrics["balanced_accuracy"], metrics["f1_macro"], "accuracy"]


@pytest.fixture
def compare_dir(trained, tmp_path) -> Path:
    """A compare folder: two finished runs, one failed run, leaderboard.csv, audit.json.

    The better run is listed last in leaderboard.csv, ranked by accuracy, so the report
    must sort it first.
    """
    run_a, run_b, _ = trained
    folder = tmp_path / "compare"
    folder.mkdir()
    (a_name, a), (b_name, b) = sorted(
        [("first", run_a), ("second", run_b)],
        key=lambda item: json.loads((item[1] / "metrics.json").read_text())["accuracy"])
    for name, run in ((a_name, a), (b_name, b)):
        shutil.copytree(run, folder / name)
    failed = folder / "broken-run"
    failed.mkdir()
    (failed / "config.yaml").write_text("method: transfer\nmodel:\n  name: nonesuch\n")
    (failed / "error.txt").write_text(
        "Traceback (most recent call last):\nimgclf.errors.ModelError: no model 'nonesuch'\n")
    with open(folder / "leaderboard.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(LEADERBOARD_HEADER)
        writer.writerow(["broken-run", "transfer", "nonesuch", *[""] * 6, "failed",
                         "ModelError: no model 'nonesuch'", "", "", "", "accuracy"])
        writer.writerow(leaderboard_row(a_name, a))
        writer.writerow(leaderboard_row(b_name, b))
    audit = {
        "root": "/data/colours", "layout": "splits", "classes": list(CLASSES),
        "splits": {
            "train": {"images": 24, "classes": dict.fromkeys(CLASSES, 8), "unreadable": 1,
                      "skipped": 0, "imbalance_ratio": 1.0},
            "test": {"images": 12, "classes": dict.fromkeys(CLASSES, 4), "unreadable": 0,
                     "skipped": 0, "imbalance_ratio": 1.0},
        },
        "unreadable": [{"split": "train", "class": "red", "path": "train/red/cut.jpg",
                        "reason": "truncated file (image data ends early)"}],
        "exact_duplicates": {"within_split": [], "label_conflicts": [], "across_splits": [
            {"splits": ["train", "test"], "same_class": False, "files": [
                {"split": "train", "class": "red", "path": "train/red/leak.png"},
                {"split": "test", "class": "blue", "path": "test/blue/leak.png"}]}]},
        "near_duplicates": {"checked": False},
        "some_future_key": {"the report": "ignores what it does not know"},
    }
    (folder / "audit.json").write_text(json.dumps(audit))
    return folder


# --- tests ----------------------------------------------------------------------------------


def test_run_report_is_self_contained_and_complete(run_dir):
    before = sorted(p.name for p in run_dir.iterdir())
    out = write_report(run_dir)

    assert out == run_dir / "report.html"
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([*before, "report.html"])
    html = out.read_text(encoding="utf-8")
    page = parse(html)
    assert_self_contained(html, page)
    # learning curves, confusion matrix and ROC, plus a thumbnail per mistake shown
    wanted = expected_gallery(read_predictions(run_dir))
    assert len(page.images) == 3 + len(wanted)
    assert [caption.split()[-1] for caption in page.text["gallery"]] == wanted
    for name in CLASSES:
        assert f"<td>{name}</td>" in html  # a per-class table row
    assert "Training run scratch-small_cnn" in html
    mirrored = json.loads((run_dir / "metrics.json").read_text())["tta"]
    assert ("evaluated on the test split (12 images"
            + (", each averaged with its mirror image)" if mirrored else ")")) in html
    assert len(page.text["leaderboard"]) == 1 and page.text["leaderboard"][0].startswith(
        "scratch-small_cnn")
    assert "<details><summary>scratch-small_cnn" in html  # the configuration, collapsed
    assert "method: scratch" in html
    assert "%" in html and "drawn again" not in html
    # train_seconds includes extracting (or reading back cached) frozen features
    assert "training epochs and, for a frozen backbone, computing its features" in html


def test_an_evaluation_folder_is_reported_as_the_evaluation_of_its_run(run_dir, trained,
                                                                       tmp_path):
    data = trained[2]
    _, evaluated = imgclf.evaluate(run_dir, data / "test", device="cpu")
    html = write_report(evaluated, tmp_path / "evaluation.html").read_text(encoding="utf-8")
    page = parse(html)
    assert_self_contained(html, page)
    assert "Evaluation evaluate-test" in html and "Training run" not in html
    assert f"The model of the run {run_dir}, evaluated on the data below" in html
    assert f"Data <code>{data / 'test'}</code>" in html
    assert "An evaluation trains nothing: the learning curves are in the report of its run" \
        in html
    assert "no history.csv" not in html and "No config.yaml" not in html
    assert "method: scratch" in html  # the evaluated run's settings
    assert len(page.images) >= 2  # confusion matrix and ROC curves
    # The run moved, its evaluation in it: the settings are found there.
    moved = shutil.move(run_dir, tmp_path / "moved")
    html = write_report(Path(moved) / "evaluate-test", tmp_path / "moved.html").read_text(
        encoding="utf-8")
    assert f"The model of the run {moved}, evaluated on the data below" in html
    assert "method: scratch" in html
    # Deeper in the run folder, the run moved again.
    _, deeper = imgclf.evaluate(moved, data / "test", out=Path(moved) / "evals" / "t1",
                                device="cpu")
    again = shutil.move(moved, tmp_path / "again")
    html = write_report(Path(again) / "evals" / "t1", tmp_path / "deeper.html").read_text(
        encoding="utf-8")
    assert f"The model of the run {again}, evaluated on the data below" in html
    moved = again
    # Evaluated elsewhere, and the run gone: said so.
    _, elsewhere = imgclf.evaluate(moved, data / "test", out=tmp_path / "apart", device="cpu")
    shutil.rmtree(moved)
    html = write_report(elsewhere, tmp_path / "apart.html").read_text(encoding="utf-8")
    assert "The evaluated run's config.yaml cannot be read: its folder has moved or gone." \
        in html


def test_a_runs_leaderboard_row_is_the_one_compare_writes(run_dir):
    """The report and `imgclf compare` build a run's row alike, the mirror-image flag
    included; a result missing from metrics.json leaves its cell empty in both."""
    from imgclf.compare import row_from_run
    from imgclf.leaderboard import METRICS
    from imgclf.report.folders import METRIC_LABELS, load_folder

    row = row_from_run(run_dir)
    assert load_folder(run_dir).rows == [row]
    assert row["tta"] in (True, False)
    assert list(METRIC_LABELS) == list(METRICS)  # the page names every metric, in order
    metrics = json.loads((run_dir / "metrics.json").read_text())
    del metrics["parameters"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    row = row_from_run(run_dir)
    assert row["params_total"] is None and load_folder(run_dir).rows == [row]


def test_the_per_class_table_leaves_undefined_recall_and_precision_blank(run_dir):
    from imgclf.report.template import MISSING

    metrics = json.loads((run_dir / "metrics.json").read_text())
    never, predicted, missed = list(metrics["per_class"])[:3]
    metrics["per_class"][never].update(support=0, tp=0, fp=0, fn=0, precision=0.0,
                                       recall=0.0, f1=0.0)
    metrics["per_class"][predicted].update(support=0, tp=0, fp=2, fn=0, precision=0.0,
                                           recall=0.0, f1=0.0)
    # Images, none predicted as the class: no precision, a recall and F1 of 0.
    metrics["per_class"][missed].update(support=3, tp=0, fp=0, fn=3, precision=0.0,
                                        recall=0.0, f1=0.0)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    html = write_report(run_dir).read_text(encoding="utf-8")

    def cells(name):  # precision, recall, F1, images: the per-class table's row (8 cells)
        rows = re.findall(rf"<tr><td>{name}</td>(.*?)</tr>", html)
        row = next(r for r in rows if r.count("<td") == 7)
        return re.findall(r"<td[^>]*>([^<]*)</td>", row)[:4]

    assert cells(never) == [MISSING, MISSING, MISSING, "0"]
    assert cells(predicted) == ["0.00%", MISSING, MISSING, "0"]
    assert cells(missed) == [MISSING, "0.00%", "0.00%", "3"]
    assert "A class without images here has no recall or F1" in html
    assert "A class never predicted has no precision" in html


def test_run_report_notes_copies_of_training_images(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["copies_of_training_images"] == {"val": 0, "test": 0}
    assert "Exact copies of training images" not in write_report(run_dir).read_text()
    metrics["copies_of_training_images"] = {"val": 0, "test": 2}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert ("Exact copies of training images among the images it was checked on: 2 test."
            in write_report(run_dir).read_text())


def test_gallery_shows_most_confident_mistakes_first(run_dir, trained):
    """Made-up predictions with 14 mistakes: the 12 most confident are shown, in order."""
    test_images = sorted((trained[2] / "test").rglob("*.*")) * 2
    classes = list(CLASSES)
    with open(run_dir / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "predicted", "confidence", *classes])
        for index, path in enumerate(test_images):
            label = path.parent.name
            predicted = label if index < 6 else classes[(classes.index(label) + 1) % 3]
            confidence = 0.40 + index / 100
            probs = [confidence if c == predicted else (1 - confidence) / 2 for c in classes]
            writer.writerow([path, label, predicted, f"{confidence:.6f}", *probs])
    rows = read_predictions(run_dir)
    wrong = [r for r in rows if r["label"] != r["predicted"]]
    assert len(wrong) > 12

    page = parse(write_report(run_dir).read_text(encoding="utf-8"))

    assert len(page.text["gallery"]) == 12
    assert [caption.split()[-1] for caption in page.text["gallery"]] == expected_gallery(rows)
    first = page.text["gallery"][0]
    top = max(wrong, key=lambda r: float(r["confidence"]))
    assert f"true: {top['label']}" in first
    assert f"predicted: {top['predicted']} {100 * float(top['confidence']):.2f}%" in first


def test_compare_report_ranks_runs_and_shows_audit_and_failures(compare_dir):
    out = write_report(compare_dir, compare_dir / "out" / "page.html")

    html = out.read_text(encoding="utf-8")
    page = parse(html)
    assert_self_contained(html, page)
    ranked = [cell.split()[0] for cell in page.text["leaderboard"]]
    assert ranked == ["second", "first", "broken-run"]
    assert "Best run" in html and ">second<" in html
    assert 'class="badge"' in html and "no model" in html and "ModelError" in html
    # per-run subsections, best first, the failed run saying why it has no figures
    assert page.text["h3"].count("second") == 5 and page.text["h3"].count("broken-run") == 5
    assert "No results: the run failed" in html
    assert "Validation accuracy and loss of every run, overlaid" in html
    # the audit: counts per class and split, and the problems it found
    assert "Images per class and split" in html
    assert "train/red/cut.jpg" in html and "truncated file" in html
    assert "Exact duplicates across splits" in html and "test:test/blue/leak.png" in html
    assert "Near-duplicates across splits were not checked" in html
    # two finished runs: two of each figure, an overlay, and the galleries
    gallery = sum(len(expected_gallery(read_predictions(compare_dir / n)))
                  for n in ("first", "second"))
    assert len(page.images) == 1 + 2 * 3 + gallery


def set_metric(run: Path, key: str, value: float) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics[key] = value
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))


def test_compare_report_leaves_out_runs_on_other_data(compare_dir, trained, tmp_path):
    import yaml

    from imgclf.report.folders import load_folder

    for name, data in (("later", None), ("elsewhere", str(tmp_path / "other-data"))):
        run = shutil.copytree(trained[0], compare_dir / name)  # not in leaderboard.csv
        if data:
            config = yaml.safe_load((run / "config.yaml").read_text())
            config["data"]["data"] = data
            (run / "config.yaml").write_text(yaml.safe_dump(config))
    report = load_folder(compare_dir)
    ranked = [str(row["run"]) for row in report.rows]
    assert "later" in ranked and "elsewhere" not in ranked  # as compare ranks them
    assert (f"run elsewhere was trained on other data than the compared runs (data.data "
            f"{tmp_path / 'other-data'} against {trained[2]}): not ranked with them") \
        in report.notes


def test_compare_report_ranks_runs_as_compare_sort_did(compare_dir):
    """`compare --sort f1_macro`: the page ranks by macro F1 as leaderboard.csv does (the
    run with the lower accuracy first), a run leaderboard.csv does not list yet takes its
    place by macro F1 too, failed runs come last, and the caption names the key."""
    from imgclf.compare import row_from_run
    from imgclf.leaderboard import write_leaderboard

    for name, f1 in (("first", 0.9), ("second", 0.5)):
        set_metric(compare_dir / name, "f1_macro", f1)
    failed = {"run": "broken-run", "method": "transfer", "backbone": "nonesuch",
              "status": "failed", "error": "ModelError: no model 'nonesuch'"}
    write_leaderboard([failed, row_from_run(compare_dir / "second"),
                       row_from_run(compare_dir / "first")], compare_dir, "f1_macro")
    set_metric(shutil.copytree(compare_dir / "second", compare_dir / "late"), "f1_macro", 0.7)

    html = write_report(compare_dir, compare_dir / "out" / "page.html").read_text()

    page = parse(html)
    with open(compare_dir / "leaderboard.csv", newline="") as fh:
        assert [row["run"] for row in csv.DictReader(fh)] == ["first", "second", "broken-run"]
    assert [cell.split()[0] for cell in page.text["leaderboard"]] == [
        "first", "late", "second", "broken-run"]
    assert "Runs ranked by <code>f1_macro</code>" in html and "highest first" in html
    assert "ranked by accuracy" not in html


def test_compare_report_keeps_the_order_of_a_leaderboard_that_does_not_say_its_key(
        compare_dir):
    """An older leaderboard.csv has no ranked_by column: its order stands, as it was
    ranked, and the caption says so."""
    with open(compare_dir / "leaderboard.csv", newline="") as fh:
        rows = [row[:-1] for row in csv.reader(fh)]
    with open(compare_dir / "leaderboard.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)

    html = write_report(compare_dir, compare_dir / "out" / "page.html").read_text()

    assert [cell.split()[0] for cell in parse(html).text["leaderboard"]] == [
        "first", "second", "broken-run"]
    assert "Runs in the order of leaderboard.csv, which does not say what ranked them" in html


def test_compare_report_without_audit_falls_back_to_training_summary(compare_dir):
    (compare_dir / "audit.json").unlink()
    html = write_report(compare_dir).read_text(encoding="utf-8")
    assert "no audit.json" in html
    assert "Training found train/ (24 images, 3 classes)" in html
    assert "Skipped files" in html


def test_unreadable_audit_is_reported(compare_dir):
    (compare_dir / "audit.json").write_text("{not json")
    html = write_report(compare_dir).read_text(encoding="utf-8")
    assert "audit.json could not be read" in html
    assert "Training found" in html


def test_missing_figures_are_drawn_again_outside_the_run_folder(run_dir):
    for name in ("learning_curves.png", "confusion_matrix.png", "roc_curves.png"):
        (run_dir / name).unlink()
    before = sorted(p.name for p in run_dir.iterdir())

    html = write_report(run_dir).read_text(encoding="utf-8")

    page = parse(html)
    assert_self_contained(html, page)
    assert html.count("drawn again from") == 3
    assert len(page.images) == 3 + len(expected_gallery(read_predictions(run_dir)))
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([*before, "report.html"])


def test_unreadable_gallery_images_are_shown_as_unavailable(run_dir):
    rows = read_predictions(run_dir)
    for row in rows:
        row["path"] = str(run_dir / "gone" / Path(row["path"]).name)
    with open(run_dir / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    wanted = expected_gallery(rows)
    if not wanted:
        pytest.skip("the tiny model made no mistake, so there is no gallery to check")

    page = parse(write_report(run_dir).read_text(encoding="utf-8"))

    assert len(page.text["gallery"]) == len(wanted)
    assert all("image unavailable" in caption for caption in page.text["gallery"])
    assert len(page.images) == 3


def test_relative_image_paths_are_found_from_the_training_directory(run_dir, trained,
                                                                    monkeypatch):
    """predictions.csv paths are relative to where `imgclf train` ran: an ancestor here."""
    base = os.path.commonpath([run_dir, trained[2]])
    rows = read_predictions(run_dir)
    for row in rows:
        row["path"] = os.path.relpath(row["path"], base)
    with open(run_dir / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    monkeypatch.chdir(run_dir)  # not where training ran
    if not expected_gallery(rows):
        pytest.skip("the tiny model made no mistake, so there is no gallery to check")

    page = parse(write_report(run_dir).read_text(encoding="utf-8"))

    assert not any("unavailable" in caption for caption in page.text["gallery"])
    assert len(page.images) == 3 + len(page.text["gallery"])


def test_unfinished_run_folder_still_gets_a_report(tmp_path):
    run = tmp_path / "half"
    run.mkdir()
    (run / "config.yaml").write_text("method: scratch\nmodel:\n  name: small_cnn\n")
    (run / "history.csv").write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds,phase\n"
        "1,1.1,0.3,1.0,0.4,0.001,1.0,train\n2,0.9,0.5,0.95,0.5,0.001,1.0,train\n")

    html = write_report(run).read_text(encoding="utf-8")

    page = parse(html)
    assert page.text["h2"] == HEADINGS
    assert "no metrics.json: the run failed or has not finished" in html
    assert "drawn again from history.csv" in html  # the learning curves so far
    assert len(page.images) == 1


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "nowhere", r"does not exist"),
        (lambda p: p, r"neither a run folder .* nor a compare folder"),
        (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", r"is a file"),
        (lambda p: (p / "metrics.json").write_text("{oops") and p, r"metrics.json is not valid"),
        (lambda p: (p / "config.yaml").write_text("a: [") and p, r"config.yaml is not valid"),
        (lambda p: (p / "leaderboard.csv").write_text("x,y\n1,2\n") and p, r"no 'run' column"),
    ],
    ids=["missing", "empty", "file", "bad-metrics", "bad-config", "bad-leaderboard"],
)
def test_missing_or_broken_folder_raises_run_error(tmp_path, make, match):
    with pytest.raises(RunError, match=match) as info:
        write_report(make(tmp_path))
    assert "\n" not in str(info.value)  # printed as one line by the command line
    assert not (tmp_path / "report.html").exists()


def test_cli_writes_report_and_prints_its_path(run_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    report_cli.add_parser(subparsers)
    for action in subparsers.choices["report"]._actions:
        assert action.help, f"option {action.dest} has no help text"
    out = tmp_path / "reports" / "run.html"
    args = parser.parse_args(["report", str(run_dir), "--out", str(out)])

    assert args.func(args) == 0

    assert capsys.readouterr().out.strip() == str(out)
    assert out.is_file() and not (run_dir / "report.html").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None,
                    reason="Chromium is not installed (apt-get install chromium): the report "
                           "is not rendered to a screenshot")
def test_report_renders_in_headless_chromium(compare_dir, tmp_path):
    out = write_report(compare_dir)
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=1280,4000", out.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 0, result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        # Not a blank page: the dark header and the plots give many distinct colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50


@pytest.mark.parametrize("tta", [True, False])
def test_run_report_says_whether_the_mirror_image_was_averaged_in(run_dir, tta):
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps(dict(metrics, tta=tta)))
    html = write_report(run_dir).read_text(encoding="utf-8")
    assert ("(12 images, each averaged with its mirror image)" in html) is tta


def test_report_output_is_checked_before_the_page_is_drawn(run_dir, trained, tmp_path):
    metrics = (run_dir / "metrics.json").read_bytes()
    for out, error in ((run_dir / "metrics.json", "is written as .html or .htm"),
                       (tmp_path / "report", "is written as .html or .htm"),
                       (trained[2] / "report.html", "would be inside the dataset")):
        with pytest.raises(ConfigError, match=error):
            write_report(run_dir, out)
    assert (run_dir / "metrics.json").read_bytes() == metrics
    assert not (trained[2] / "report.html").exists()
    assert write_report(run_dir, tmp_path / "r.HTML").is_file()


def test_report_never_writes_over_a_users_file(run_dir, tmp_path, capsys):
    notes, mine = run_dir / "report.html", tmp_path / "my.html"
    notes.write_text("<p>my notes</p>\n")
    mine.write_text("<p>mine</p>\n")
    for argv, out in (([str(run_dir)], notes), ([str(run_dir), "--out", str(mine)], mine)):
        assert main(["report", *argv, "-q"]) == 2
        err = capsys.readouterr().err
        assert (f"error: {out} exists and is not a report that imgclf wrote; give the output "
                "another name, or move that file away.") in err
    assert notes.read_text() == "<p>my notes</p>\n" and mine.read_text() == "<p>mine</p>\n"
    # imgclf's own report is written again, wherever it is.
    for out in (notes, mine):
        out.unlink()
        for _ in range(2):
            assert write_report(run_dir, out) == out
