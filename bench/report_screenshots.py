"""Regenerate the report screenshots in docs/images/ (HTML in headless Chromium, PDF page 1 with pdftoppm).

    python -m bench.report_screenshots            # writes docs/images/report-*.png

Three reports, each from a synthetic federation built with the real ledger APIs
(:func:`privfl.privacy.report.synthetic.build_synthetic_federation`) and the run config a
history would carry (no training: the figures are the ledgers' own, and no accuracy is made up):

- ``quickstart``: 10 owners x 20 rounds of record-level DP-SGD (sigma 2.3, budget 8, delta 1e-5);
- ``digits-secagg``: the same owners also charged owner-level DP-FedAvg rounds (Poisson
  owner sampling, sigma 0.5, budget 100) with ``secure-aggregation = true``, so the owner-level
  epsilon is weak and the banner is amber, as in the real digits-secagg run;
- ``owner-statement``: one owner's statement from the quickstart report.

Needs Chromium (``chromium``) and poppler's ``pdftoppm``; images are reduced to at most 256
colours (Pillow) so each stays well under 400 KB.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
WINDOW = "1280,2000"
MAX_BYTES = 400_000


def _history(folder: Path, run_id: str, experiment: str, **config) -> Path:
    history = {"experiment": experiment, "status": "finished", "rounds": [],
               "config": {"experiment-id": run_id, "dp": True, "delta": 1e-5, "purpose": "privfl simulation",
                          **config}}
    path = folder / "history.json"
    path.write_text(json.dumps(history), encoding="utf-8")
    return path


def _small_png(source: Path, target: Path) -> None:
    try:
        from PIL import Image
    except ImportError:
        shutil.copyfile(source, target)
        return
    image = Image.open(source).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def _screenshot_html(html: Path, target: Path, scratch: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    raw = scratch / f"{target.stem}-raw.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={raw}", f"--window-size={WINDOW}", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    _small_png(raw, target)


def _screenshot_pdf(pdf: Path, target: Path, scratch: Path) -> None:
    tool = shutil.which("pdftoppm")
    if tool is None:
        raise SystemExit("pdftoppm is not installed (apt-get install poppler-utils)")
    stem = scratch / f"{target.stem}-raw"
    subprocess.run([tool, "-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(stem)],
                   check=True, capture_output=True, timeout=120)
    _small_png(stem.with_suffix(".png"), target)


def main() -> None:
    from privfl.privacy.report import build_report
    from privfl.privacy.report.run import write_signed
    from privfl.privacy.report.synthetic import build_synthetic_federation

    IMAGES.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="privfl-screenshots-"))
    try:
        quick = build_synthetic_federation(scratch / "quickstart", owners=10, rounds=20, noise_multiplier=2.3,
                                           batch_size=72, epsilon_budget=8.0, accountant="pld",
                                           run_id="quickstart-synthetic", purpose="privfl simulation")
        history = _history(scratch / "quickstart", quick.run_id, "quickstart", **{"federated-evaluation": "last"})
        report = build_report(sorted(quick.ledgers.glob("*.db")), keys=quick.keys, history=history,
                              title="Privacy budget report: quickstart (synthetic ledgers, 10 data owners)")
        secagg = build_synthetic_federation(scratch / "secagg", owners=10, rounds=20, noise_multiplier=2.3,
                                            batch_size=72, epsilon_budget=8.0, owner_level="poisson",
                                            owner_noise_multiplier=0.5, owner_epsilon_budget=100.0,
                                            run_id="digits-secagg-synthetic", purpose="privfl simulation")
        history2 = _history(scratch / "secagg", secagg.run_id, "digits-secagg",
                            **{"owner-dp": True, "secure-aggregation": True, "federated-evaluation": "off"})
        report2 = build_report(sorted(secagg.ledgers.glob("*.db")), keys=secagg.keys, history=history2,
                               title="Privacy budget report: digits-secagg (synthetic ledgers, 10 data owners)")
        statement = report.for_owner(quick.owners[3])
        for name, built in (("quickstart", report), ("digits-secagg", report2), ("owner-statement", statement)):
            out = scratch / name
            out.mkdir(exist_ok=True)
            html, pdf = write_signed(built, [out / "report.html", out / "report.pdf"])
            _screenshot_html(html, IMAGES / f"report-{name}.png", scratch)
            _screenshot_pdf(pdf, IMAGES / f"report-{name}-pdf-1.png", scratch)
            for image in (IMAGES / f"report-{name}.png", IMAGES / f"report-{name}-pdf-1.png"):
                size = image.stat().st_size
                print(f"{image.relative_to(IMAGES.parent.parent)}: {size / 1000:.0f} KB"
                      + ("" if size < MAX_BYTES else "  (over 400 KB)"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
