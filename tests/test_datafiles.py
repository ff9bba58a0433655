"""An owner's data file (CSV, Parquet, .npz): read back exactly, refused with a clear message."""

from __future__ import annotations

import csv
import io
import pickle
import string
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privfl.datafiles import (
    DataFileError,
    check_owner_file,
    delta_problem,
    largest_delta_below,
    load_data_folder,
    max_rows_for_delta,
    read_owner_data,
)

# A value no message may ever show: error texts end up in logs, a row is personal data.
SECRET = 123.456


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def codes(err: pytest.ExceptionInfo) -> set[str]:
    return set(err.value.codes)


# ------------------------------------------------------------------------------ good files


def test_good_csv(tmp_path):
    path = tmp_path / "st-mary.csv"
    path.write_text("\ufeffage, sex ,chol,smoker,label\n63,1,233.5,true,0\n41,0,204,FALSE,2\n57,1,1e2,false,1\n\n",
                    encoding="utf-8")
    table = read_owner_data(path)
    assert table.feature_names == ("age", "sex", "chol", "smoker")
    assert table.label_column == "label" and table.format == "csv" and table.path == path
    data = table.dataset
    assert data.name == "st-mary" and data.num_classes == 3
    assert data.features.dtype == np.float32 and data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.features, [[63, 1, 233.5, 1], [41, 0, 204, 0], [57, 1, 100, 0]])
    np.testing.assert_array_equal(data.labels, [0, 2, 1])


def test_label_column_anywhere_and_integral_floats(tmp_path):
    path = write_csv(tmp_path / "a.csv", ["diagnosis", "x"], [["1.0", 0.5], ["0", 1.5]])
    table = read_owner_data(path, label_column="diagnosis", num_classes=4)
    assert table.feature_names == ("x",)
    np.testing.assert_array_equal(table.dataset.labels, [1, 0])
    assert table.dataset.num_classes == 4


def test_good_parquet(tmp_path):
    path = write_parquet(tmp_path / "h.parquet", {
        "age": [63, 41], "flag": [True, False], "chol": [233.5, 204.0], "label": [1, 0],
    })
    table = read_owner_data(path)
    assert table.format == "parquet" and table.feature_names == ("age", "flag", "chol")
    np.testing.assert_array_equal(table.dataset.features, [[63, 1, 233.5], [41, 0, 204]])
    np.testing.assert_array_equal(table.dataset.labels, [1, 0])


