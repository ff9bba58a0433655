"""Issue 22: one section model rendered twice -- the HTML and the PDF have the same sections, in the same order.

Both renderers walk :func:`privfl.privacy.report.sections.build_sections`; this test reads the
two outputs back (the HTML's ``<h2>`` headings; the PDF's section headings, the lines set in the
13-pt heading style, found with poppler's word boxes, and its text through the helper of
tests/test_report_decision.py) and requires the same list.  A section written in one renderer
only, or a heading worded differently in one format, fails it.  The run is the small real run
of tests/test_report.py, with its history and federated evaluation, so every optional section
(evaluation, privacy and utility) is present too.
"""

from __future__ import annotations

import html as html_lib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from privfl.privacy.report import build_report, render_html, write_pdf
from privfl.privacy.report.sections import build_sections
from tests.test_report import build_small_run
from tests.test_report_decision import _pdf_text

PDF_SECTION_PT = 13.0  # pdf_report.STYLES["h1"]: a section heading (subheadings are 11 pt, the title 16 pt)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = build_small_run(tmp_path_factory.mktemp("sections-run"))
    return build_report(sorted(run["ledgers"].glob("*.db")), history=run["history"], keys=run["keys"])


def _html_headings(html: str) -> list[str]:
    return [html_lib.unescape(re.sub(r"<[^>]+>", "", h)).strip() for h in re.findall(r"<h2[^>]*>(.*?)</h2>", html, re.S)]


def _pdf_headings(path: Path) -> list[str]:
    """The lines of the PDF set in the section-heading size (the banner's verdict, set alike, excluded by the caller)."""
    if shutil.which("pdftotext") is None:
        pytest.skip("poppler's pdftotext is not installed (apt-get install poppler-utils)")
    done = subprocess.run(["pdftotext", "-bbox-layout", str(path), "-"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    headings = []
    for y_min, y_max, words in re.findall(r'<line xMin="[^"]+" yMin="([^"]+)" xMax="[^"]+" yMax="([^"]+)">(.*?)</line>',
                                          done.stdout, re.S):
        height = float(y_max) - float(y_min)  # DejaVu Sans: ascent + descent = 1.164 em
        if abs(height / 1.164 - PDF_SECTION_PT) < 0.5:
            headings.append(html_lib.unescape(" ".join(re.findall(r">([^<]*)</word>", words))))
    return headings


def test_the_html_and_the_pdf_have_the_same_section_headings_in_the_same_order(report, tmp_path):
    from privfl.privacy.report.html_report import banner

    html_headings = _html_headings(render_html(report, figures=[]))
    path = write_pdf(report, tmp_path / "report.pdf", figures=[])
    verdict = banner(report)[1]
    pdf_headings = [h for h in _pdf_headings(path) if h != verdict]

    assert pdf_headings == html_headings
    model = [s.heading for s in build_sections(report)]
    assert {"What to decide", "At a glance", "Owners (highest share of budget used first)", "Ledger integrity",
            "GDPR", "Per owner", "How to check"} <= set(model)
    assert any(h.startswith("Federated evaluation") for h in model)  # the optional sections are there too
    assert any(h.startswith("Privacy and utility") for h in model)
    assert html_headings == model

    # and through the plain text of the PDF: each heading is a line of its own, in the same order
    lines = [" ".join(line.split()) for line in _pdf_text(path).splitlines()]
    at = 0
    for heading in model:
        assert heading in lines[at:], heading
        at = lines.index(heading, at) + 1
