"""The owner's processing record: what a privfl report cannot learn from a ledger.

A ledger proves what was released, under which guarantee, and when.  It cannot say
who the controller is, on what legal basis the data is processed, who the data
subjects are or how long anything is kept: those are declared by the data owner in
a TOML file (the record of processing activities of GDPR Art. 30(1), plus who set the
privacy budget and why, as an epsilon registry asks).  A report shows every value
from this file marked *owner-declared*.

The keys are documented, with an example, in ``docs/report-schema.md``; the example
ships as ``privfl/privacy/report/example-processing-record.toml``
(:func:`example_path`).  Unknown keys and values of the wrong type are refused with
a message that names them, so a typo cannot silently drop a declaration.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXAMPLE_FILE = "example-processing-record.toml"

STR, STR_LIST, NUMBER, INT, DATE = "text", "list of texts", "number", "integer", "date"

# section -> key -> (type, GDPR reference or meaning). "" is the top level.
FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "": {
        "record_id": (STR, "the controller's own reference for this record of processing"),
        "owner_ids": (STR_LIST, "ledger owner ids this record covers; omitted: every owner in the report"),
        "last_reviewed": (DATE, "when the record was last reviewed"),
    },
    "controller": {
        "name": (STR, "Art. 30(1)(a) name of the controller"),
        "address": (STR, "Art. 30(1)(a) postal address"),
        "contact": (STR, "Art. 30(1)(a) contact details"),
        "representative": (STR, "Art. 30(1)(a), Art. 27 the controller's representative in the EU, if any"),
        "joint_controllers": (STR_LIST, "Art. 30(1)(a), Art. 26 joint controllers, if any"),
    },
    "data_protection_officer": {
        "name": (STR, "Art. 30(1)(a), Art. 37 the data protection officer"),
        "contact": (STR, "Art. 37(7) the DPO's contact details"),
    },
    "processing": {
        "purpose": (STR, "Art. 30(1)(b) purposes of the processing"),
        "purposes": (STR_LIST, "Art. 5(1)(b), 30(1)(b) the purposes ledger entries may be signed with, verbatim (the "
                               "run config's 'purpose'); an entry signed with another purpose is flagged"),
        "legal_basis": (STR, "Art. 6(1) (and Art. 9(2) for special categories) legal basis"),
        "data_subjects": (STR_LIST, "Art. 30(1)(c) categories of data subjects"),
        "data_categories": (STR_LIST, "Art. 30(1)(c) categories of personal data"),
        "special_categories": (STR_LIST, "Art. 9(1) special categories of personal data, if any"),
        "requester": (STR, "who asked for the processing (the coordinator or research group that runs the federation)"),
        "recipients": (STR_LIST, "Art. 30(1)(d) categories of recipients"),
        "third_country_transfers": (STR_LIST, "Art. 30(1)(e) transfers to third countries and their safeguards"),
        "retention": (STR, "Art. 30(1)(f) time limits for erasure"),
        "security_measures": (STR_LIST, "Art. 30(1)(g), Art. 32(1) technical and organisational measures"),
        "dpia": (STR, "Art. 35 data protection impact assessment reference, if one was made"),
    },
    "privacy_budget": {
        "set_by": (STR, "who set the epsilon budget (epsilon registry)"),
        "decided_on": (DATE, "when the budget was decided"),
        "rationale": (STR, "why this epsilon and delta (epsilon registry)"),
        "epsilon": (NUMBER, "the budget as decided; compared with the budget the ledger's entries state"),
        "delta": (NUMBER, "the delta as decided; compared with the ledger's"),
        "period": (STR, "the time period the budget covers, e.g. the lifetime of the data set"),
        "when_exhausted": (STR, "what happens when the budget is spent"),
    },
    "dataset": {
        "name": (STR, "the data set the owner trains on"),
        "description": (STR, "what one record is and what it holds"),
        "records": (INT, "number of records (the privacy unit is one of them)"),
        "source": (STR, "where the data comes from"),
    },
}
SECTIONS = tuple(s for s in FIELDS if s)


class ProcessingRecordError(ValueError):
    """A processing record that cannot be used; the message says what is wrong and how to mend it."""


@dataclass(frozen=True)
class ProcessingRecord:
    """One owner-declared record of processing (values as in the file, dates as ISO text)."""

    values: dict[str, Any]  # section -> {key: value}; top-level keys under ""
    source: str = ""
    owner_ids: tuple[str, ...] = field(default=())  # empty: applies to every owner

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.values.get(section, {}).get(key, default)

    def covers(self, owner_id: str) -> bool:
        return not self.owner_ids or owner_id in self.owner_ids

    def declared_purposes(self) -> tuple[str, ...] | None:
        """The purposes ledger entries may carry: ``[processing] purposes``, else ``purpose``; None if neither."""
        listed = self.get("processing", "purposes")
        if listed:
            return tuple(listed)
        single = self.get("processing", "purpose")
        return (single,) if single else None

    def to_dict(self) -> dict[str, Any]:
        top = dict(self.values.get("", {}))
        data: dict[str, Any] = {"source": self.source, **top}
        for section in SECTIONS:
            if section in self.values:
                data[section] = dict(self.values[section])
        return data


def example_path() -> Path:
    """The example processing record shipped with privfl (documented in docs/report-schema.md)."""
    return Path(__file__).resolve().parent / EXAMPLE_FILE


def load_processing_record(source: str | Path | dict[str, Any] | ProcessingRecord) -> ProcessingRecord:
    """Read and validate a processing record from a TOML file (or an already parsed mapping)."""
    if isinstance(source, ProcessingRecord):
        return source
    if isinstance(source, dict):
        return parse_processing_record(source, "processing record")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no processing record at {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ProcessingRecordError(f"{path} is not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ProcessingRecordError(f"{path} is not UTF-8 text: {err}") from None
    return parse_processing_record(data, str(path))


def parse_processing_record(data: dict[str, Any], source: str) -> ProcessingRecord:
    values: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ProcessingRecordError(f"{source}: [{key}] must be a table (a [{key}] section)")
            values[key] = {k: _check(source, key, k, v) for k, v in value.items()}
        else:
            values.setdefault("", {})[key] = _check(source, "", key, value)
    owner_ids = tuple(values.get("", {}).get("owner_ids", ()))
    return ProcessingRecord(values=values, source=source, owner_ids=owner_ids)


def _check(source: str, section: str, key: str, value: Any) -> Any:
    known = FIELDS[section]
    where = f"{source}: [{section}] {key}" if section else f"{source}: {key}"
    if key not in known:
        candidates = list(known) + ([] if section else list(SECTIONS))
        hint = difflib.get_close_matches(key, candidates, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        place = f"in [{section}]" if section else "at the top level"
        raise ProcessingRecordError(f"{where}: unknown key{suggestion}; keys known {place}: {', '.join(candidates)}")
    kind = known[key][0]
    if kind == STR and isinstance(value, str):
        return value
    if kind == STR_LIST:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    if kind == NUMBER and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == INT and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if kind == DATE:
        if isinstance(value, (_dt.date, _dt.datetime)):
            return value.isoformat()
        if isinstance(value, str):
            try:
                return _dt.date.fromisoformat(value).isoformat()
            except ValueError:
                pass
    raise ProcessingRecordError(f"{where} = {value!r}: expected a {kind} ({known[key][1]})")


def records_for(records: list[ProcessingRecord], owner_id: str) -> ProcessingRecord | None:
    """The one record covering ``owner_id``: one naming it, else one covering every owner."""
    named = [r for r in records if owner_id in r.owner_ids]
    if len(named) > 1:
        raise ProcessingRecordError(
            f"owner {owner_id} is named by several processing records ({', '.join(r.source for r in named)}); "
            "keep one per owner")
    if named:
        return named[0]
    general = [r for r in records if not r.owner_ids]
    if len(general) > 1:
        raise ProcessingRecordError(
            f"several processing records cover every owner ({', '.join(r.source for r in general)}); "
            "give each an owner_ids list")
    return general[0] if general else None
