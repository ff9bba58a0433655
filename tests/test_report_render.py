"""The HTML report renders in a headless browser, the PDF opens, a tampered report says so on page 1.

These need outside programs: Debian's ``chromium`` (HTML) and poppler's ``pdftoppm`` or the
``pypdf`` package (PDF); ``.ci/run`` installs chromium and poppler-utils.  Each test skips,
saying why, only when its program cannot be found.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from privfl.privacy.report import build_report, write_html, write_pdf, write_run_report
from tests.test_report import _flip_byte, build_small_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("render-run")
    build_small_run(folder)
    return folder


@pytest.fixture(scope="module")
def tampered_folder(tmp_path_factory, run_folder) -> Path:
    folder = tmp_path_factory.mktemp("render-tampered") / "run"
    shutil.copytree(run_folder, folder)
    _flip_byte(folder / "ledgers" / "clinic-c.db", "clinic-c", 2)
    return folder


def _chromium(browser: str, tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    command = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars",
               "--disable-extensions", f"--user-data-dir={tmp_path / 'chromium-profile'}",
               "--enable-logging=stderr", "--v=0",
               # Any attempt to reach the network fails loudly (and the test fails on it).
               "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def _page_errors(stderr: str) -> list[str]:
    """Console errors and failed loads the page caused (not chromium's own dbus/GPU chatter)."""
    markers = ("CONSOLE", "Uncaught", "Failed to load resource", "net::ERR_", "Refused to")
    return [line for line in stderr.splitlines() if any(m in line for m in markers)]


def test_html_renders_in_headless_chromium(run_folder, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no Chromium binary found (looked for {', '.join(BROWSERS)}); install Debian's chromium "
                    "(apt-get install chromium) to run this test")
    from PIL import Image

    (html,) = write_run_report(run_folder, formats=["html"], out_dir=tmp_path)
    url = html.resolve().as_uri()
    screenshot = tmp_path / "report.png"
    shot = _chromium(browser, tmp_path, url, f"--screenshot={screenshot}", "--window-size=1280,2400")
    assert shot.returncode == 0, shot.stderr[-3000:]
    assert _page_errors(shot.stderr) == [], _page_errors(shot.stderr)
    with Image.open(screenshot) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50  # text, tables and plots were drawn, not a blank page
    dom = _chromium(browser, tmp_path, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-3000:]
    assert _page_errors(dom.stderr) == []
    assert "Privacy budget report" in dom.stdout and 'id="verdict"' in dom.stdout
    assert dom.stdout.count("<img") == 4 and "INTACT" in dom.stdout
    print(f"\nscreenshot of the rendered report: {screenshot}")


def test_tampered_report_renders_with_the_alarm_first(tampered_folder, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no Chromium binary found (looked for {', '.join(BROWSERS)}); install Debian's chromium")
    report = build_report(sorted((tampered_folder / "ledgers").glob("*.db")), keys=tampered_folder / "keys")
    html = write_html(report, tmp_path / "tampered.html")
    dom = _chromium(browser, tmp_path, html.resolve().as_uri(), "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-3000:]
    body = dom.stdout[dom.stdout.index("<body"):]
    first = body[: body.index("<h1>")]  # everything before the title
    assert "TAMPERING OR DAMAGE DETECTED" in first and "clinic-c.db" in first and "entry 2" in first


def _pdf_text_and_pages(path: Path, tmp_path: Path) -> tuple[str | None, int]:
    """(text of page 1 or None, number of pages) with pypdf if installed, else poppler's tools."""
    try:
        import pypdf
    except ImportError:
        pypdf = None
    if pypdf is not None:
        reader = pypdf.PdfReader(str(path))
        return reader.pages[0].extract_text(), len(reader.pages)
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        pytest.skip("neither pypdf nor poppler's pdftoppm is installed (apt-get install poppler-utils)")
    done = subprocess.run([pdftoppm, "-png", "-r", "40", str(path), str(tmp_path / "page")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pages = sorted(tmp_path.glob("page*.png"))
    assert pages and all(p.read_bytes().startswith(b"\x89PNG") for p in pages)
    text = None
    if shutil.which("pdftotext"):
        done = subprocess.run(["pdftotext", "-f", "1", "-l", "1", "-layout", str(path), "-"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        text = done.stdout
    return text, len(pages)


def test_pdf_opens_and_holds_text_and_figures(run_folder, tmp_path):
    report = build_report(sorted((run_folder / "ledgers").glob("*.db")), history=run_folder / "history.json",
                          keys=run_folder / "keys")
    pdf = write_pdf(report, tmp_path / "report.pdf")
    assert pdf.read_bytes().startswith(b"%PDF-")
    text, pages = _pdf_text_and_pages(pdf, tmp_path)
    assert pages >= 3
    if text is not None:
        assert "INTACT" in text and "NOT INTACT" not in text and "Privacy budget report" in text


def test_tampered_pdf_says_so_on_page_one(tampered_folder, tmp_path):
    report = build_report(sorted((tampered_folder / "ledgers").glob("*.db")), keys=tampered_folder / "keys")
    pdf = write_pdf(report, tmp_path / "tampered.pdf")
    text, _ = _pdf_text_and_pages(pdf, tmp_path)
    if text is None:
        pytest.skip("no pdftotext to read the page's text (the PDF itself opened)")
    assert "NOT INTACT" in text and "TAMPERING" in text and "clinic-c" in text


# --------------------------------------------------------------------------- fonts and sizes


def _content_streams(data: bytes) -> list[bytes]:
    import re
    import zlib

    streams = []
    for match in re.finditer(rb"stream\n(.*?)\nendstream", data, re.S):
        try:
            streams.append(zlib.decompress(match.group(1)))
        except zlib.error:
            continue
    return streams


def test_pdf_embeds_its_fonts_and_sets_no_text_below_9_pt(run_folder, tmp_path):
    import re

    from privfl.privacy.report import pdf_report

    assert min(style["size"] for style in pdf_report.STYLES.values()) >= pdf_report.MIN_FONT_PT >= 9
    assert pdf_report.FOOTER_PT >= 9
    report = build_report(sorted((run_folder / "ledgers").glob("*.db")), history=run_folder / "history.json",
                          keys=run_folder / "keys")
    pdf = write_pdf(report, tmp_path / "report.pdf")
    data = pdf.read_bytes()
    fonts = re.findall(rb"/Type /Font /Subtype /(\w+)", data)
    assert fonts and set(fonts) <= {b"Type0", b"CIDFontType2"}  # no Type 1 / Type 3 / base-14 fonts
    assert data.count(b"/FontFile2") == fonts.count(b"CIDFontType2") >= 2  # each TrueType font embedded
    sizes = [float(m) for stream in _content_streams(data) for m in re.findall(rb"/F\d+ ([\d.]+) Tf", stream)]
    assert sizes and min(sizes) >= 9.0
    pdffonts = shutil.which("pdffonts")
    if pdffonts:
        listing = subprocess.run([pdffonts, str(pdf)], capture_output=True, text=True, timeout=60).stdout
        rows = [row for row in listing.splitlines()[2:] if row.strip()]
        assert rows and all(row.split("Identity-H", 1)[1].split()[0] == "yes" for row in rows), listing
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, timeout=60).stdout
        assert "What epsilon means" in text and "\u03b5" in text  # Greek letters kept, text extractable
