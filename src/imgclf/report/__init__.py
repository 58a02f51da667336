"""Self-contained HTML reports of a training run or a comparison of runs.

``write_report(folder)`` turns a run folder (``imgclf train``) or a compare folder
(``imgclf compare``) into one HTML file with every figure embedded, to read offline, archive
or send. The page is built by :mod:`imgclf.report.html` on the skeleton and stylesheet of
:mod:`imgclf.report.template`.
"""

from __future__ import annotations

from imgclf.report.html import write_report

__all__ = ["write_report"]