def test_good_npz_with_names_and_label_named_after_the_column(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    path = tmp_path / "h.npz"
    np.savez(path, features=x, outcome=np.array([0, 1, 1, 0]), feature_names=np.array(["a", "b", "c"]))
    table = read_owner_data(path, label_column="outcome")
    assert table.feature_names == ("a", "b", "c") and table.label_column == "outcome"
    np.testing.assert_array_equal(table.dataset.features, x)


def test_npz_legacy_labels_and_default_names(tmp_path):
    path = tmp_path / "h.npz"
    np.savez(path, features=np.ones((3, 2), dtype=np.int32), labels=np.array([[0], [1], [0]]))
    table = read_owner_data(path)
    assert table.feature_names == ("feature_0", "feature_1") and table.label_column == "labels"
    np.testing.assert_array_equal(table.dataset.labels, [0, 1, 0])


# ------------------------------------------------------------------------------ bad files

CSV_CASES = [
    # (file text, code, words the message must hold)
    ("", "empty", ["empty", "header row"]),
    ("a,b,label\n", "no-rows", ["no rows"]),
    ("1,2,0\n3,4,1\n", "no-header", ["line 1", "header row"]),
    ("a;b;label\n1;2;0\n", "separator", ["';'", "','"]),
    ("a,b,label\n1,2,0\n1,2\n3,4,1,5\n1,1,1\n", "ragged-rows", ["line 3 has 2 fields", "header (line 1) has 3",
                                                                "3, 4"]),
    ("age,chol,Label\n1,2,0\n", "missing-label-column", ["'label'", "'age', 'chol', 'Label'",
                                                         "did you mean 'Label'?"]),
    ("age,sexe,labell\n1,2,0\n", "missing-label-column", ["did you mean 'labell'?"]),
    ("age,sex,city,label\n1,M,Paris,0\n2,0,Lyon,1\n", "non-numeric-features",
     ["'sex' (text in 1 of 2 cells)", "'city' (text in 2 of 2 cells)", "one-hot encode"]),
    ("a,b,label\n,1,0\nnan,inf,1\nNA,-inf,0\n", "missing-values",
     ["'a' (2 missing, 1 NaN)", "'b' (2 infinite)", "5 cells in 2 feature columns"]),
    ("a,label\n1e39,0\n", "missing-values", ["beyond float32 range"]),
    ("a,label\n1,yes\n2,no\n", "label-text", ["'label' holds text in 2 of 2 cells", "class ids"]),
    ("a,label\n1,0.5\n2,1\n", "label-not-integer", ["1 value with a fractional part"]),
    ("a,label\n1,-1\n2,1\n", "label-negative", ["1 negative value", "start at 0"]),
    ("a,label\n1,\n2,nan\n", "label-missing", ["1 missing, 1 NaN"]),
    ("a,label\n1,1e12\n", "label-too-large", ["too large"]),
    ("a,a,label\n1,2,0\n", "duplicate-columns", ["duplicate column names 'a'"]),
    ("label,b,label\n1,2,0\n", "duplicate-columns", ["'label'"]),
    ("label\n0\n", "no-features", ["no feature columns"]),
    ("a,,label\n1,2,0\n", "unnamed-columns", ["column 2"]),
    ('a,label\n"1\n', "unreadable", ["CSV"]),
]


@pytest.mark.parametrize(("text", "code", "words"), CSV_CASES, ids=[case[1] for case in CSV_CASES])
def test_bad_csv_says_what_is_wrong(tmp_path, text, code, words):
    path = tmp_path / "owner.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataFileError) as err:
        read_owner_data(path)
    assert code in codes(err), str(err.value)
    for word in words:
        assert word in str(err.value)
    assert str(err.value).startswith(str(path))


def test_not_utf8(tmp_path):
    path = tmp_path / "owner.csv"
    path.write_bytes("a,label\n\xe9t\xe9,0\n".encode("latin-1"))
    with pytest.raises(DataFileError, match="UTF-8") as err:
        read_owner_data(path)
    assert codes(err) == {"not-utf8"}


def test_labels_at_or_above_num_classes(tmp_path):
    path = write_csv(tmp_path / "o.csv", ["a", "label"], [[1, 0], [2, 3], [3, 5]])
    with pytest.raises(DataFileError, match=r"2 rows .* have a class id >= num-classes 3") as err:
        read_owner_data(path, num_classes=3)
    assert codes(err) == {"label-out-of-range"}


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataFileError, match="no such file") as err:
        read_owner_data(tmp_path / "nope.csv")
    assert codes(err) == {"not-found"}
    (tmp_path / "data.xlsx").write_bytes(b"PK")
    with pytest.raises(DataFileError, match=r"'\.xlsx'.*\.csv.*\.parquet.*\.npz") as err:
        read_owner_data(tmp_path / "data.xlsx")
    assert codes(err) == {"unknown-format"}
    with pytest.raises(DataFileError, match="is a folder"):
        read_owner_data(tmp_path)


def test_every_problem_is_listed_not_only_the_first(tmp_path):
    path = write_csv(tmp_path / "o.csv", ["a", "a", "city", "chol", "label"],
                     [[1, 2, "Paris", "", "0.5"], [1, 2, "Lyon", 1, "-2"]])
    with pytest.raises(DataFileError) as err:
        read_owner_data(path)
    assert {"duplicate-columns", "non-numeric-features", "missing-values", "label-not-integer",
            "label-negative"} <= codes(err)
    assert "5 problems" in str(err.value)


def test_messages_never_show_a_value(tmp_path):
    rows = [[SECRET, "SECRET-CITY", "", f"{SECRET}"], [SECRET, "SECRET-CITY", "nan", "7.25"]]
    path = write_csv(tmp_path / "o.csv", ["x", "city", "chol", "label"], rows)
    with pytest.raises(DataFileError) as err:
        read_owner_data(path)
    text = str(err.value)
    assert "123.456" not in text and "SECRET" not in text and "7.25" not in text
    assert {"non-numeric-features", "missing-values", "label-not-integer"} <= codes(err)


