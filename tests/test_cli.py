"""The command line as a user meets it: exit codes, messages, files written."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from serve.cli import main


@pytest.fixture(scope="module")
def csv_province(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("csv_province")
    result = CliRunner().invoke(
        main,
        ["simulate", "--out", str(folder), "--seed", "11", "--scale", "small", "--format", "csv"],
    )
    assert result.exit_code == 0, result.output
    return folder


def rewrite(path: Path, edit: dict[tuple[int, str], str]) -> None:
    """Set (1-based data row, column) cells of a CSV file."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for (row, column), value in edit.items():
        rows[row - 1][column] = value
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_validate_names_every_planted_problem(csv_province: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(csv_province, bad)
    items = pd.read_csv(bad / "settlement_items.csv", dtype=str)
    rewrite(
        bad / "settlements.csv",
        {(5, "fund_paid"): "99999.00", (9, "visit_type"): "home", (12, "settled_at"): "not a time"},
    )
    rewrite(
        bad / "settlement_items.csv",
        {
            (3, "quantity"): "abc",
            (7, "amount"): "-1.00",
            (8, "settlement_id"): "NO-SUCH-SETTLEMENT",
            (10, "unit_price"): "1.234",
        },
    )
    rewrite(bad / "patients.csv", {(2, "gender"): "X", (4, "region_code"): "12"})
    rewrite(bad / "institutions.csv", {(2, "institution_id"): items.iloc[0]["settlement_id"]})
    result = CliRunner().invoke(main, ["validate", "--data", str(bad)])
    assert result.exit_code == 1
    out = result.output
    for expected in (
        "settlements row 5, field fund_paid",
        "settlements row 9, field visit_type",
        "settlements row 12, field settled_at",
        "settlement_items row 3, field quantity",
        "settlement_items row 7, field amount",
        "settlement_items row 8, field settlement_id",
        "settlement_items row 10, field unit_price",
        "patients row 2, field gender",
        "patients row 4, field region_code",
    ):
        assert expected in out, f"{expected!r} not named in:\n{out}"


def test_validate_passes_a_clean_province(csv_province: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "--data", str(csv_province)])
    assert result.exit_code == 0, result.output
    assert "conforms" in result.output


def test_screen_refuses_bad_input_and_writes_nothing(csv_province: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(csv_province, bad)
    (bad / "drugs.csv").unlink()  # products refer to drugs
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["screen", "--data", str(bad), "--out", str(out)])
    assert result.exit_code != 0
    assert "drugs" in result.output
    assert not (out / "flags.parquet").exists()


def test_screen_on_csv_equals_screen_on_parquet(csv_province: Path, tmp_path: Path) -> None:
    parquet = tmp_path / "parquet"
    assert (
        CliRunner()
        .invoke(main, ["simulate", "--out", str(parquet), "--seed", "11", "--scale", "small"])
        .exit_code
        == 0
    )
    for folder, out in ((csv_province, tmp_path / "a"), (parquet, tmp_path / "b")):
        result = CliRunner().invoke(main, ["screen", "--data", str(folder), "--out", str(out)])
        assert result.exit_code == 0, result.output
    a = pd.read_parquet(tmp_path / "a" / "flags.parquet")
    b = pd.read_parquet(tmp_path / "b" / "flags.parquet")
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "--data", str(tmp_path / "nope")])
    assert result.exit_code != 0
    assert "no such folder" in result.output


def test_the_black_list_is_kept_in_the_store_and_screening_uses_it(
    csv_province: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUNDGUARD_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    institution = pd.read_csv(csv_province / "settlements.csv", dtype=str)["institution_id"].iloc[0]
    added = runner.invoke(main, ["blacklist", "add", institution, "--reason", "暂停协议"])
    assert added.exit_code == 0, added.output
    assert "1 institution(s)" in runner.invoke(main, ["blacklist", "list"]).output
    out = tmp_path / "out"
    assert (
        runner.invoke(main, ["screen", "--data", str(csv_province), "--out", str(out)]).exit_code
        == 0
    )
    flags = pd.read_parquet(out / "flags.parquet")
    listed = flags[flags["pattern"] == "blacklisted_institution"]
    assert len(listed) > 0
    assert set(listed["action"]) == {"reject"}
    assert runner.invoke(main, ["blacklist", "remove", institution]).exit_code == 0
    assert runner.invoke(main, ["blacklist", "remove", institution]).exit_code != 0
