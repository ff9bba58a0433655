"""An owner's own data as a file: CSV, Parquet or ``.npz``, read and checked.

A data-holding institution trains on its own tabular data. This module is the one
place that reads such a file, for a deployed client, for ``privfl data check`` and
for simulations that read a folder with one file per owner.

Schema (the same for every format):

* every column except the label column is a numeric **feature** (integers or
  floats; booleans count as 0/1);
* the **label column** (``label`` unless told otherwise) holds integer class ids
  ``0..K-1`` (integral floats such as ``1.0`` and booleans are accepted; text,
  negative or fractional values are refused);
* no cell may be missing, NaN or infinite (privfl does not impute).

Formats, chosen by the file's suffix:

* ``.csv``: UTF-8 text, comma-separated, a header row naming the columns. Read
  with the standard library's ``csv`` module and NumPy only. Empty cells and the
  markers ``NA``, ``N/A``, ``null``, ``None`` and ``?`` count as missing values;
  ``true``/``false`` as 1/0.
* ``.parquet``: read with pyarrow, imported only when needed
  (``pip install 'privfl[parquet]'``).
* ``.npz``: arrays ``features`` (n, d) and the label array named after the label
  column (``label``; the legacy name ``labels`` is accepted too), optionally
  ``feature_names`` (d strings; ``feature_0``, ``feature_1``, ... otherwise).
  Other arrays are ignored.

Every problem is reported as a :class:`DataFileError` that says what is wrong and
how to mend it. Messages name columns, counts of cells and line numbers, never a
value from a row: a data file is personal data, and error messages end up in logs.

Public API: :func:`read_owner_data` (one file, as an :class:`OwnerTable`),
:func:`check_owner_file` (a :class:`DataSummary` listing every problem, for
``privfl data check``), :func:`load_data_folder` (a :class:`DataFolder` of owners
for a simulation) and the delta rule for a file's rows (:func:`delta_problem`).

:class:`~privfl.simulations.datasets.ArrayDataset` (which pulls in PyTorch) is
imported only where one is built, so checking a file stays quick.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from privfl.simulations.datasets import ArrayDataset

__all__ = [
    "FORMATS",
    "PARQUET_INSTALL_HINT",
    "SMALL_CLASS_ROWS",
    "CheckResult",
    "DataFileError",
    "DataFolder",
    "DataSummary",
    "OwnerTable",
    "Problem",
    "check_owner_file",
    "data_format",
    "delta_problem",
    "largest_delta_below",
    "load_data_folder",
    "max_rows_for_delta",
    "read_owner_data",
]

FORMATS: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".npz": "npz"}
"""File suffix (lower case) -> format name."""

PARQUET_INSTALL_HINT = "pip install 'privfl[parquet]'"

SMALL_CLASS_ROWS = 10
"""A class with fewer rows than this draws a warning: small classes are the most exposed."""

EVALUATION_FOLDER = "evaluation"  # <owner>.<suffix> files an owner evaluates the global model on
TEST_STEM = "test"
"""In a data folder, ``test.<suffix>`` is the central test set, not an owner."""

# Checks, in the order a summary lists them.
CHECKS = ("file", "columns", "values", "labels", "classes", "delta")

# Errors about the path itself (or this machine), not the file's content: nothing to summarize.
PATH_ERRORS = frozenset({"not-found", "is-a-folder", "unknown-format", "needs-pyarrow"})

_MISSING_TOKENS = frozenset({"", "na", "n/a", "null", "none", "?"})  # compared lower-cased
_BOOLEAN_TOKENS = {"true": 1.0, "false": 0.0}
_MAX_CLASS_ID = 2**31 - 1
_LISTED = 10  # names listed in one message before "... and N more"
_IDENTIFIER_NAME = re.compile(
    r"(?:^|[^a-z])(?:id|mrn|ssn|uuid|guid)$|identifier|patient.?(?:id|number|no)$|record.?(?:id|number)$",
    re.IGNORECASE,
)


# ------------------------------------------------------------------------------ problems


@dataclass(frozen=True)
class Problem:
    """One finding about a data file.

    Attributes:
        code: stable identifier (``"missing-label-column"``, ``"non-numeric-features"``, ...).
        message: what is wrong and how to mend it; never contains a value from a row.
        check: the summary check it belongs to (one of ``file``, ``columns``, ``values``,
            ``labels``, ``classes``, ``delta``).
        severity: ``"error"`` (the file is unusable) or ``"warning"``.
    """

    code: str
    message: str
    check: str = "file"
    severity: str = "error"


class DataFileError(ValueError):
    """A data file (or folder) that privfl cannot use; ``problems`` lists every reason."""

    def __init__(self, path: str | Path, problems: Sequence[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem("invalid", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.path = Path(path)
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(self._text())

    def __reduce__(self):  # picklable across Flower/Ray worker processes
        return (type(self), (self.path, self.problems))

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(problem.code for problem in self.problems)

    def _text(self) -> str:
        if len(self.problems) == 1:
            return f"{self.path}: {self.problems[0].message}"
        lines = [f"{self.path}: {len(self.problems)} problems:"]
        lines += [f"  - {problem.message}" for problem in self.problems]
        return "\n".join(lines)


def _error(path: Path, code: str, message: str, check: str = "file") -> DataFileError:
    return DataFileError(path, [Problem(code, message, check)])


def _quoted(names: Iterable[str], limit: int = _LISTED) -> str:
    names = list(names)
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else (plural or word + 's')}"


def _did_you_mean(wanted: str, found: Sequence[str]) -> str:
    same_case = [name for name in found if name.lower() == wanted.lower()]
    close = same_case or difflib.get_close_matches(wanted, list(found), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# ------------------------------------------------------------------------------ reading


@dataclass
class _Column:
    """One column as read: float64 values (NaN where missing), or None when not numeric."""

    name: str
    values: np.ndarray | None
    missing: int = 0  # empty / null / NA cells
    text: int = 0  # CSV cells that are not numbers
    kind: str = ""  # what a non-numeric column holds, for messages ("text", "timestamp[ms]")


@dataclass
class _Table:
    format: str
    columns: list[_Column]
    num_rows: int
    label_name: str | None = None  # set by readers that locate the label themselves (.npz)
    problems: list[Problem] = field(default_factory=list)  # non-fatal, found while reading


def data_format(path: str | Path) -> str:
    """The format name of ``path`` from its suffix; DataFileError for an unknown suffix."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise _error(
            path, "unknown-format",
            f"unknown file type {path.suffix or '(no suffix)'!r}: privfl reads .csv (comma-separated, "
            "header row), .parquet and .npz files; save the data in one of these formats",
        )
    return fmt