NPZ_CASES = [
    (dict(features=np.ones(3), label=np.zeros(3)), "features-shape", "reshape(-1, 1)"),
    (dict(features=np.ones((3, 2, 2)), label=np.zeros(3)), "features-shape", "flatten"),
    (dict(X=np.ones((3, 2)), label=np.zeros(3)), "missing-features-array", "'X', 'label'"),
    (dict(features=np.ones((3, 2)), target=np.zeros(3)), "missing-label-column", "'features', 'target'"),
    (dict(features=np.ones((3, 2)), label=np.zeros(4)), "labels-shape", "one class id per row"),
    (dict(features=np.ones((3, 2)), label=np.zeros(3), feature_names=np.array(["a"])), "feature-names",
     "2 strings"),
    (dict(features=np.array([["a", "b"]]), label=np.zeros(1)), "non-numeric-features", "text values"),
    (dict(features=np.ones((2, 1)), label=np.array(["x", "y"])), "label-text", "class ids"),
    (dict(features=np.full((2, 1), np.inf), label=np.zeros(2)), "missing-values", "2 infinite"),
    (dict(features=np.ones((0, 2)), label=np.zeros(0)), "no-rows", "no rows"),
]


@pytest.mark.parametrize(("arrays", "code", "words"), NPZ_CASES, ids=[case[1] for case in NPZ_CASES])
def test_bad_npz_says_what_is_wrong(tmp_path, arrays, code, words):
    path = tmp_path / "owner.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataFileError) as err:
        read_owner_data(path)
    assert code in codes(err) and words in str(err.value)


def test_npz_that_is_not_an_archive(tmp_path):
    path = tmp_path / "owner.npz"
    with path.open("wb") as handle:
        np.save(handle, np.ones((2, 2)))
    with pytest.raises(DataFileError, match=r"single array \(\.npy\)"):
        read_owner_data(path)
    np.savez(path, features=np.array([[object()]], dtype=object), label=np.zeros(1))
    with pytest.raises(DataFileError, match="not a readable .npz") as err:
        read_owner_data(path)
    assert codes(err) == {"unreadable"}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("features.npy", b"\x93NUMPY garbage")
    with pytest.raises(DataFileError, match="not a readable .npz"):
        read_owner_data(path)


def test_bad_parquet(tmp_path):
    path = write_parquet(tmp_path / "o.parquet", {
        "a": [1, None], "city": ["SECRET-CITY", "x"], "when": np.array(["2020-01-01", "2021-01-01"],
                                                                          dtype="datetime64[D]"),
        "label": [0.5, 1.0],
    })
    with pytest.raises(DataFileError) as err:
        read_owner_data(path)
    assert codes(err) == {"non-numeric-features", "missing-values", "label-not-integer"}
    assert "'city' (text)" in str(err.value) and "'when' (date32[day] values)" in str(err.value)
    assert "SECRET" not in str(err.value)
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataFileError, match="not a readable Parquet file"):
        read_owner_data(path)


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "o.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataFileError, match=r"pip install 'privfl\[parquet\]'") as err:
        read_owner_data(path)
    assert codes(err) == {"needs-pyarrow"}


def test_error_pickles_and_is_a_value_error(tmp_path):
    err = DataFileError(tmp_path / "x.csv", "broken")
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, ValueError) and str(again) == str(err) and again.codes == ("invalid",)


def test_bad_arguments_are_value_errors(tmp_path):
    path = write_csv(tmp_path / "o.csv", ["a", "label"], [[1, 0]])
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="num_classes"):
            read_owner_data(path, num_classes=bad)
    with pytest.raises(ValueError, match="label_column"):
        read_owner_data(path, label_column=" ")


# ------------------------------------------------------------------------------ summary and delta


def test_summary_lists_shape_classes_and_warnings(tmp_path):
    rows = [[SECRET, i % 2, 0] for i in range(12)] + [[1.0, 0, 1]] * 3
    path = write_csv(tmp_path / "o.csv", ["x", "patient_id", "label"], rows)
    summary = check_owner_file(path, num_classes=3, delta=0.01)
    assert summary.usable and summary.num_rows == 15 and summary.num_features == 2
    assert summary.class_counts == {0: 12, 1: 3} and summary.num_classes == 3
    status = {check.name: check.status for check in summary.checks}
    assert status == {"file": "ok", "columns": "warning", "values": "ok", "labels": "ok", "classes": "warning",
                      "delta": "ok"}
    assert {p.code for p in summary.warnings} == {"identifier-column", "small-class", "empty-class"}
    assert "123.456" not in repr(summary.to_dict())


def test_summary_of_an_unreadable_file(tmp_path):
    path = tmp_path / "o.csv"
    path.write_text("")
    summary = check_owner_file(path, delta=1e-5)
    assert not summary.usable and summary.num_rows is None
    assert [check.status for check in summary.checks] == ["failed"] + ["skipped"] * 5


