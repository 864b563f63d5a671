"""Validated loading of contract tables (features.load): a tiny valid province in
CSV and parquet, then corrupt copies, each planting problems that must be
reported with the right table, row and field."""

from __future__ import annotations

import copy
import datetime as dt
import pickle
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.load import ContractViolation, Problem, load_tables, read_table, validate_folder
from features.tables import TABLES, TIMEZONE, Kind, schema

Rows = list[dict[str, str | None]]

# A tiny province as its producer would write it in CSV: every value is text.
PROVINCE: dict[str, Rows] = {
    "institutions": [
        {
            "institution_id": "I1",
            "name": "第一人民医院",
            "kind": "hospital",
            "level": "3",
            "region_code": "310101",
        },
        {
            "institution_id": "I2",
            "name": "康民大药房",
            "kind": "pharmacy",
            "level": "0",
            "region_code": "310104",
        },
    ],
    "patients": [
        {
            "patient_id": "P1",
            "gender": "M",
            "birth_date": "1960-05-01",
            "region_code": "310101",
            "locality_code": "310101001001",
        },
        {
            "patient_id": "P2",
            "gender": "F",
            "birth_date": "1985-11-20",
            "region_code": "310101",
            "locality_code": None,
        },
        {
            "patient_id": "P3",
            "gender": "F",
            "birth_date": "2001-02-03",
            "region_code": "310104",
            "locality_code": "310104002003",
        },
    ],
    "drugs": [
        {
            "drug_code": "D1",
            "generic_name": "二甲双胍片",
            "pack_units": "60",
            "max_units_per_day": "6",
            "gender_restriction": None,
            "min_age": None,
            "max_age": None,
            "high_value": "false",
            "red_list": "false",
        },
        {
            "drug_code": "D2",
            "generic_name": "阿达木单抗注射液",
            "pack_units": "2",
            "max_units_per_day": None,
            "gender_restriction": None,
            "min_age": "18",
            "max_age": None,
            "high_value": "true",
            "red_list": "true",
        },
    ],
    "products": [
        {"product_code": "8123456", "drug_code": "D1", "manufacturer": "某制药"},
        {"product_code": "06901234567892", "drug_code": "D2", "manufacturer": None},
    ],
    "services": [
        {
            "service_code": "S1",
            "name": "糖化血红蛋白测定",
            "gender_restriction": None,
            "min_age": None,
            "max_age": None,
            "max_times": "1",
            "period_days": "90",
        },
    ],
    "settlements": [
        {
            "settlement_id": "ST1",
            "institution_id": "I1",
            "patient_id": "P1",
            "settled_at": "2025-03-01T10:00:00+00:00",
            "visit_type": "outpatient",
            "admit_date": None,
            "discharge_date": None,
            "diagnosis_code": "E11.900",
            "total_amount": "120.50",
            "fund_paid": "100",
        },
        {
            "settlement_id": "ST2",
            "institution_id": "I1",
            "patient_id": "P2",
            "settled_at": "2025-03-05 09:30:00",
            "visit_type": "inpatient",
            "admit_date": "2025-03-02",
            "discharge_date": "2025-03-05",
            "diagnosis_code": "J18.900",
            "total_amount": "3000.00",
            "fund_paid": "2500.00",
        },
        {
            "settlement_id": "ST3",
            "institution_id": "I2",
            "patient_id": "P3",
            "settled_at": "2025-03-06T12:00:00+08:00",
            "visit_type": "pharmacy",
            "admit_date": None,
            "discharge_date": None,
            "diagnosis_code": None,
            "total_amount": "45.00",
            "fund_paid": "0.00",
        },
    ],
    "settlement_items": [
        {
            "settlement_id": "ST1",
            "line_no": "1",
            "item_type": "drug",
            "item_code": "D1",
            "quantity": "60",
            "unit_price": "1.50",
            "amount": "90.00",
            "trace_codes": "81234560000000010001",
            "split_sale": "false",
        },
        {
            "settlement_id": "ST1",
            "line_no": "2",
            "item_type": "service",
            "item_code": "S1",
            "quantity": "1",
            "unit_price": "30.50",
            "amount": "30.50",
            "trace_codes": None,
            "split_sale": None,
        },
        {
            "settlement_id": "ST2",
            "line_no": "1",
            "item_type": "drug",
            "item_code": "D2",
            "quantity": "2",
            "unit_price": "1500.00",
            "amount": "3000.00",
            "trace_codes": "010690123456789221A1B2C3|010690123456789221A1B2C4",
            "split_sale": "false",
        },
        {
            "settlement_id": "ST3",
            "line_no": "1",
            "item_type": "drug",
            "item_code": "D1",
            "quantity": "30",
            "unit_price": "1.50",
            "amount": "45.00",
            "trace_codes": "81234560000000010002",
            "split_sale": "true",
        },
    ],
    "trace_events": [
        {
            "trace_code": code,
            "event_type": "purchase",
            "institution_id": inst,
            "event_at": "2025-02-20T08:00:00+08:00",
        }
        for code, inst in [
            ("81234560000000010001", "I1"),
            ("81234560000000010002", "I2"),
            ("010690123456789221A1B2C3", "I1"),
            ("010690123456789221A1B2C4", "I1"),
        ]
    ],
    "reversals": [{"settlement_id": "ST3", "reversed_at": "2025-03-07 08:00:00"}],
    "labels": [
        {
            "entity_type": "settlement",
            "entity_id": "ST2",
            "pattern": "split_admission",
            "label": "0",
            "decided_at": "2025-04-01T09:00:00Z",
        },
        {
            "entity_type": "institution",
            "entity_id": "I2",
            "pattern": "resale_hub",
            "label": "1",
            "decided_at": None,
        },
    ],
}