def _read_table(path: Path, label_column: str) -> _Table:
    if not path.exists():
        raise _error(path, "not-found", "no such file; check the path")
    if path.is_dir():
        raise _error(path, "is-a-folder", "is a folder, not a data file; give one .csv, .parquet or .npz file")
    fmt = data_format(path)
    try:
        if fmt == "csv":
            return _read_csv(path)
        if fmt == "parquet":
            return _read_parquet(path)
        return _read_npz(path, label_column)
    except OSError as err:
        raise _error(path, "unreadable", f"cannot be read ({err.strerror or _short(err)})") from None


def _parse_cells(name: str, cells: Sequence[str]) -> _Column:
    """A CSV column: numbers, booleans and missing markers become float64; anything else is text."""
    if not cells:
        return _Column(name, np.empty(0, dtype=np.float64))
    try:  # fast path: every cell is a number NumPy can parse
        return _Column(name, np.asarray(cells, dtype=str).astype(np.float64))
    except (ValueError, OverflowError):
        pass
    values = np.empty(len(cells), dtype=np.float64)
    missing = text = 0
    for i, cell in enumerate(cells):
        token = cell.strip()
        lower = token.lower()
        if lower in _MISSING_TOKENS:
            values[i] = np.nan
            missing += 1
        elif lower in _BOOLEAN_TOKENS:
            values[i] = _BOOLEAN_TOKENS[lower]
        else:
            try:
                values[i] = float(token)
            except (ValueError, OverflowError):
                values[i] = np.nan
                text += 1
    if text:
        return _Column(name, None, missing, text, kind="text")
    return _Column(name, values, missing)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> _Table:
    header: list[str] | None = None
    header_line = 0
    rows: list[list[str]] = []
    ragged: list[tuple[int, int]] = []  # (line number, fields)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, skipinitialspace=True, strict=True)
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if header is None:
                    header, header_line = row, reader.line_num
                elif len(row) != len(header):
                    ragged.append((reader.line_num, len(row)))
                else:
                    rows.append(row)
    except UnicodeDecodeError:
        raise _error(path, "not-utf8",
                     "is not UTF-8 text; save it as 'CSV UTF-8 (comma delimited)'") from None
    except csv.Error as err:
        raise _error(path, "unreadable", f"is not a readable CSV file: line {reader.line_num}: {_short(err)}; "
                     "save it as comma-separated text with a header row") from None
    if header is None:
        raise _error(path, "empty", "is empty: expected a header row naming the columns, then one row per record")
    if len(header) == 1:
        for separator, label in ((";", "';'"), ("\t", "tabs"), ("|", "'|'")):
            if separator in header[0]:
                raise _error(path, "separator",
                             f"seems to be separated by {label}, not commas: privfl reads comma-separated "
                             "files; save it again with ',' as the separator")
    names = [name.strip() for name in header]
    if all(_is_number(name) for name in names if name) and any(names):
        raise _error(path, "no-header",
                     f"line {header_line} holds numbers, not column names: the first line must be a header "
                     "row naming the columns (for example: age,sex,chol,label)")
    if ragged:
        line, fields = ragged[0]
        more = ""
        if len(ragged) > 1:
            lines = ", ".join(str(number) for number, _ in ragged[:_LISTED])
            more = f" ({_plural(len(ragged), 'line')} differ in all: {lines}{', ...' if len(ragged) > _LISTED else ''})"
        raise _error(path, "ragged-rows",
                     f"line {line} has {_plural(fields, 'field')} but the header (line {header_line}) has "
                     f"{len(names)}{more}: every line needs one value per column; quote values that contain "
                     "commas")
    columns = list(zip(*rows)) if rows else [()] * len(names)
    return _Table("csv", [_parse_cells(name, cells) for name, cells in zip(names, columns)], len(rows))