def test_delta_rule():
    # delta must be below 1/n: a file can have too many rows for its delta
    assert delta_problem(1e-5, 740) is None
    assert delta_problem(1e-5, 99_999) is None
    message = delta_problem(1e-5, 100_000)
    assert "not below 1/n = 1/100,000" in message and "suits at most 99,999 records" in message
    message = delta_problem(1e-2, 740)
    assert "use delta below 0.0013" in message and "at most 99 records" in message
    assert "below 0.009" in delta_problem(0.01, 100)
    assert max_rows_for_delta(0.5) == 1 and max_rows_for_delta(0.3) == 3


@given(st.integers(1, 10**9))
def test_largest_delta_below_is_below_one_over_n(n):
    value = largest_delta_below(n)
    assert 0 < value < 1.0 / n and value >= 0.9 / n * 0.89
    assert delta_problem(value, n) is None


@given(st.floats(1e-12, 0.999))
def test_max_rows_for_delta_is_the_edge(delta):
    rows = max_rows_for_delta(delta)
    assert rows == 0 or delta < 1.0 / rows
    assert not delta < 1.0 / (rows + 1)


# ------------------------------------------------------------------------------ round trips (property)

_NAME = st.text(string.ascii_letters + string.digits + "_ -,\"'", min_size=1, max_size=8).filter(
    lambda name: name[0].isalpha() and name == name.strip() and name.lower() != "label")


@st.composite
def tables(draw):
    rows = draw(st.integers(1, 15))
    names = draw(st.lists(_NAME, min_size=1, max_size=4, unique=True))
    cell = st.floats(width=32, allow_nan=False, allow_infinity=False)
    features = np.array(draw(st.lists(st.lists(cell, min_size=len(names), max_size=len(names)),
                                      min_size=rows, max_size=rows)), dtype=np.float32)
    labels = np.array(draw(st.lists(st.integers(0, 4), min_size=rows, max_size=rows)), dtype=np.int64)
    return names, features, labels


def _assert_same(table, names, features, labels):
    assert table.feature_names == tuple(names)
    np.testing.assert_array_equal(table.dataset.features, features)
    np.testing.assert_array_equal(table.dataset.labels, labels)
    assert table.dataset.num_classes == labels.max() + 1


_TMP = settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_TMP
@given(tables())
def test_csv_round_trip(tmp_path, table):
    names, features, labels = table
    rows = [[repr(float(v)) for v in row] + [int(y)] for row, y in zip(features, labels)]
    path = write_csv(tmp_path / "t.csv", [*names, "label"], rows)
    _assert_same(read_owner_data(path), names, features, labels)


@_TMP
@given(tables())
def test_npz_round_trip(tmp_path, table):
    names, features, labels = table
    path = tmp_path / "t.npz"
    np.savez(path, features=features, label=labels, feature_names=np.array(names))
    _assert_same(read_owner_data(path), names, features, labels)


@_TMP
@given(tables())
def test_parquet_round_trip(tmp_path, table):
    names, features, labels = table
    columns = {name: features[:, i] for i, name in enumerate(names)}
    path = write_parquet(tmp_path / "t.parquet", {**columns, "label": labels})
    _assert_same(read_owner_data(path), names, features, labels)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([".csv", ".npz", ".parquet"]), st.binary(max_size=400))
def test_garbage_bytes_raise_only_data_file_errors(tmp_path, suffix, data):
    path = tmp_path / f"g{suffix}"
    path.write_bytes(data)
    try:
        read_owner_data(path)
    except DataFileError:
        pass


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(list("ab1.-e,\n\" label\r;naNINF\x00é?")), max_size=120))
def test_garbage_csv_text_raises_only_data_file_errors(tmp_path, text):
    path = tmp_path / "g.csv"
    path.write_text(text, encoding="utf-8")
    try:
        summary = check_owner_file(path, delta=0.1)
    except DataFileError:  # only for path problems, which a written .csv never has
        raise
    try:
        read_owner_data(path)
    except DataFileError as err:
        assert not summary.usable and set(err.codes) == {p.code for p in summary.errors}
    else:
        assert summary.usable or {p.check for p in summary.errors} == {"delta"}


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["features", "label", "labels", "feature_names", "x"]),
                       st.one_of(st.just(np.zeros(0)), st.just(np.ones((2, 2))), st.just(np.array(["a", "b"])),
                                 st.just(np.array([0.5, np.nan])), st.just(np.ones((2, 1, 1))),
                                 st.just(np.array([True, False])))))