FORMATS = ["csv", "parquet"]  # parquet here: the same text, in string columns


def province() -> dict[str, Rows]:
    return copy.deepcopy(PROVINCE)


def write(folder: Path, tables: dict[str, Rows], fmt: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        frame = pd.DataFrame(rows, dtype=object)
        if fmt == "csv":
            frame.to_csv(folder / f"{name}.csv", index=False)
        else:
            arrays = {c: pa.array(frame[c].tolist(), pa.string()) for c in frame.columns}
            pq.write_table(pa.table(arrays), folder / f"{name}.parquet")
    return folder


def _native(kind: Kind, values: list[str | None]) -> pa.Array:
    """The text values as a parquet writer with real types would store them."""

    def each(f: Callable[[str], object]) -> list[object]:
        return [None if v is None else f(v) for v in values]

    match kind:
        case Kind.INT:
            return pa.array(each(int), pa.int32())
        case Kind.MONEY:
            return pa.array(each(Decimal), pa.decimal128(12, 2))
        case Kind.TIMESTAMP:
            utc = [None if v is None else pd.Timestamp(v) for v in values]
            utc = [
                None
                if t is None
                else (t if t.tzinfo else t.tz_localize(TIMEZONE)).tz_convert("UTC")
                for t in utc
            ]
            return pa.array(utc, pa.timestamp("ms", "UTC"))
        case Kind.DATE:
            return pa.array(each(dt.date.fromisoformat), pa.date32())
        case Kind.BOOL:
            return pa.array(each(lambda v: v == "true"), pa.bool_())
        case Kind.CODE_LIST:
            return pa.array(each(lambda v: v.split("|")), pa.large_list(pa.large_string()))
        case _:
            return pa.array(values, pa.large_string())


def write_native(folder: Path, tables: dict[str, Rows]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        t = TABLES[name]
        cols = list(rows[0])
        arrays = {c: _native(t.col(c).kind, [r[c] for r in rows]) for c in cols}
        pq.write_table(pa.table(arrays), folder / f"{name}.parquet", row_group_size=1)
    return folder


def where(problems: list[Problem]) -> set[tuple[str, int | None, str | None]]:
    return {(p.table, p.row, p.column) for p in problems}


# --- valid folders --------------------------------------------------------------


@pytest.fixture(params=[*FORMATS, "native"])
def valid_folder(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "native":
        return write_native(tmp_path / "native", province())
    return write(tmp_path / request.param, province(), request.param)


def test_valid_province_has_no_problems(valid_folder: Path) -> None:
    assert validate_folder(valid_folder) == []


def test_typed_frames(valid_folder: Path) -> None:
    frames = load_tables(valid_folder)
    assert list(frames) == list(TABLES)
    for name, frame in frames.items():
        assert list(frame.columns) == list(TABLES[name].column_names)
        assert len(frame) == len(PROVINCE[name])
        assert isinstance(frame.index, pd.RangeIndex)
        for col in TABLES[name].columns:
            assert frame[col.name].dtype == col.dtype, (name, col.name)
        schema(name).validate(frame)  # the frames pass their own schema, keys included

    s = frames["settlements"]
    money = pd.ArrowDtype(pa.decimal128(18, 2))
    assert s["total_amount"].dtype == money
    assert s["total_amount"].tolist() == [Decimal("120.50"), Decimal("3000.00"), Decimal("45.00")]
    assert s["fund_paid"][0] == Decimal("100.00")
    assert s["settled_at"].dtype == pd.DatetimeTZDtype("us", "Asia/Shanghai")
    # +00:00 is converted, naive is local, +08:00 is kept
    assert s["settled_at"].tolist() == [
        pd.Timestamp("2025-03-01 18:00", tz=TIMEZONE),
        pd.Timestamp("2025-03-05 09:30", tz=TIMEZONE),
        pd.Timestamp("2025-03-06 12:00", tz=TIMEZONE),
    ]
    assert s["admit_date"].dtype == np.dtype("datetime64[s]")
    assert s["admit_date"][1] == pd.Timestamp("2025-03-02")
    assert s["admit_date"].isna().tolist() == [True, False, True]
    assert s["doctor_id"].isna().all()  # optional column absent from the file: typed nulls
    assert s["doctor_id"].dtype == pd.StringDtype("pyarrow", na_value=np.nan)

    labels = frames["labels"]
    assert labels["decided_at"][0] == pd.Timestamp("2025-04-01 17:00", tz=TIMEZONE)
    assert labels["label"].tolist() == [0, 1]

    items = frames["settlement_items"]
    assert items["trace_codes"].dtype == pd.ArrowDtype(pa.list_(pa.string()))
    assert list(items["trace_codes"][2]) == [
        "010690123456789221A1B2C3",
        "010690123456789221A1B2C4",
    ]
    assert items["trace_codes"].isna().tolist() == [False, True, False, False]
    assert items["split_sale"].dtype == pd.BooleanDtype()
    assert items["split_sale"].tolist()[2:] == [False, True]
    assert frames["patients"]["birth_date"][0] == pd.Timestamp("1960-05-01")


def test_csv_and_parquet_give_the_same_frames(tmp_path: Path) -> None:
    from_csv = load_tables(write(tmp_path / "c", province(), "csv"))
    from_native = load_tables(write_native(tmp_path / "n", province()))
    for name in TABLES:
        pd.testing.assert_frame_equal(from_csv[name], from_native[name])


# DuckDB hands pandas frames to pyarrow, whose conversion of tz-aware columns trips a
# pandas 3.1 deprecation warning (Series.values); not ours to fix.
@pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")
def test_duckdb_reads_the_typed_frames(tmp_path: Path) -> None:
    frames = load_tables(write(tmp_path / "c", province(), "csv"))
    items, settlements = frames["settlement_items"], frames["settlements"]  # noqa: F841
    con = duckdb.connect()
    codes = con.execute(
        "SELECT settlement_id, unnest(trace_codes) AS code FROM items ORDER BY ALL"
    ).fetchall()
    assert ("ST2", "010690123456789221A1B2C4") in codes
    assert len(codes) == 4
    total = con.execute(
        "SELECT sum(amount) FROM items JOIN settlements USING (settlement_id)"
        " WHERE settled_at >= TIMESTAMPTZ '2025-03-01 10:00:00+00'"
    ).fetchone()
    assert total == (Decimal("3165.50"),)


def test_extra_columns_kept_and_extra_files_ignored(tmp_path: Path) -> None:
    tables = province()
    for row in tables["settlements"]:
        row["note"] = "复核"
    folder = write(tmp_path / "x", tables, "csv")
    (folder / "truth").mkdir()
    pd.DataFrame({"settlement_id": ["nope"]}).to_csv(folder / "truth" / "settlements.csv")
    (folder / "README.txt").write_text("not a table")
    (folder / "weather.csv").write_text("a,b\n1,2\n")
    assert validate_folder(folder) == []
    frames = load_tables(folder)
    assert frames["settlements"]["note"].tolist() == ["复核"] * 3
    assert "weather" not in frames


def test_only_present_tables_are_loaded(tmp_path: Path) -> None:
    tables = {k: v for k, v in province().items() if k in ("drugs", "products", "services")}
    folder = write(tmp_path / "catalogs", tables, "csv")
    assert set(load_tables(folder)) == {"drugs", "products", "services"}


def test_read_table_checks_references_against_the_parent_file(tmp_path: Path) -> None:
    folder = write(tmp_path / "c", province(), "csv")
    items = read_table(folder, "settlement_items")
    assert len(items) == 4
    (folder / "settlements.csv").unlink()
    with pytest.raises(ContractViolation) as err:
        read_table(folder, "settlement_items")
    assert [(p.table, p.row) for p in err.value.problems] == [("settlements", None)]
    assert "referred to by settlement_items.settlement_id" in err.value.problems[0].reason


def test_requested_table_missing(tmp_path: Path) -> None:
    folder = write(tmp_path / "c", {"drugs": province()["drugs"]}, "csv")
    with pytest.raises(ContractViolation) as err:
        load_tables(folder, ["drugs", "labels"])
    assert str(err.value.problems[0]) == "labels: file missing: labels.parquet or labels.csv"
    with pytest.raises(ValueError, match="not contract tables"):
        load_tables(folder, ["drug"])


# --- one planted problem at a time ---------------------------------------------------


def _set(table: str, row: int, column: str, value: str | None) -> Callable[[dict[str, Rows]], None]:
    def plant(tables: dict[str, Rows]) -> None:
        tables[table][row - 1][column] = value

    return plant


def _drop_column(table: str, column: str) -> Callable[[dict[str, Rows]], None]:
    def plant(tables: dict[str, Rows]) -> None:
        for r in tables[table]:
            del r[column]

    return plant


def _append_copy(table: str, row: int) -> Callable[[dict[str, Rows]], None]:
    def plant(tables: dict[str, Rows]) -> None:
        tables[table].append(dict(tables[table][row - 1]))

    return plant


def _drop_table(table: str) -> Callable[[dict[str, Rows]], None]:
    def plant(tables: dict[str, Rows]) -> None:
        del tables[table]

    return plant


# (planting, table, row, column, words in the reason)
PLANTED = {
    "missing column": (
        _drop_column("settlements", "fund_paid"),
        ("settlements", None, "fund_paid", "required column missing"),
    ),
    "abc in quantity": (
        _set("settlement_items", 2, "quantity", "abc"),
        ("settlement_items", 2, "quantity", "'abc' is not an integer"),
    ),
    "fractional quantity": (
        _set("settlement_items", 3, "quantity", "1.5"),
        ("settlement_items", 3, "quantity", "'1.5' is not an integer"),
    ),
    "zero quantity": (
        _set("settlement_items", 1, "quantity", "0"),
        ("settlement_items", 1, "quantity", "0 is below the minimum 1"),
    ),
    "unknown enum": (
        _set("institutions", 2, "kind", "supermarket"),
        ("institutions", 2, "kind", "'supermarket' is not one of hospital, primary_care"),
    ),
    "unknown visit type": (
        _set("settlements", 3, "visit_type", "Inpatient"),
        ("settlements", 3, "visit_type", "'Inpatient' is not one of"),
    ),
    "unparseable date": (
        _set("patients", 1, "birth_date", "1960-02-30"),
        ("patients", 1, "birth_date", "'1960-02-30' is not a date"),
    ),
    "unparseable timestamp": (
        _set("settlements", 2, "settled_at", "05/03/2025 09:30"),
        ("settlements", 2, "settled_at", "is not a timestamp"),
    ),
    "negative amount": (
        _set("settlement_items", 4, "amount", "-45.00"),
        ("settlement_items", 4, "amount", "-45.00 is negative"),
    ),
    "more than 2 decimals": (
        _set("settlements", 1, "total_amount", "120.505"),
        ("settlements", 1, "total_amount", "'120.505' has more than 2 decimals"),
    ),
    "not an amount": (
        _set("settlement_items", 1, "unit_price", "1,50"),
        ("settlement_items", 1, "unit_price", "'1,50' is not an amount"),
    ),
    "fund_paid exceeds total": (
        _set("settlements", 3, "fund_paid", "45.01"),
        ("settlements", 3, "fund_paid", "45.01 exceeds total_amount 45.00"),
    ),
    "duplicate key": (
        _append_copy("settlement_items", 3),
        ("settlement_items", 5, "settlement_id,line_no", "first at row 3"),
    ),
    "duplicate id": (
        _append_copy("patients", 2),
        ("patients", 4, "patient_id", "duplicate patient_id 'P2', first at row 2"),
    ),
    "duplicate trace event": (
        _append_copy("trace_events", 2),
        (
            "trace_events",
            5,
            "trace_code,event_type,institution_id,event_at",
            "event_at 2025-02-20T08:00:00+08:00), first at row 2",
        ),
    ),
    "item of unknown settlement": (
        _set("settlement_items", 2, "settlement_id", "ST9"),
        ("settlement_items", 2, "settlement_id", "'ST9' not found in settlements"),
    ),
    "settlement of unknown patient": (
        _set("settlements", 3, "patient_id", "P9"),
        ("settlements", 3, "patient_id", "'P9' not found in patients"),
    ),
    "reversal of unknown settlement": (
        _set("reversals", 1, "settlement_id", "ST7"),
        ("reversals", 1, "settlement_id", "'ST7' not found in settlements"),
    ),
    "discharge before admission": (
        _set("settlements", 2, "discharge_date", "2025-03-01"),
        ("settlements", 2, "discharge_date", "2025-03-01 is before admit_date 2025-03-02"),
    ),
    "inpatient without admit_date": (
        _set("settlements", 2, "admit_date", None),
        ("settlements", 2, "admit_date", "missing (required when visit_type is inpatient)"),
    ),
    "bad region_code": (
        _set("institutions", 1, "region_code", "31010"),
        ("institutions", 1, "region_code", "'31010' is not 6 digits"),
    ),
    "bad locality_code": (
        _set("patients", 3, "locality_code", "31010400200A"),
        ("patients", 3, "locality_code", "is not 12 digits"),
    ),
    "level out of range": (
        _set("institutions", 1, "level", "4"),
        ("institutions", 1, "level", "4 is outside 0..3"),
    ),
    "bad gender": (
        _set("patients", 2, "gender", "女"),
        ("patients", 2, "gender", "'女' is not one of M, F"),
    ),
    "label not 0/1": (
        _set("labels", 2, "label", "2"),
        ("labels", 2, "label", "2 is not one of 0, 1"),
    ),
    "unknown pattern": (
        _set("labels", 1, "pattern", "fraud"),
        ("labels", 1, "pattern", "'fraud' is not one of"),
    ),
    "missing required value": (
        _set("settlements", 1, "institution_id", None),
        ("settlements", 1, "institution_id", "missing value"),
    ),
    "bad boolean": (
        _set("drugs", 2, "high_value", "maybe"),
        ("drugs", 2, "high_value", "'maybe' is not a boolean"),
    ),
    "max_age below min_age": (
        _set("drugs", 2, "max_age", "12"),
        ("drugs", 2, "max_age", "12 is below min_age 18"),
    ),
    "wrong GTIN check digit": (
        _set("products", 2, "product_code", "06901234567893"),
        ("products", 2, "product_code", "wrong GS1 check digit"),
    ),
    "empty trace code": (
        _set("settlement_items", 3, "trace_codes", "010690123456789221A1B2C3||X"),
        ("settlement_items", 3, "trace_codes", "holds an empty code"),
    ),
    "missing parent file": (
        _drop_table("patients"),
        ("patients", None, None, "referred to by settlements.patient_id"),
    ),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", list(PLANTED))
def test_planted_problem_is_reported(tmp_path: Path, fmt: str, case: str) -> None:
    plant, (table, row, column, words) = PLANTED[case]
    tables = province()
    plant(tables)
    folder = write(tmp_path / fmt, tables, fmt)

    problems = validate_folder(folder)
    assert where(problems) == {(table, row, column)}, problems
    assert words in problems[0].reason

    with pytest.raises(ContractViolation) as err:
        load_tables(folder)
    assert err.value.problems == problems


def test_problem_text() -> None:
    p = Problem("settlements", 17, "fund_paid", "120.00 exceeds total_amount 100.00")
    assert str(p) == "settlements row 17, field fund_paid: 120.00 exceeds total_amount 100.00"
    assert str(Problem("settlements", None, "fund_paid", "required column missing")) == (
        "settlements, field fund_paid: required column missing"
    )
    assert str(Problem("patients", None, None, "file missing")) == "patients: file missing"


def test_exact_words_for_fund_paid(tmp_path: Path) -> None:
    tables = province()
    tables["settlements"][0]["fund_paid"] = "130"
    problems = validate_folder(write(tmp_path / "c", tables, "csv"))
    assert [str(p) for p in problems] == [
        "settlements row 1, field fund_paid: 130.00 exceeds total_amount 120.50"
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_several_problems_at_once(tmp_path: Path, fmt: str) -> None:
    cases = [
        "abc in quantity",
        "unknown enum",
        "unparseable date",
        "negative amount",
        "more than 2 decimals",
        "duplicate key",
        "item of unknown settlement",
        "discharge before admission",
        "bad region_code",
        "label not 0/1",
    ]
    tables = province()
    for case in cases:
        PLANTED[case][0](tables)
    folder = write(tmp_path / fmt, tables, fmt)
    problems = validate_folder(folder)
    assert where(problems) == {PLANTED[c][1][:3] for c in cases}
    with pytest.raises(ContractViolation) as err:
        load_tables(folder)
    assert err.value.problems == problems
    assert "10 problems" in str(err.value)


def test_one_row_can_have_several_problems(tmp_path: Path) -> None:
    tables = province()
    row = tables["settlements"][1]
    row.update(visit_type="clinic", total_amount="-1", fund_paid="x", patient_id="P404")
    problems = validate_folder(write(tmp_path / "c", tables, "csv"))
    assert where(problems) == {
        ("settlements", 2, "visit_type"),
        ("settlements", 2, "total_amount"),
        ("settlements", 2, "fund_paid"),
        ("settlements", 2, "patient_id"),
    }


def test_unknown_extra_column_values_are_not_checked(tmp_path: Path) -> None:
    tables = province()
    tables["institutions"][0]["anything"] = "abc"
    assert validate_folder(write(tmp_path / "c", tables, "csv")) == []


# --- files and formats ---------------------------------------------------------------


def test_both_csv_and_parquet_for_one_table(tmp_path: Path) -> None:
    folder = write(tmp_path / "c", province(), "csv")
    write(folder, {"drugs": province()["drugs"]}, "parquet")
    problems = validate_folder(folder)
    assert where(problems) == {("drugs", None, None)}
    assert "both drugs.parquet and drugs.csv" in problems[0].reason


def test_ragged_csv_rows_keep_row_numbers(tmp_path: Path) -> None:
    folder = write(tmp_path / "c", province(), "csv")
    path = folder / "settlement_items.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2] + ",extra"  # data row 2 gets a tenth field
    lines[4] = lines[4].replace(",60,", ",sixty,").replace(",30,", ",thirty,")  # data row 4
    path.write_text("\n".join(lines) + "\n")
    problems = validate_folder(folder)
    assert where(problems) == {
        ("settlement_items", 2, None),
        ("settlement_items", 4, "quantity"),
    }
    assert "has 10 fields, the header has 9" in problems[0].reason


def test_multiline_csv_values_and_bom(tmp_path: Path) -> None:
    tables = province()
    tables["institutions"][0]["name"] = "第一人民医院\n(东院)"
    tables["institutions"][1]["level"] = "9"
    folder = write(tmp_path / "c", tables, "csv")
    path = folder / "institutions.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # Excel's BOM
    problems = validate_folder(folder)
    assert where(problems) == {("institutions", 2, "level")}


def test_not_utf8_csv_row(tmp_path: Path) -> None:
    folder = write(tmp_path / "c", province(), "csv")
    path = folder / "drugs.csv"
    path.write_bytes(path.read_bytes().replace("阿达木单抗".encode(), "阿达木单抗".encode("gbk")))
    problems = validate_folder(folder)
    # the row is kept (its key D2 still exists for products), the field is named
    assert [str(p) for p in problems] == ["drugs row 2, field generic_name: is not valid UTF-8"]


def test_parquet_column_of_the_wrong_type(tmp_path: Path) -> None:
    folder = write_native(tmp_path / "n", province())
    t = pq.read_table(folder / "settlements.parquet")
    t = t.set_column(
        t.schema.get_field_index("settled_at"), "settled_at", pa.array([1.0, 2.0, 3.0])
    )
    pq.write_table(t, folder / "settlements.parquet")
    problems = validate_folder(folder)
    assert [str(p) for p in problems] == [
        "settlements, field settled_at: has type double, expected timestamp"
    ]


def test_parquet_float_money_with_a_third_decimal(tmp_path: Path) -> None:
    folder = write_native(tmp_path / "n", province())
    t = pq.read_table(folder / "settlement_items.parquet")
    i = t.schema.get_field_index("unit_price")
    t = t.set_column(i, "unit_price", pa.array([1.5, 30.5, 1500.0, 0.1 + 0.2]))
    pq.write_table(t, folder / "settlement_items.parquet", row_group_size=2)
    problems = validate_folder(folder)
    assert [str(p) for p in problems] == [
        "settlement_items row 4, field unit_price: 0.30000000000000004 has more than 2 decimals"
    ]


def test_timestamp_offsets(tmp_path: Path) -> None:
    tables = province()
    stamps = ["2025-03-01T00:30:00Z", "2025-03-05T09:30:00.250+05:30", "2025-03-06"]
    for row, stamp in zip(tables["settlements"], stamps, strict=True):
        row["settled_at"] = stamp
    frame = load_tables(write(tmp_path / "c", tables, "csv"), ["settlements"])["settlements"]
    assert frame["settled_at"].tolist() == [
        pd.Timestamp("2025-03-01 08:30", tz=TIMEZONE),
        pd.Timestamp("2025-03-05 12:00:00.250", tz=TIMEZONE),
        pd.Timestamp("2025-03-06 00:00", tz=TIMEZONE),
    ]


# --- chunks and caps -----------------------------------------------------------------


def _many_items(n: int, bad_every: int) -> dict[str, Rows]:
    tables = province()
    tables["settlement_items"] = [
        {
            "settlement_id": "ST1",
            "line_no": str(i),
            "item_type": "service",
            "item_code": "S1",
            "quantity": "x" if i % bad_every == 0 else "1",
            "unit_price": "1.00",
            "amount": "1.00",
        }
        for i in range(1, n + 1)
    ]
    return tables


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 1000])
def test_chunking_keeps_row_numbers(tmp_path: Path, fmt: str, chunk_rows: int) -> None:
    tables = _many_items(10, bad_every=4)
    tables["settlement_items"].append(dict(tables["settlement_items"][0]))  # dup of row 1
    tables["settlement_items"][6]["settlement_id"] = "ST404"
    folder = tmp_path / fmt
    write(folder, tables, fmt)
    if fmt == "parquet":  # several row groups too
        t = pq.read_table(folder / "settlement_items.parquet")
        pq.write_table(t, folder / "settlement_items.parquet", row_group_size=3)
    problems = validate_folder(folder, chunk_rows=chunk_rows)
    assert where(problems) == {
        ("settlement_items", 4, "quantity"),
        ("settlement_items", 8, "quantity"),
        ("settlement_items", 7, "settlement_id"),
        ("settlement_items", 11, "settlement_id,line_no"),
    }
    frames = load_tables(write(tmp_path / "ok", province(), fmt), chunk_rows=chunk_rows)
    assert len(frames["settlement_items"]) == 4
    assert frames["settlement_items"].index.tolist() == [0, 1, 2, 3]


def test_report_is_capped_per_table_and_reason(tmp_path: Path) -> None:
    folder = write(tmp_path / "c", _many_items(50, bad_every=2), "csv")
    problems = validate_folder(folder, chunk_rows=7, max_listed=3)
    assert [(p.row, p.column) for p in problems] == [
        (2, "quantity"),
        (4, "quantity"),
        (6, "quantity"),
        (None, "quantity"),
    ]
    assert problems[-1].reason.startswith("22 more rows with this problem")


def test_empty_table_file(tmp_path: Path) -> None:
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "reversals.csv").write_text("settlement_id,reversed_at\n")
    write(folder, {"settlements": [], "institutions": [], "patients": []}, "csv")
    (folder / "settlements.csv").write_text(",".join(TABLES["settlements"].required) + "\n")
    (folder / "institutions.csv").write_text(",".join(TABLES["institutions"].column_names) + "\n")
    (folder / "patients.csv").write_text(",".join(TABLES["patients"].column_names) + "\n")
    frames = load_tables(folder)
    assert len(frames["reversals"]) == 0
    assert frames["reversals"]["reversed_at"].dtype == pd.DatetimeTZDtype("us", TIMEZONE)
    assert frames["settlements"]["total_amount"].dtype == pd.ArrowDtype(pa.decimal128(18, 2))


# --- money, exactly ------------------------------------------------------------------


@pytest.mark.slow
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cents=st.lists(st.integers(0, 10**15), min_size=1, max_size=5),
    third=st.integers(1, 9),
)
def test_money_is_exact(tmp_path: Path, cents: list[int], third: int) -> None:
    tables = {"drugs": province()["drugs"][:1], "services": province()["services"]}
    items = [f"{c // 100}.{c % 100:02d}" for c in cents]
    folder = tmp_path / f"m{abs(hash((tuple(cents), third)))}"
    rows = [
        {
            "settlement_id": "ST1",
            "line_no": str(i + 1),
            "item_type": "service",
            "item_code": "S1",
            "quantity": "1",
            "unit_price": text,
            "amount": text,
        }
        for i, text in enumerate(items)
    ]
    settlement = dict(province()["settlements"][0])
    settlement.update(total_amount="99999999999999.99", fund_paid="0")
    tables.update(
        settlements=[settlement],
        settlement_items=rows,
        institutions=province()["institutions"],
        patients=province()["patients"],
    )
    write(folder, tables, "csv")
    got = load_tables(folder, ["settlement_items"])["settlement_items"]["amount"]
    assert got.tolist() == [Decimal(c) / 100 for c in cents]

    rows[-1]["amount"] = items[-1] + str(third)  # a third decimal, never rounded away
    write(folder, tables, "csv")
    problems = validate_folder(folder)
    assert where(problems) == {("settlement_items", len(rows), "amount")}


def test_inpatient_rows_need_dates_even_when_the_columns_are_absent(tmp_path: Path) -> None:
    tables = province()
    for row in tables["settlements"]:
        del row["admit_date"], row["discharge_date"]
    problems = validate_folder(write(tmp_path / "c", tables, "csv"))
    assert where(problems) == {
        ("settlements", 2, "admit_date"),
        ("settlements", 2, "discharge_date"),
    }


def test_contract_violation_pickles() -> None:
    err = ContractViolation([Problem("drugs", 2, "pack_units", "0 is below the minimum 1")])
    again = pickle.loads(pickle.dumps(err))  # noqa: S301 -- our own bytes
    assert again.problems == err.problems
    assert str(again) == str(err)


def test_empty_code_list_is_null_as_in_csv(tmp_path: Path) -> None:
    folder = write_native(tmp_path / "n", province())
    t = pq.read_table(folder / "settlement_items.parquet")
    i = t.schema.get_field_index("trace_codes")
    codes = pa.array([["81234560000000010001"], [], None, ["81234560000000010002"]])
    pq.write_table(t.set_column(i, "trace_codes", codes), folder / "settlement_items.parquet")
    items = read_table(folder, "settlement_items")
    assert items["trace_codes"].isna().tolist() == [False, True, True, False]


def test_working_files_are_removed(tmp_path: Path) -> None:
    folder = write(tmp_path / "c", province(), "csv")
    work = tmp_path / "work"
    work.mkdir()
    assert validate_folder(folder, temp_dir=work) == []
    assert list(work.iterdir()) == []


def test_missing_values_are_told_apart_by_column(tmp_path: Path) -> None:
    tables = province()
    for case in ("missing column", "missing required value", "more than 2 decimals"):
        PLANTED[case][0](tables)
    tables["settlements"][2]["patient_id"] = None
    problems = validate_folder(write(tmp_path / "c", tables, "csv"))
    assert [str(p) for p in problems] == [
        "settlements, field fund_paid: required column missing",
        "settlements row 1, field institution_id: missing value",
        "settlements row 1, field total_amount: '120.505' has more than 2 decimals",
        "settlements row 3, field patient_id: missing value",
    ]