def _read_parquet(path: Path) -> _Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise _error(path, "needs-pyarrow",
                     f"reading Parquet files needs pyarrow, which is not installed: {PARQUET_INSTALL_HINT} "
                     "(or save the data as .csv or .npz)") from None
    try:
        table = pq.read_table(path)
    except Exception as err:  # a damaged file: pyarrow raises ArrowInvalid, OSError, ... (never row data)
        raise _error(path, "unreadable", f"is not a readable Parquet file ({_short(err)})") from None
    columns = [_arrow_column(pa, str(name), table.column(i)) for i, name in enumerate(table.column_names)]
    return _Table("parquet", columns, table.num_rows)


def _arrow_column(pa: Any, name: str, column: Any) -> _Column:
    kind = column.type
    types = pa.types
    if types.is_null(kind):
        return _Column(name, np.full(len(column), np.nan), missing=len(column))
    if types.is_integer(kind) or types.is_floating(kind) or types.is_boolean(kind) or types.is_decimal(kind):
        try:
            values = np.asarray(column.cast(pa.float64()).to_numpy(), dtype=np.float64)
        except Exception:  # e.g. a decimal beyond float range
            return _Column(name, None, column.null_count, kind=f"{kind} values that do not fit a float")
        return _Column(name, values, missing=column.null_count)
    if types.is_string(kind) or types.is_large_string(kind):
        description = "text"
    elif types.is_dictionary(kind):
        description = "categories"
    else:
        description = f"{kind} values"
    return _Column(name, None, column.null_count, kind=description)


def _array_column(name: str, values: np.ndarray) -> _Column:
    if values.dtype.kind in "biuf":
        with np.errstate(over="ignore", invalid="ignore"):
            return _Column(name, values.astype(np.float64))
    kind = {"U": "text", "S": "bytes", "M": "date/time", "m": "time span", "c": "complex"}.get(values.dtype.kind)
    return _Column(name, None, kind=f"{kind or str(values.dtype)} values")


def _read_npz(path: Path, label_column: str) -> _Table:
    hint = f"save it with numpy.savez(path, features=X, {label_column}=y)"
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # not a zip, truncated, pickled objects, ... (messages hold no data)
        raise _error(path, "unreadable", f"is not a readable .npz archive ({_short(err)}); {hint}") from None
    if not hasattr(archive, "files"):
        raise _error(path, "unreadable", f"holds a single array (.npy), not an .npz archive; {hint}")
    try:
        with archive:
            names = list(archive.files)
            wanted = {"features", "feature_names", label_column, "labels"}
            arrays = {name: archive[name] for name in names if name in wanted}
    except Exception as err:
        raise _error(path, "unreadable", f"is not a readable .npz archive ({_short(err)}); {hint}") from None
    found = _quoted(names) or "none"
    if "features" not in arrays:
        raise _error(path, "missing-features-array",
                     f"has no array named 'features' (arrays found: {found}{_did_you_mean('features', names)}); "
                     f"{hint}", "columns")
    features = arrays["features"]
    if features.ndim != 2:
        fix = ("for a single feature use features.reshape(-1, 1)" if features.ndim == 1
               else "flatten each record into one row, e.g. features.reshape(len(features), -1)")
        raise _error(path, "features-shape",
                     f"array 'features' has shape {features.shape}: expected 2-D (rows, features); {fix}",
                     "columns")
    rows, width = features.shape
    problems: list[Problem] = []
    if "feature_names" in arrays:
        given = arrays["feature_names"]
        if given.dtype.kind not in "US" or given.ndim != 1 or given.shape[0] != width:
            raise _error(path, "feature-names",
                         f"array 'feature_names' must hold {_plural(width, 'string')} (one per column of "
                         f"'features'), got shape {given.shape} of {given.dtype}", "columns")
        feature_names = [
            (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)).strip()
            for name in given.tolist()
        ]
    else:
        feature_names = [f"feature_{i}" for i in range(width)]
    columns = [_array_column(name, features[:, i]) for i, name in enumerate(feature_names)]
    label_name = label_column if label_column in arrays else ("labels" if label_column == "label"
                                                            and "labels" in arrays else None)
    if label_name is None:
        problems.append(Problem(
            "missing-label-column",
            f"has no label array {label_column!r} (arrays found: {found}"
            f"{_did_you_mean(label_column, [n for n in names if n != 'features'])}); save the class ids "
            f"as {label_column!r} or give the name of the label array (label_column=..., --label-column)",
            "columns",
        ))
    else:
        labels = arrays[label_name]
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.shape[0] != rows:
            raise _error(path, "labels-shape",
                         f"array {label_name!r} has shape {labels.shape} but 'features' has {_plural(rows, 'row')}: "
                         "expected one class id per row", "labels")
        columns.append(_array_column(label_name, labels))
    return _Table("npz", columns, rows, label_name=label_name or label_column, problems=problems)


