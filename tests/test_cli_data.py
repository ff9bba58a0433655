"""``privfl data check``: a summary that shows no row, every problem listed, exit codes 0/1/2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from privfl.cli import main

# Distinctive values: none of them may appear in what the command prints.
SECRETS = ("123.456", "987.654", "SECRET-CITY", "42.4242")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["data", "check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_no_row_shown(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
def good_csv(tmp_path):
    path = tmp_path / "st-mary.csv"
    lines = ["age,chol,smoker,label"]
    lines += [f"{123.456 + i},{987.654},true,{i % 2}" for i in range(30)]
    lines += ["42.4242,1,false,2"] * 3
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def bad_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "age,city,chol,label\n"
        "123.456,SECRET-CITY,,0.5\n"
        "987.654,SECRET-CITY,nan,-1\n"
        "42.4242,Lyon,1,1\n"
    )
    return path


def test_good_file_summary(capsys, good_csv):
    code, out, err = run(capsys, str(good_csv), "--delta", "1e-5")
    assert code == 0 and err == ""
    assert f"file:          {good_csv}" in out
    assert "format:        csv" in out and "rows:          33" in out and "features:      3" in out
    assert "feature names: age, chol, smoker" in out and "label column:  label" in out
    assert "classes:       3 (rows per class: 0: 15, 1: 15, 2: 3)" in out
    assert "ok       delta    delta 1e-05 is below 1/n = 1/33" in out
    text = flat(out)
    assert "warning classes class 2 (3 rows): classes with fewer than 10 rows are the most exposed" in text
    assert out.rstrip().endswith("usable (1 warning)")
    assert_no_row_shown(out)


def test_json_summary(capsys, good_csv):
    code, out, _ = run(capsys, str(good_csv), "--json", "--num-classes", "4")
    assert code == 0
    summary = json.loads(out)
    assert summary["usable"] is True and summary["rows"] == 33 and summary["features"] == 3
    assert summary["feature_names"] == ["age", "chol", "smoker"] and summary["num_classes"] == 4
    assert summary["classes"] == [{"class": 0, "rows": 15}, {"class": 1, "rows": 15}, {"class": 2, "rows": 3}]
    checks = {check["name"]: check for check in summary["checks"]}
    assert list(checks) == ["file", "columns", "values", "labels", "classes", "delta"]
    assert checks["delta"]["status"] == "skipped" and checks["classes"]["codes"] == ["small-class", "empty-class"]
    assert_no_row_shown(out)


def test_bad_file_lists_every_problem(capsys, bad_csv):
    code, out, err = run(capsys, str(bad_csv))
    assert code == 1 and err == ""
    text = flat(out)
    assert "FAILED columns 1 feature column is not numeric: 'city' (text in 3 of 3 cells)" in text
    assert "one-hot encode categorical columns" in text
    assert "FAILED values 2 cells in 1 feature column are missing, NaN or infinite: 'chol' (1 missing, 1 NaN)" in text
    assert "FAILED labels the label column 'label' holds 1 value with a fractional part" in text
    assert "1 negative value" in text
    assert out.rstrip().endswith("NOT usable: 4 problems")
    assert_no_row_shown(out)


def test_bad_file_as_json(capsys, bad_csv):
    code, out, _ = run(capsys, str(bad_csv), "--json", "--delta", "0.5")
    assert code == 1
    summary = json.loads(out)
    assert summary["usable"] is False and summary["errors"] == 5
    codes = {code for check in summary["checks"] for code in check["codes"]}
    assert codes == {"non-numeric-features", "missing-values", "label-not-integer", "label-negative",
                     "delta-too-large"}
    assert_no_row_shown(out)


def test_too_many_rows_for_the_delta(capsys, tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, features=np.full((740, 2), 123.456), label=np.arange(740) % 2)
    code, out, _ = run(capsys, str(path), "--delta", "0.01")
    assert code == 1
    text = flat(out)
    assert "FAILED delta delta 0.01 is not below 1/n = 1/740" in text
    assert "for 740 records: use delta below 0.0013" in text and "suits at most 99 records" in text
    assert_no_row_shown(out)


def test_missing_label_column_suggests_the_close_name(capsys, tmp_path):
    path = tmp_path / "o.csv"
    path.write_text("age,Diagnosis\n1,0\n")
    code, out, _ = run(capsys, str(path), "--label-column", "diagnosis")
    assert code == 1 and "(did you mean 'Diagnosis'?)" in flat(out)


def test_unreadable_file_is_a_failed_check(capsys, tmp_path):
    path = tmp_path / "o.parquet"
    path.write_bytes(b"garbage 123.456")
    pytest.importorskip("pyarrow")
    code, out, _ = run(capsys, str(path))
    assert code == 1 and "FAILED file is not a readable Parquet file" in flat(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nope.csv"], "no such file"),
        (["{tmp}/data.xlsx"], "unknown file type '.xlsx'"),
        (["{tmp}"], "is a folder"),
    ],
)
def test_usage_errors_exit_2(capsys, tmp_path, args, message):
    (tmp_path / "data.xlsx").write_text("x")
    code, out, err = run(capsys, *(arg.format(tmp=tmp_path) for arg in args))
    assert code == 2 and out == ""
    assert err.startswith("privfl data: error: ") and message in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--delta", "2"], "argument --delta: must be in (0, 1)"),
        (["--delta", "x"], "'x' is not a number"),
        (["--num-classes", "0"], "argument --num-classes: must be >= 1"),
        (["--label-column", " "], "argument --label-column: must name a column"),
    ],
)
def test_bad_options_exit_2(capsys, good_csv, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "check", str(good_csv), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "check", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "privfl data check st-mary.csv" in out and "--label-column" in out and "exit status" in out


def test_the_installed_command(tmp_path):
    """Once through the real entry point: the subcommand is registered and exits 0."""
    path = tmp_path / "o.csv"
    path.write_text("a,label\n" + "1.5,0\n2.5,1\n" * 10)
    done = subprocess.run([sys.executable, "-m", "privfl.cli", "data", "check", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rows:          20" in done.stdout and "1.5" not in done.stdout