def test_odd_npz_archives_raise_only_data_file_errors(tmp_path, arrays):
    path = tmp_path / "g.npz"
    with io.BytesIO() as buffer:
        np.savez(buffer, **arrays)
        path.write_bytes(buffer.getvalue())
    try:
        read_owner_data(path)
    except DataFileError:
        pass


# ------------------------------------------------------------------------------ folders


def _owner_csv(path: Path, labels: list[int], names=("age", "chol")) -> Path:
    return write_csv(path, [*names, "label"], [[i * (k + 1.0) for k in range(len(names))] + [y]
                                               for i, y in enumerate(labels)])


def test_good_folder(tmp_path):
    _owner_csv(tmp_path / "st-mary.csv", [0, 1, 1])
    np.savez(tmp_path / "alpha.npz", features=np.ones((2, 2)), label=np.array([0, 4]),
             feature_names=np.array(["age", "chol"]))
    _owner_csv(tmp_path / "test.csv", [1, 0])
    (tmp_path / "README.md").write_text("about the data")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    folder = load_data_folder(tmp_path)
    assert list(folder.owners) == ["alpha", "st-mary"] and folder.owner_ids == ("alpha", "st-mary")
    assert folder.num_classes == 5 and folder.feature_names == ("age", "chol") and folder.num_features == 2
    assert all(data.num_classes == 5 for data in folder.owners.values())
    assert folder.owners["st-mary"].name == "st-mary" and len(folder.owners["st-mary"]) == 3
    assert folder.test is not None and len(folder.test) == 2 and folder.test.num_classes == 5
    assert folder.files["test"] == tmp_path / "test.csv"


def test_folder_without_test_and_with_parquet(tmp_path):
    _owner_csv(tmp_path / "a.csv", [0, 1])
    write_parquet(tmp_path / "b.parquet", {"age": [1.0], "chol": [2.0], "label": [2]})
    folder = load_data_folder(tmp_path, num_classes=3)
    assert folder.test is None and folder.num_classes == 3 and list(folder.owners) == ["a", "b"]


def test_folder_with_mismatched_columns(tmp_path):
    _owner_csv(tmp_path / "a.csv", [0, 1])
    _owner_csv(tmp_path / "b.csv", [0, 1], names=("age", "cholesterol"))
    _owner_csv(tmp_path / "c.csv", [0, 1], names=("chol", "age"))
    _owner_csv(tmp_path / "test.csv", [0, 1], names=("age",))
    with pytest.raises(DataFileError) as err:
        load_data_folder(tmp_path)
    text = str(err.value)
    assert codes(err) == {"columns-differ"} and "3 problems" in text
    assert "b.csv: its feature columns differ from a.csv's: lacks 'chol'; has extra 'cholesterol'" in text
    assert "c.csv" in text and "another order (column 1 is 'chol' where 'age' is expected)" in text
    assert "test.csv" in text and "lacks 'chol'" in text


def test_folder_refusals(tmp_path):
    _owner_csv(tmp_path / "only.csv", [0, 1])
    _owner_csv(tmp_path / "test.csv", [0, 1])
    with pytest.raises(DataFileError, match="at least 2 owners") as err:
        load_data_folder(tmp_path)
    assert codes(err) == {"too-few-owners"}
    _owner_csv(tmp_path / "bad name.csv", [0])
    np.savez(tmp_path / "only.npz", features=np.ones((1, 2)), label=np.zeros(1))
    (tmp_path / "notes.txt").write_text("x")
    _owner_csv(tmp_path / "broken.csv", [0, 7])
    with pytest.raises(DataFileError) as err:
        load_data_folder(tmp_path, num_classes=2)
    assert codes(err) == {"not-a-data-file", "duplicate-owner", "bad-owner-id", "label-out-of-range",
                          "too-few-owners"}
    text = str(err.value)
    assert "'notes.txt'" in text and "'only.csv', 'only.npz'" in text and "bad name.csv" in text
    assert "broken.csv: 1 row" in text


def test_folder_path_errors(tmp_path):
    with pytest.raises(DataFileError, match="no such folder"):
        load_data_folder(tmp_path / "nope")
    file = _owner_csv(tmp_path / "a.csv", [0])
    with pytest.raises(DataFileError, match="is a file, not a folder"):
        load_data_folder(file)