# ------------------------------------------------------------------------------ checking


@dataclass
class _Findings:
    """What examining one file found: the arrays when usable, and every problem."""

    path: Path
    format: str | None
    label_column: str
    num_rows: int | None = None
    feature_names: tuple[str, ...] | None = None
    features: np.ndarray | None = None
    labels: np.ndarray | None = None
    num_classes: int | None = None
    class_counts: dict[int, int] | None = None
    problems: list[Problem] = field(default_factory=list)
    skipped: set[str] = field(default_factory=set)

    def add(self, check: str, code: str, message: str, severity: str = "error") -> None:
        self.problems.append(Problem(code, message, check, severity))

    @property
    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == "error"]


def _check_num_classes(num_classes: int | None) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    return int(num_classes)


def _check_label_column(label_column: str) -> str:
    if not isinstance(label_column, str) or not label_column.strip():
        raise ValueError(f"label_column must be a non-empty column name, got {label_column!r}")
    return label_column.strip()


def _examine(path: str | Path, label_column: str, num_classes: int | None) -> _Findings:
    """Read ``path`` and check it against the schema; raises DataFileError only for PATH_ERRORS."""
    path = Path(path)
    label_column = _check_label_column(label_column)
    num_classes = _check_num_classes(num_classes)
    try:
        table = _read_table(path, label_column)
    except DataFileError as err:
        if set(err.codes) & PATH_ERRORS:
            raise
        findings = _Findings(path, FORMATS.get(path.suffix.lower()), label_column)
        findings.problems.extend(err.problems)
        findings.skipped.update(CHECKS[1:])
        return findings
    label_column = table.label_name or label_column
    findings = _Findings(path, table.format, label_column, num_rows=table.num_rows)
    findings.problems.extend(table.problems)
    _check_table(findings, table, label_column, num_classes)
    return findings


def _check_table(findings: _Findings, table: _Table, label_column: str, num_classes: int | None) -> None:
    n = table.num_rows
    columns = table.columns
    names = [column.name for column in columns]
    if n == 0:
        findings.add("file", "no-rows", "has a header but no rows of data" if table.format == "csv"
                     else "has no rows of data")
    duplicates = [name for name, count in Counter(names).items() if count > 1]
    if duplicates:
        findings.add("columns", "duplicate-columns",
                     f"duplicate column names {_quoted(duplicates)}: give every column its own name")
    unnamed = [i + 1 for i, name in enumerate(names) if not name]
    if unnamed:
        findings.add("columns", "unnamed-columns",
                     f"column {', '.join(map(str, unnamed))} of the header has no name (a trailing comma?): "
                     "name every column or remove the empty ones")
    label_positions = [i for i, name in enumerate(names) if name == label_column]
    if not label_positions and "missing-label-column" not in {p.code for p in findings.problems}:
        findings.add("columns", "missing-label-column",
                     f"has no label column {label_column!r}: columns found: {_quoted(names) or 'none'}"
                     f"{_did_you_mean(label_column, names)}; name the column of class ids {label_column!r} "
                     "or give its name (label_column=..., --label-column)")
    features = [column for column in columns if column.name != label_column]
    findings.feature_names = tuple(column.name for column in features)
    if not features:
        findings.add("columns", "no-features",
                     f"has no feature columns: every column except the label column {label_column!r} is a "
                     "feature, and there must be at least one")
    non_numeric = [column for column in features if column.values is None]
    if non_numeric:
        described = ", ".join(f"{column.name!r} ({_kind(column, n)})" for column in non_numeric[:_LISTED])
        if len(non_numeric) > _LISTED:
            described += f" and {len(non_numeric) - _LISTED} more"
        findings.add("columns", "non-numeric-features",
                     f"{_plural(len(non_numeric), 'feature column')} {'is' if len(non_numeric) == 1 else 'are'} "
                     f"not numeric: {described}. Every column except the label must hold numbers: one-hot "
                     "encode categorical columns (one 0/1 column per category), write yes/no as 1/0, and drop "
                     "free-text and identifier columns")
    _check_values(findings, [column for column in features if column.values is not None], n)
    for column in features:
        if _IDENTIFIER_NAME.search(column.name):
            findings.add("columns", "identifier-column",
                         f"feature column {column.name!r} looks like an identifier: a model can memorize "
                         "identifiers; drop the column unless it is a real measurement", "warning")
    if len(label_positions) == 1:
        _check_labels(findings, columns[label_positions[0]], num_classes)
    else:
        findings.skipped.update({"labels", "classes"})
    if findings.errors:
        return
    matrix = np.empty((n, len(features)), dtype=np.float32)
    for i, column in enumerate(features):
        matrix[:, i] = column.values
    findings.features = matrix


