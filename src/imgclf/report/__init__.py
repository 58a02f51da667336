"""Self-contained HTML reports of a training run or a comparison of runs.

``write_report(folder)`` turns a run folder (``imgclf train``) or a compare folder
(``imgclf compare``) into one HTML file with every figure embedded, to read offline, archive
or send.

Modules, one concern each: :mod:`~imgclf.report.folders` reads the folder into dataclasses;
:mod:`~imgclf.report.sections` renders the page's sections, with
:mod:`~imgclf.report.figures` (PNG figures, the gallery of mistakes) and
:mod:`~imgclf.report.dataset` (audit and training-data tables);
:mod:`~imgclf.report.template` holds the skeleton, the stylesheet and the value formatters;
:mod:`~imgclf.report.html` assembles the page and writes it.
"""

from __future__ import annotations

from imgclf.report.html import write_report

__all__ = ["write_report"]
