"""The HTML report of a run folder (``imgclf train``) or a compare folder (``imgclf compare``).

:func:`write_report` reads what those commands leave behind and writes one self-contained
page: dataset summary, leaderboard, learning curves, confusion matrices, ROC curves,
per-class scores, the most confident mistakes (as thumbnails) and each run's configuration.

The work is split by concern: :mod:`~imgclf.report.folders` reads the folder into plain
dataclasses, :mod:`~imgclf.report.sections` turns them into the page's sections (with
:mod:`~imgclf.report.figures` for the pictures and :mod:`~imgclf.report.dataset` for the
data tables), and :mod:`~imgclf.report.template` holds the skeleton and the stylesheet.
This module puts them together and writes the file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path

from imgclf import __version__
from imgclf.errors import RunError
from imgclf.paths import check_output_file, path_argument, run_datasets, write_text
from imgclf.report import sections as s
from imgclf.report import template as t
from imgclf.report.folders import Report, load_folder

log = logging.getLogger(__name__)


def write_report(folder: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the HTML report of a run or compare ``folder``; returns its path.

    ``out`` defaults to ``folder/report.html``. The file embeds every image as a data URI
    and needs no network to view. The folder itself is never written to, except for
    ``report.html`` when ``out`` is not given: figures drawn again go to a temporary folder.

    Raises:
        ConfigError: ``out`` is not an .html name, would replace one of the files imgclf
            wrote into a run or compare folder or a file that is not an imgclf report, or
            lies inside a dataset the runs used.
        RunError: ``folder`` is missing, is neither a run folder (metrics.json or
            config.yaml) nor a compare folder (leaderboard.csv), or its essential files
            cannot be read.
    """
    folder = path_argument(folder, "the folder to report on", RunError)
    report = load_folder(folder)
    out_path = check_output_file(out if out is not None else folder / "report.html",
                                 (".html", ".htm"), run_datasets(folder), "report.html",
                                 starts=(t.START,), what="a report")
    with tempfile.TemporaryDirectory(prefix="imgclf-report-") as tmp:
        page = render(report, Path(tmp))
    write_text(out_path, page)
    log.info("report of %s written to %s (%.1f MB)", folder, out_path, len(page) / 1e6)
    return out_path


def render(report: Report, tmp: Path) -> str:
    """The HTML page of ``report``; figures that must be drawn again go to ``tmp``."""
    bodies = {
        "dataset": s.dataset_section(report),
        "leaderboard": s.leaderboard_section(report),
        "learning-curves": s.learning_curves_section(report, tmp),
        "confusion-matrices": s.confusion_matrices_section(report, tmp),
        "roc-curves": s.roc_curves_section(report, tmp),
        "per-class": s.per_class_section(report),
        "mistakes": s.mistakes_section(report),
        "configuration": s.configuration_section(report),
    }
    return t.page(
        title=s.title(report),
        header=s.header(report),
        toc=s.SECTIONS,
        sections=[t.section(anchor, title, bodies[anchor]) for anchor, title in s.SECTIONS],
        footer=(f"Written by imgclf {t.text(__version__)} on "
                f"{datetime.now().strftime('%Y-%m-%d %H:%M')} from <code>"
                f"{t.text(report.folder.resolve())}</code>. Self-contained: every image is "
                "embedded and nothing is loaded from the network."),
        version=__version__,
    )