def _kind(column: _Column, n: int) -> str:
    if column.kind == "text" and column.text:
        return f"text in {column.text:,} of {n:,} cells"
    return column.kind or "not numbers"


def _check_values(findings: _Findings, columns: list[_Column], n: int) -> None:
    bad = []
    cells = 0
    for column in columns:
        values = column.values
        with np.errstate(over="ignore", invalid="ignore"):
            as_float32 = values.astype(np.float32)
        nan = int(np.isnan(values).sum()) - column.missing
        inf = int(np.isinf(values).sum())
        beyond = int((np.isinf(as_float32) & np.isfinite(values)).sum())
        parts = [text for count, text in ((column.missing, f"{column.missing:,} missing"), (nan, f"{nan:,} NaN"),
                                          (inf, f"{inf:,} infinite"), (beyond, f"{beyond:,} beyond float32 range"))
                 if count]
        if parts:
            bad.append(f"{column.name!r} ({', '.join(parts)})")
            cells += column.missing + nan + inf + beyond
    if bad:
        listed = ", ".join(bad[:_LISTED]) + (f" and {len(bad) - _LISTED} more columns" if len(bad) > _LISTED else "")
        findings.add("values", "missing-values",
                     f"{_plural(cells, 'cell')} in {_plural(len(bad), 'feature column')} "
                     f"{'is' if cells == 1 else 'are'} missing, NaN or infinite: {listed}. privfl does not "
                     "impute: fill them in (e.g. with the column's median) or drop the rows that have them")
    if not columns:
        findings.skipped.add("values")


