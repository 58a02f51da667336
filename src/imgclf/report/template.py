"""The page skeleton, its stylesheet, and small helpers that turn values into HTML.

Everything a helper returns is HTML that is safe to concatenate: text that came from a
file (class names, paths, errors, config) is escaped here, once, on the way in. The page
has no script and loads nothing: images are data URIs and the CSS is inline, so the file
can be mailed, archived or opened offline and still look the same.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape
from string import Template

from imgclf.leaderboard import as_number

MISSING = "\u2013"
"""Shown in a table cell for a value that is absent or undefined (an en dash)."""

CSS = """
:root {
  --fg: #1f2933; --muted: #5f6b7a; --line: #dde3ea; --soft: #f4f6f9;
  --accent: #1d4ed8; --good: #e7f6ec; --bad: #b42318; --warn-bg: #fff8e6; --warn: #d97706;
}
* { box-sizing: border-box; }
body {
  margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    sans-serif;
}
header.page { background: #0f172a; color: #f8fafc; padding: 28px 0 24px; }
header.page .inner, main, nav.toc .inner, footer .inner {
  max-width: 1200px; margin: 0 auto; padding: 0 32px;
}
header.page h1 { margin: 0 0 4px; font-size: 26px; font-weight: 650; }
header.page p { margin: 2px 0; color: #cbd5e1; }
header.page code { color: #e2e8f0; }
nav.toc { border-bottom: 1px solid var(--line); background: var(--soft); }
nav.toc ol { display: flex; flex-wrap: wrap; gap: 4px 20px; margin: 0; padding: 10px 0;
  list-style: none; }
nav.toc a { color: var(--accent); text-decoration: none; font-size: 14px; }
nav.toc a:hover { text-decoration: underline; }
section { padding: 8px 0 16px; border-bottom: 1px solid var(--line); }
h2 { font-size: 21px; margin: 24px 0 8px; }
h3 { font-size: 17px; margin: 20px 0 6px; }
h4 { font-size: 15px; margin: 14px 0 4px; color: var(--muted); }
p.muted, .muted { color: var(--muted); }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-size: 0.92em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0 4px; }
.card { background: rgba(255, 255, 255, 0.06); border: 1px solid #334155; border-radius: 8px;
  padding: 8px 16px; min-width: 150px; }
.card .label { font-size: 12px; text-transform: uppercase; letter-spacing: 0.04em;
  color: #94a3b8; }
.card .value { font-size: 22px; font-weight: 650; color: #fff; }
.table-wrap { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 14px; }
caption { caption-side: bottom; text-align: left; font-size: 13px; color: var(--muted);
  padding-top: 6px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover td { background: #f8fafc; }
tr.best td { background: var(--good); }
tr.failed td { color: var(--bad); }
tr.total td { font-weight: 600; }
tr.total td:first-child { white-space: nowrap; }
.badge { display: inline-block; font-size: 11px; font-weight: 600; text-transform: uppercase;
  letter-spacing: 0.03em; padding: 0 6px; border-radius: 9px; background: #fee4e2;
  color: var(--bad); cursor: help; }
.run-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr));
  gap: 0 24px; }
.run-grid figure.plot img { width: 100%; }
.note { background: var(--warn-bg); border-left: 4px solid var(--warn); padding: 8px 12px;
  margin: 10px 0; border-radius: 0 6px 6px 0; }
.note.error { background: #fef3f2; border-left-color: var(--bad); }
figure.plot { margin: 8px 0 16px; }
figure.plot img { max-width: 100%; height: auto; border: 1px solid var(--line);
  border-radius: 6px; }
figure figcaption { font-size: 13px; color: var(--muted); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(156px, 1fr));
  gap: 14px; margin: 8px 0 16px; }
.gallery figure { margin: 0; padding: 8px; border: 1px solid var(--line); border-radius: 8px;
  background: #fff; }
.gallery img, .gallery .unavailable { display: block; width: 128px; height: 128px;
  margin: 0 auto 6px; border-radius: 4px; }
.gallery .unavailable { background: var(--soft); color: var(--muted); font-size: 12px;
  display: flex; align-items: center; justify-content: center; text-align: center;
  padding: 8px; }
.gallery figcaption { line-height: 1.35; color: var(--fg); }
.gallery .true { color: #067647; }
.gallery .pred { color: var(--bad); }
.gallery .file { color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
details { border: 1px solid var(--line); border-radius: 6px; margin: 8px 0; padding: 0 12px; }
details > summary { cursor: pointer; padding: 8px 0; font-weight: 600; }
details[open] > summary { border-bottom: 1px solid var(--line); margin-bottom: 8px; }
details .detail { font-weight: 400; color: var(--muted); }
pre { background: var(--soft); padding: 10px 12px; border-radius: 6px; overflow-x: auto;
  font-size: 13px; line-height: 1.4; }
ul.problems li { margin: 2px 0; }
footer { color: var(--muted); font-size: 13px; padding: 16px 0 32px; }
@media print {
  nav.toc { display: none; }
  header.page { background: #fff; color: var(--fg); }
  section { break-inside: avoid-page; }
}
"""

PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="imgclf $version">
<title>$title</title>
<style>$css</style>
</head>
<body>
<header class="page"><div class="inner">
$header
</div></header>
<nav class="toc"><div class="inner"><ol>
$toc
</ol></div></nav>
<main>
$sections
</main>
<footer><div class="inner">$footer</div></footer>
</body>
</html>
"""
)

START = PAGE.template[:PAGE.template.index("$version")]
"""How every report begins, up to imgclf's version: how imgclf tells its own report from
a user's page of the same name before writing over it."""


def page(title: str, header: str, toc: Sequence[tuple[str, str]], sections: Iterable[str],
         footer: str, version: str) -> str:
    """The whole document; ``toc`` is (anchor id, heading) per section."""
    links = "\n".join(f'<li><a href="#{anchor}">{escape(text)}</a></li>' for anchor, text in toc)
    return PAGE.substitute(
        title=escape(title), css=CSS, header=header, toc=links,
        sections="\n".join(sections), footer=footer, version=escape(version),
    )


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{escape(title)}</h2>\n{body}\n</section>'


def text(value: object) -> str:
    """Any value as escaped text."""
    return escape(str(value))


def paragraph(html: str, css_class: str | None = None) -> str:
    attr = f' class="{css_class}"' if css_class else ""
    return f"<p{attr}>{html}</p>"


def note(html: str, error: bool = False) -> str:
    """A highlighted remark: something the reader should know before trusting a number."""
    return f'<div class="note{" error" if error else ""}">{html}</div>'


def details(summary_html: str, body_html: str, open_: bool = False) -> str:
    return (f"<details{' open' if open_ else ''}><summary>{summary_html}</summary>\n"
            f"{body_html}\n</details>")


def preformatted(content: str) -> str:
    return f"<pre>{escape(content)}</pre>"


def bullet_list(items_html: Iterable[str], css_class: str | None = None) -> str:
    attr = f' class="{css_class}"' if css_class else ""
    return f"<ul{attr}>" + "".join(f"<li>{item}</li>" for item in items_html) + "</ul>"


def card(label: str, value_html: str) -> str:
    return (f'<div class="card"><div class="label">{escape(label)}</div>'
            f'<div class="value">{value_html}</div></div>')


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def plot_figure(uri: str, alt: str, caption_html: str | None = None) -> str:
    caption = f"<figcaption>{caption_html}</figcaption>" if caption_html else ""
    return f'<figure class="plot"><img src="{uri}" alt="{escape(alt)}">{caption}</figure>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = (),
          row_classes: Sequence[str | None] | None = None, caption_html: str | None = None) -> str:
    """A table of pre-rendered HTML cells; columns whose index is in ``numeric`` align right."""
    numeric = set(numeric)

    def cls(index: int) -> str:
        return ' class="num"' if index in numeric else ""

    head = "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        row_cls = row_classes[r] if row_classes and r < len(row_classes) else None
        attr = f' class="{row_cls}"' if row_cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td{cls(i)}>{cell}</td>"
                                             for i, cell in enumerate(row)) + "</tr>")
    caption = f"<caption>{caption_html}</caption>" if caption_html else ""
    return (f'<div class="table-wrap"><table>{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


# --- numbers --------------------------------------------------------------------------------


def percent(value: object) -> str:
    """A fraction in 0..1 as a percentage with 2 decimals: 0.93125 -> '93.13%'."""
    number = as_number(value)
    return MISSING if number is None else f"{100 * number:.2f}%"


def decimal(value: object, digits: int = 3) -> str:
    number = as_number(value)
    return MISSING if number is None else f"{number:.{digits}f}"


def integer(value: object) -> str:
    number = as_number(value)
    return MISSING if number is None else f"{round(number):,}"


def count(value: object) -> str:
    """A large count in short form: 950 -> '950', 36291 -> '36.3 k', 4012345 -> '4.01 M'."""
    number = as_number(value)
    if number is None:
        return MISSING
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= limit:
            digits = f"{number / limit:.3g}" if number < 100 * limit else f"{number / limit:.0f}"
            return f"{digits}\u00a0{suffix}"
    return f"{round(number)}"


def seconds(value: object) -> str:
    """A duration: '42.0 s', '12 min 5 s', '2 h 03 min'."""
    number = as_number(value)
    if number is None:
        return MISSING
    if number < 60:
        return f"{number:.1f} s"
    minutes, secs = divmod(round(number), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