def _check_labels(findings: _Findings, column: _Column, num_classes: int | None) -> None:
    name = column.name
    fix = "labels must be integer class ids 0..K-1 (for example no disease = 0, disease = 1)"
    if column.values is None:
        findings.add("labels", "label-text",
                     f"the label column {name!r} holds {_kind(column, findings.num_rows or 0)}, not integer "
                     f"class ids: map each class to an integer, {fix}")
        findings.skipped.add("classes")
        return
    values = column.values
    finite = np.isfinite(values)
    nan = int(np.isnan(values).sum()) - column.missing
    inf = int((~finite).sum()) - nan - column.missing
    usable = True
    if column.missing or nan or inf:
        parts = [text for count, text in ((column.missing, f"{column.missing:,} missing"), (nan, f"{nan:,} NaN"),
                                          (inf, f"{inf:,} infinite")) if count]
        findings.add("labels", "label-missing",
                     f"the label column {name!r} has {', '.join(parts)} "
                     f"{'cell' if column.missing + nan + inf == 1 else 'cells'}: every row needs a class id; "
                     "drop the unlabelled rows")
        usable = False
    finite_values = values[finite]
    fractional = int((finite_values != np.floor(finite_values)).sum())
    if fractional:
        findings.add("labels", "label-not-integer",
                     f"the label column {name!r} holds {_plural(fractional, 'value')} with a fractional part "
                     f"(a score or a regression target?): {fix}")
        usable = False
    negative = int(((finite_values < 0) & (finite_values == np.floor(finite_values))).sum())
    if negative:
        findings.add("labels", "label-negative",
                     f"the label column {name!r} holds {_plural(negative, 'negative value')}: class ids start "
                     "at 0 (map e.g. -1/1 to 0/1)")
        usable = False
    huge = int((finite_values > _MAX_CLASS_ID).sum())
    if huge:
        findings.add("labels", "label-too-large",
                     f"the label column {name!r} holds {_plural(huge, 'value')} above {_MAX_CLASS_ID:,}, too "
                     f"large for class ids: {fix}")
        usable = False
    if not usable:
        findings.skipped.add("classes")
        return
    labels = values.astype(np.int64)
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        over = int((labels >= num_classes).sum())
        findings.add("labels", "label-out-of-range",
                     f"{_plural(over, 'row')} of the label column {name!r} {'has' if over == 1 else 'have'} a "
                     f"class id >= num-classes {num_classes} (ids go up to {int(labels.max())}): use class ids "
                     f"0..{num_classes - 1} or raise num-classes")
        findings.skipped.add("classes")
        return
    findings.labels = labels
    findings.num_classes = num_classes if num_classes is not None else int(labels.max()) + 1 if labels.size else None
    classes, counts = np.unique(labels, return_counts=True)
    findings.class_counts = {int(c): int(k) for c, k in zip(classes, counts)}
    small = [(c, k) for c, k in findings.class_counts.items() if k < SMALL_CLASS_ROWS]
    if small:
        listed = ", ".join(f"class {c} ({_plural(k, 'row')})" for c, k in small[:_LISTED])
        findings.add("classes", "small-class",
                     f"{listed}{' and more' if len(small) > _LISTED else ''}: classes with fewer than "
                     f"{SMALL_CLASS_ROWS} rows are the most exposed to membership inference; merge rare classes "
                     "or collect more rows if you can", "warning")
    if findings.num_classes is not None:
        absent = [c for c in range(min(findings.num_classes, 10_000)) if c not in findings.class_counts]
        if absent:
            listed = ", ".join(map(str, absent[:_LISTED])) + (", ..." if len(absent) > _LISTED else "")
            findings.add("classes", "empty-class",
                         f"{_plural(len(absent), 'class', 'classes')} of {findings.num_classes} "
                         f"{'has' if len(absent) == 1 else 'have'} no rows in this file ({listed})", "warning")


# ------------------------------------------------------------------------------ delta rule


# The rule itself lives with the other privacy rules (privfl.privacy.budget).
from privfl.privacy.budget import delta_problem, largest_delta_below, max_rows_for_delta  # noqa: E402,F401


# ------------------------------------------------------------------------------ one file


@dataclass(frozen=True, eq=False)
class OwnerTable:
    """One owner's data as read from its file.

    Attributes:
        dataset: the rows, as an ``ArrayDataset`` (float32 features, int64 labels)
            named after the file's stem.
        feature_names: the feature columns, in the order of ``dataset.features``.
        label_column: the column (or ``.npz`` array) the labels came from.
        path: the file.
        format: ``"csv"``, ``"parquet"`` or ``"npz"``.
    """

    dataset: ArrayDataset
    feature_names: tuple[str, ...]
    label_column: str
    path: Path
    format: str


def read_owner_data(
    path: str | Path, *, label_column: str = "label", num_classes: int | None = None
) -> OwnerTable:
    """Read one owner's data file (``.csv``, ``.parquet`` or ``.npz``).

    ``num_classes`` defaults to the largest label + 1. Raises :class:`DataFileError`
    listing every problem with the file; ``ValueError`` for a bad argument.
    """
    findings = _examine(path, label_column, num_classes)
    if findings.errors:
        raise DataFileError(findings.path, findings.errors)
    return _owner_table(findings, name=findings.path.stem)


def _owner_table(findings: _Findings, name: str, num_classes: int | None = None) -> OwnerTable:
    from privfl.simulations.datasets import ArrayDataset

    dataset = ArrayDataset(findings.features, findings.labels,
                           num_classes if num_classes is not None else findings.num_classes or 1, name=name)
    return OwnerTable(dataset, findings.feature_names or (), findings.label_column, findings.path,
                      findings.format or "")


@dataclass(frozen=True)
class CheckResult:
    """One line of a summary: ``status`` is ``ok``, ``failed``, ``warning`` or ``skipped``."""

    name: str
    status: str
    messages: tuple[str, ...]
    codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataSummary:
    """What ``privfl data check`` reports about a file: its shape and checks, never a row.

    ``num_rows``, ``feature_names`` and the class fields are None when the file
    could not be read that far.
    """

    path: Path
    format: str | None
    num_rows: int | None
    feature_names: tuple[str, ...] | None
    label_column: str
    num_classes: int | None
    class_counts: dict[int, int] | None
    delta: float | None
    checks: tuple[CheckResult, ...]
    problems: tuple[Problem, ...]

    @property
    def usable(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(problem for problem in self.problems if problem.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(problem for problem in self.problems if problem.severity == "warning")

    @property
    def num_features(self) -> int | None:
        return None if self.feature_names is None else len(self.feature_names)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (class ids as a list of ``{"class", "rows"}``)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "usable": self.usable,
            "rows": self.num_rows,
            "features": self.num_features,
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "label_column": self.label_column,
            "num_classes": self.num_classes,
            "classes": None if self.class_counts is None else [
                {"class": c, "rows": k} for c, k in sorted(self.class_counts.items())
            ],
            "delta": self.delta,
            "checks": [
                {"name": check.name, "status": check.status, "messages": list(check.messages),
                 "codes": list(check.codes)}
                for check in self.checks
            ],
            "errors": len(self.errors),
            "warnings": len(self.warnings),
        }


_OK_TEXT = {
    "file": lambda f: f"read as {f.format}",
    "columns": lambda f: (f"label column {f.label_column!r} and "
                          f"{_plural(len(f.feature_names or ()), 'numeric feature column')}, names unique"),
    "values": lambda f: "no missing, NaN or infinite values",
    "labels": lambda f: f"integer class ids 0..{(f.num_classes or 1) - 1}",
    "classes": lambda f: f"every class has at least {SMALL_CLASS_ROWS} rows",
}


def check_owner_file(
    path: str | Path, *, label_column: str = "label", num_classes: int | None = None, delta: float | None = None
) -> DataSummary:
    """Check one owner's file and summarize it without showing any row.

    Every problem is listed (``summary.errors``), not only the first; with
    ``delta`` the file's row count is checked against the rule delta < 1/n.
    Raises :class:`DataFileError` only when there is nothing to check (no such
    file, a folder, an unknown suffix, Parquet without pyarrow).
    """
    if delta is not None:
        from privfl.privacy.budget import check_delta

        check_delta(delta)
    findings = _examine(path, label_column, num_classes)
    n = findings.num_rows
    if delta is None or not n or "file" in {p.check for p in findings.errors}:
        findings.skipped.add("delta")
    else:
        problem = delta_problem(delta, n)
        if problem:
            findings.add("delta", "delta-too-large", problem)
    checks = []
    for name in CHECKS:
        mine = [problem for problem in findings.problems if problem.check == name]
        errors = [problem for problem in mine if problem.severity == "error"]
        if errors:
            status = "failed"
        elif mine:
            status = "warning"
        elif name in findings.skipped:
            status = "skipped"
        else:
            status = "ok"
        messages = tuple(problem.message for problem in mine)
        if status == "ok":
            messages = (f"delta {delta:g} is below 1/n = 1/{n:,}",) if name == "delta" else (_OK_TEXT[name](findings),)
        elif status == "skipped":
            messages = (_skipped_text(name, n),)
        checks.append(CheckResult(name, status, messages, tuple(problem.code for problem in mine)))
    return DataSummary(
        path=findings.path, format=findings.format, num_rows=n, feature_names=findings.feature_names,
        label_column=findings.label_column, num_classes=findings.num_classes,
        class_counts=findings.class_counts, delta=delta, checks=tuple(checks),
        problems=tuple(findings.problems),
    )


def _skipped_text(name: str, n: int | None) -> str:
    if name == "delta":
        if n:
            return (f"not checked (give a delta): it must be below 1/n = 1/{n:,}, "
                    f"e.g. below {largest_delta_below(n):.2g}")
        return "not checked"
    return "not checked (see the problems above)"


# ------------------------------------------------------------------------------ a folder of owners


@dataclass(frozen=True, eq=False)
class DataFolder:
    """A simulation's data: one file per owner, and optionally ``test.<suffix>``.

    Attributes:
        path: the folder.
        owners: owner id (file stem) -> its rows, sorted by owner id.
        test: the central test set, or None when the folder has no test file.
        feature_names: the feature columns every file shares, in order.
        num_classes: as given, or the largest label over all files + 1.
        files: owner id (and ``"test"``) -> the file it was read from.
        label_column: the label column's name.
    """

    path: Path
    owners: dict[str, ArrayDataset]
    test: ArrayDataset | None
    feature_names: tuple[str, ...]
    num_classes: int
    files: dict[str, Path]
    label_column: str = "label"

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def owner_ids(self) -> tuple[str, ...]:
        return tuple(self.owners)


def _column_difference(expected: Sequence[str], got: Sequence[str]) -> str:
    lacking = [name for name in expected if name not in got]
    extra = [name for name in got if name not in expected]
    parts = []
    if lacking:
        parts.append(f"lacks {_quoted(lacking)}")
    if extra:
        parts.append(f"has extra {_quoted(extra)}")
    if not parts:
        if len(expected) != len(got):
            parts.append("repeats columns")
        else:
            at = next(i for i, (a, b) in enumerate(zip(expected, got)) if a != b)
            parts.append(f"has the same columns in another order (column {at + 1} is {got[at]!r} where "
                         f"{expected[at]!r} is expected)")
    return "; ".join(parts)


def load_data_folder(
    path: str | Path, *, label_column: str = "label", num_classes: int | None = None
) -> DataFolder:
    """Read a folder with one file per owner (``<owner-id>.csv|.parquet|.npz``).

    ``test.csv|.parquet|.npz`` is the central test set, not an owner; an
    ``evaluation/`` subfolder holds the owners' evaluation files. Hidden files
    and ``README*`` are ignored; anything else must be a data file. All files must
    share the same feature columns in the same order; at least two owners are
    needed. Raises :class:`DataFileError` listing every problem, each prefixed with
    the file it concerns.
    """
    from privfl.privacy.keys import check_owner_id

    folder = Path(path)
    label_column = _check_label_column(label_column)
    num_classes = _check_num_classes(num_classes)
    if not folder.exists():
        raise _error(folder, "not-found", "no such folder; check the path")
    if not folder.is_dir():
        raise _error(folder, "not-a-folder", "is a file, not a folder: give a folder with one data file per "
                     "owner (<owner-id>.csv, .parquet or .npz)")
    problems: list[Problem] = []
    by_stem: dict[str, list[Path]] = {}
    strays = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name.lower().startswith("readme"):
            continue
        if entry.is_dir() and entry.name == EVALUATION_FOLDER:
            continue  # each owner's held-out data, read by the simulation for federated evaluation
        if entry.is_dir() or entry.suffix.lower() not in FORMATS:
            strays.append(entry.name + ("/" if entry.is_dir() else ""))
            continue
        by_stem.setdefault(entry.stem, []).append(entry)
    if strays:
        problems.append(Problem("not-a-data-file",
                                f"{_quoted(strays)} {'is' if len(strays) == 1 else 'are'} not data files: a data "
                                "folder holds only <owner-id>.csv, .parquet or .npz files and test.<suffix> "
                                "(hidden files and README* are ignored); move the others elsewhere"))
    files: dict[str, Path] = {}
    for stem, entries in by_stem.items():
        if len(entries) > 1:
            problems.append(Problem("duplicate-owner",
                                    f"{_quoted(e.name for e in entries)} are the same owner {stem!r} in "
                                    "different formats: keep one file per owner"))
            continue
        if stem != TEST_STEM:
            try:
                check_owner_id(stem)
            except ValueError as err:
                problems.append(Problem("bad-owner-id", f"{entries[0].name}: {err}; rename the file"))
                continue
        files[stem] = entries[0]
    tables: dict[str, _Findings] = {}
    for stem in sorted(files):
        try:
            findings = _examine(files[stem], label_column, num_classes)
        except DataFileError as err:  # e.g. Parquet without pyarrow
            problems.extend(Problem(p.code, f"{files[stem].name}: {p.message}", p.check) for p in err.problems)
            continue
        problems.extend(Problem(p.code, f"{files[stem].name}: {p.message}", p.check)
                        for p in findings.errors)
        if not findings.errors:
            tables[stem] = findings
    owner_ids = sorted(stem for stem in files if stem != TEST_STEM)
    if len(owner_ids) < 2:
        problems.append(Problem("too-few-owners",
                                f"holds {_plural(len(owner_ids), 'owner file')}: a federation needs at least 2 "
                                "owners; put one file per owner in the folder, named <owner-id>.csv (or "
                                ".parquet, .npz)"))
    reference = next((stem for stem in owner_ids if stem in tables), None)
    if reference is not None:
        expected = tables[reference].feature_names or ()
        for stem, findings in tables.items():
            got = findings.feature_names or ()
            if tuple(got) != tuple(expected):
                problems.append(Problem(
                    "columns-differ",
                    f"{files[stem].name}: its feature columns differ from {files[reference].name}'s: "
                    f"{_column_difference(expected, got)}. Every file needs the same feature columns in the "
                    "same order", "columns"))
    if problems:
        raise DataFileError(folder, problems)
    classes = num_classes if num_classes is not None else max(
        (int(f.labels.max()) + 1 for f in tables.values() if f.labels is not None and f.labels.size), default=1)
    owners = {stem: _owner_table(tables[stem], name=stem, num_classes=classes).dataset for stem in owner_ids}
    test = (_owner_table(tables[TEST_STEM], name=TEST_STEM, num_classes=classes).dataset
            if TEST_STEM in tables else None)
    return DataFolder(path=folder, owners=owners, test=test,
                      feature_names=tuple(tables[reference].feature_names or ()), num_classes=classes,
                      files=dict(sorted(files.items())), label_column=label_column)
