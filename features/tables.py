"""The batch contract tables (CONTRACT.md section 3) as data.

One description per table -- its columns (required or optional, logical kind,
allowed values, bounds, patterns), key, foreign keys and cross-column rules --
and everything else is derived from it: the pandas dtypes of the typed frames,
the pandera ``DataFrameSchema`` of each table (:func:`schema`), the row checks
with their human-readable reasons (:func:`row_checks`), and the relational
checks that :mod:`features.load` runs in DuckDB.

Extending the contract (a new optional column, a new enum value, a new table)
means editing :data:`TABLES` and nothing else.

Typed frames (:data:`DTYPES`): ids, codes, names and enums in pandas 3's default
string dtype (``str``: pyarrow-backed, NaN for missing); integers ``Int64``;
money ``ArrowDtype(decimal128(18, 2))`` (exact); timestamps
``datetime64[us, Asia/Shanghai]``; dates naive ``datetime64[s]`` at midnight
(numpy-backed, so date arithmetic and comparisons with timestamps work as
usual); booleans nullable ``boolean``; code lists ``ArrowDtype(list<string>)``
(DuckDB scans it as ``VARCHAR[]``).

Where the contract is silent, these tables decide (and say so here):

- keys: ``trace_events`` -- all four columns (the same event twice is a
  duplicate); ``labels`` -- (entity_type, entity_id, pattern): one verdict per
  entity and pattern; ``settlement_items`` -- (settlement_id, line_no);
  ``reversals`` -- settlement_id (a settlement is refunded once).
- ``labels.pattern`` must be a pattern of section 4 (:data:`PATTERNS`),
  ``labels.entity_type`` one of :data:`ENTITY_TYPES`.
- ``pack_units``, ``quantity``, ``line_no``, ``max_units_per_day``,
  ``max_times`` and ``period_days`` are at least 1; ages lie in 0..150 and
  ``max_age >= min_age``.
- ``products.product_code``: 7 digits, or 14 digits with a valid GS1 check digit.
- Every money column (unit_price too) is non-negative with at most 2 decimals.
  ``amount = quantity x unit_price`` is not checked here (rounding is the
  settlement system's business); rules may.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pdr
import pyarrow as pa

TIMEZONE = "Asia/Shanghai"
"""Naive times in the batch files are local time here (CONTRACT.md section 1)."""

LIST_SEPARATOR = "|"
"""Separator of list values in CSV cells."""

DETERMINISTIC_PATTERNS: tuple[str, ...] = (
    "duplicate_trace_code",
    "split_sale_overrun",
    "trace_code_mismatch",
    "missing_trace_code",
    "unpurchased_trace_code",
    "gender_restriction",
    "age_restriction",
    "over_frequency",
    "over_quantity",
    "split_admission",
)
"""The settlement patterns decided on facts alone: the five trace-code checks and the
catalog and history rules (CONTRACT.md section 4)."""

PATTERNS: tuple[str, ...] = (
    *DETERMINISTIC_PATTERNS,
    "group_admission",
    "drug_hoarding",
    "resale_hub",
    "anomalous_institution",
    "anomalous_settlement",
    "blacklisted_institution",
)
"""The patterns of CONTRACT.md section 4, the allowed values of ``labels.pattern``."""

ENTITY_TYPES: tuple[str, ...] = ("settlement", "group", "patient", "institution")


class Kind(enum.StrEnum):
    """Logical type of a column; each maps to one pandas dtype (:data:`DTYPES`)."""

    STRING = "string"  # ids, codes, names
    ENUM = "enum"  # a string from a fixed set of values
    INT = "int"
    MONEY = "money"  # yuan, exact, at most two decimals
    TIMESTAMP = "timestamp"  # Asia/Shanghai unless an offset is given
    DATE = "date"
    BOOL = "bool"
    CODE_LIST = "code_list"  # list of strings; `|`-separated in CSV


STRING_DTYPE = pd.StringDtype(storage="pyarrow", na_value=np.nan)  # pandas 3's "str"
MONEY_DTYPE = pd.ArrowDtype(pa.decimal128(18, 2))
TIMESTAMP_DTYPE = pd.DatetimeTZDtype(unit="us", tz=TIMEZONE)
DATE_DTYPE = np.dtype("datetime64[s]")
CODE_LIST_DTYPE = pd.ArrowDtype(pa.list_(pa.string()))

DTYPES: dict[Kind, Any] = {
    Kind.STRING: STRING_DTYPE,
    Kind.ENUM: STRING_DTYPE,
    Kind.INT: pd.Int64Dtype(),
    Kind.MONEY: MONEY_DTYPE,
    Kind.TIMESTAMP: TIMESTAMP_DTYPE,
    Kind.DATE: DATE_DTYPE,
    Kind.BOOL: pd.BooleanDtype(),
    Kind.CODE_LIST: CODE_LIST_DTYPE,
}
"""The dtype of each kind in the typed frames that :mod:`features.load` returns."""


@dataclass(frozen=True)
class Col:
    """One column of a contract table."""

    name: str
    kind: Kind
    required: bool = True
    values: tuple[str, ...] | tuple[int, ...] = ()  # ENUM, or an INT with a fixed set
    min: int | None = None  # INT bounds, inclusive
    max: int | None = None
    pattern: str | None = None  # STRING: a regular expression the whole value matches
    pattern_text: str = ""  # ... said in words: "6 digits"
    gtin_check_digit: bool = False  # STRING: a 14-digit value carries a GS1 check digit

    @property
    def dtype(self) -> Any:
        return DTYPES[self.kind]


@dataclass(frozen=True)
class Compare:
    """Row rule: ``column <op> other`` whenever both are present."""

    column: str  # the field a failure is reported on
    op: str  # "<=" or ">="
    other: str
    verb: str  # "exceeds": "120.00 exceeds total_amount 100.00"

    @property
    def id(self) -> str:
        return f"{self.column}{self.op}{self.other}"

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column, self.other)


@dataclass(frozen=True)
class RequiredWhen:
    """Row rule: ``column`` must be present when ``when_column == when_value``."""

    column: str
    when_column: str
    when_value: str

    @property
    def id(self) -> str:
        return f"{self.column}:required_when_{self.when_column}={self.when_value}"

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column, self.when_column)


RowRule = Compare | RequiredWhen


@dataclass(frozen=True)
class ForeignKey:
    """``column`` of this table names a key of ``table`` (its single key column)."""

    column: str
    table: str


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Col, ...]
    key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...] = ()
    rules: tuple[RowRule, ...] = ()

    def col(self, name: str) -> Col:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)


def _id(name: str, required: bool = True) -> Col:
    return Col(name, Kind.STRING, required)


def _digits(name: str, n: int, required: bool = True) -> Col:
    return Col(name, Kind.STRING, required, pattern=f"[0-9]{{{n}}}", pattern_text=f"{n} digits")


def _enum(name: str, values: tuple[str, ...], required: bool = True) -> Col:
    return Col(name, Kind.ENUM, required, values=values)


def _int(name: str, lo: int | None, hi: int | None = None, required: bool = True) -> Col:
    return Col(name, Kind.INT, required, min=lo, max=hi)


def _money(name: str) -> Col:
    return Col(name, Kind.MONEY)


_GENDERS = ("M", "F")
_AGE_LIMIT = 150

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "institutions",
            (
                _id("institution_id"),
                _id("name"),
                _enum("kind", ("hospital", "primary_care", "clinic", "pharmacy")),
                _int("level", 0, 3),
                _digits("region_code", 6),
            ),
            key=("institution_id",),
        ),
        Table(
            "patients",
            (
                _id("patient_id"),
                _enum("gender", _GENDERS),
                Col("birth_date", Kind.DATE),
                _digits("region_code", 6),
                _digits("locality_code", 12, required=False),
            ),
            key=("patient_id",),
        ),
        Table(
            "drugs",
            (
                _id("drug_code"),
                _id("generic_name"),
                _int("pack_units", 1),
                _int("max_units_per_day", 1, required=False),
                _enum("gender_restriction", _GENDERS, required=False),
                _int("min_age", 0, _AGE_LIMIT, required=False),
                _int("max_age", 0, _AGE_LIMIT, required=False),
                Col("high_value", Kind.BOOL, required=False),
                Col("red_list", Kind.BOOL, required=False),
            ),
            key=("drug_code",),
            rules=(Compare("max_age", ">=", "min_age", "is below"),),
        ),
        Table(
            "products",
            (
                Col(
                    "product_code",
                    Kind.STRING,
                    pattern="[0-9]{7}|[0-9]{14}",
                    pattern_text="7 digits or a GTIN-14",
                    gtin_check_digit=True,
                ),
                _id("drug_code"),
                _id("manufacturer", required=False),
            ),
            key=("product_code",),
            foreign_keys=(ForeignKey("drug_code", "drugs"),),
        ),
        Table(
            "services",
            (
                _id("service_code"),
                _id("name"),
                _enum("gender_restriction", _GENDERS, required=False),
                _int("min_age", 0, _AGE_LIMIT, required=False),
                _int("max_age", 0, _AGE_LIMIT, required=False),
                _int("max_times", 1, required=False),
                _int("period_days", 1, required=False),
            ),
            key=("service_code",),
            rules=(Compare("max_age", ">=", "min_age", "is below"),),
        ),
        Table(
            "settlements",
            (
                _id("settlement_id"),
                _id("institution_id"),
                _id("patient_id"),
                _id("doctor_id", required=False),
                Col("settled_at", Kind.TIMESTAMP),
                _enum("visit_type", ("outpatient", "inpatient", "pharmacy")),
                Col("admit_date", Kind.DATE, required=False),
                Col("discharge_date", Kind.DATE, required=False),
                _id("diagnosis_code", required=False),
                _money("total_amount"),
                _money("fund_paid"),
            ),
            key=("settlement_id",),
            foreign_keys=(
                ForeignKey("institution_id", "institutions"),
                ForeignKey("patient_id", "patients"),
            ),
            rules=(
                Compare("fund_paid", "<=", "total_amount", "exceeds"),
                Compare("discharge_date", ">=", "admit_date", "is before"),
                RequiredWhen("admit_date", "visit_type", "inpatient"),
                RequiredWhen("discharge_date", "visit_type", "inpatient"),
            ),
        ),
        Table(
            "settlement_items",
            (
                _id("settlement_id"),
                _int("line_no", 1),
                _enum("item_type", ("drug", "service", "material")),
                _id("item_code"),
                _int("quantity", 1),
                _money("unit_price"),
                _money("amount"),
                Col("trace_codes", Kind.CODE_LIST, required=False),
                Col("split_sale", Kind.BOOL, required=False),
            ),
            key=("settlement_id", "line_no"),
            foreign_keys=(ForeignKey("settlement_id", "settlements"),),
        ),
        Table(
            "trace_events",
            (
                _id("trace_code"),
                _enum("event_type", ("purchase", "return")),
                _id("institution_id"),
                Col("event_at", Kind.TIMESTAMP),
            ),
            # An event is its four facts; the same event twice is a duplicate.
            key=("trace_code", "event_type", "institution_id", "event_at"),
            foreign_keys=(ForeignKey("institution_id", "institutions"),),
        ),
        Table(
            "reversals",
            (_id("settlement_id"), Col("reversed_at", Kind.TIMESTAMP)),
            key=("settlement_id",),
            foreign_keys=(ForeignKey("settlement_id", "settlements"),),
        ),
        Table(
            "labels",
            (
                _enum("entity_type", ENTITY_TYPES),
                _id("entity_id"),
                _enum("pattern", PATTERNS),
                Col("label", Kind.INT, values=(0, 1)),
                Col("decided_at", Kind.TIMESTAMP, required=False),
            ),
            # One verdict per entity and pattern.
            key=("entity_type", "entity_id", "pattern"),
        ),
    )
}
"""The contract tables, in dependency order (a table's parents come before it)."""


def referrers(table: str) -> list[tuple[str, ForeignKey]]:
    """The (table, foreign key) pairs that refer to ``table``."""
    return [(t.name, fk) for t in TABLES.values() for fk in t.foreign_keys if fk.table == table]


# --- row checks ---------------------------------------------------------------------


def fmt(value: Any) -> str:
    """A value as it appears in a problem's reason."""
    if value is None or value is pd.NA or value is pd.NaT:
        return "null"
    if isinstance(value, float) and np.isnan(value):
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, pd.Timestamp):
        if value.tzinfo is None and value == value.normalize():
            return value.strftime("%Y-%m-%d")
        return value.isoformat()
    return str(value)


Describe = Callable[[pd.DataFrame], list[str]]


@dataclass(frozen=True)
class RowCheck:
    """A pandera check on one table plus the words for its failures.

    ``id`` is the check's pandera ``error`` string, so a failure case in
    ``SchemaErrors.failure_cases`` leads back here; ``describe`` turns the
    failing rows of the typed frame into one reason per row.
    """

    id: str
    column: str
    check: pdr.Check
    describe: Describe
    row_rule: bool = False  # a check on the whole row (a DataFrame check) vs. one column


def _gtin_ok(s: pd.Series) -> pd.Series:
    """True unless ``s`` is a 14-digit code whose GS1 check digit is wrong."""
    out = pd.Series(True, index=s.index)
    is14 = s.str.fullmatch("[0-9]{14}").fillna(False).astype(bool)
    if is14.any():
        codes = s[is14].to_numpy(dtype=object).astype("S14")
        digits = np.frombuffer(codes.tobytes(), dtype=np.uint8).reshape(-1, 14) - ord("0")
        weights = np.array([3, 1] * 6 + [3], dtype=np.int64)
        check = (10 - (digits[:, :13] @ weights) % 10) % 10
        out[is14] = check == digits[:, 13]
    return out


def _column_checks(col: Col) -> list[RowCheck]:
    name = col.name
    checks: list[RowCheck] = []

    def add(tag: str, fn: Callable[[pd.Series], Any], say: Callable[[Any], str]) -> None:
        cid = f"{name}:{tag}"
        checks.append(
            RowCheck(
                cid,
                name,
                pdr.Check(fn, name=cid, error=cid),
                lambda rows: [say(v) for v in rows[name]],
            )
        )

    if col.values:
        allowed = list(col.values)
        listed = ", ".join(str(v) for v in col.values)
        add("enum", lambda s: s.isin(allowed), lambda v: f"{fmt(v)} is not one of {listed}")
    if col.min is not None or col.max is not None:
        lo, hi = col.min, col.max

        def in_bounds(s: pd.Series) -> pd.Series:
            ok = pd.Series(True, index=s.index)
            if lo is not None:
                ok &= s >= lo
            if hi is not None:
                ok &= s <= hi
            return ok

        if lo is not None and hi is not None:
            add("range", in_bounds, lambda v: f"{fmt(v)} is outside {lo}..{hi}")
        elif lo is not None:
            add("range", in_bounds, lambda v: f"{fmt(v)} is below the minimum {lo}")
        else:
            add("range", in_bounds, lambda v: f"{fmt(v)} is above the maximum {hi}")
    if col.pattern:
        pattern, text = col.pattern, col.pattern_text
        add(
            "pattern",
            lambda s: s.str.fullmatch(pattern),
            lambda v: f"{fmt(v)} is not {text}",
        )
    if col.gtin_check_digit:
        add("check_digit", _gtin_ok, lambda v: f"{fmt(v)} has a wrong GS1 check digit")
    if col.kind is Kind.MONEY:
        add("non_negative", lambda s: s >= 0, lambda v: f"{fmt(v)} is negative")
    return checks


def _rule_check(rule: RowRule) -> RowCheck:
    if isinstance(rule, Compare):
        a, b, op = rule.column, rule.other, rule.op

        def compare(df: pd.DataFrame) -> pd.Series:
            x, y = df[a], df[b]
            ok = x <= y if op == "<=" else x >= y
            return ok.fillna(True).astype(bool) | x.isna() | y.isna()

        def say_compare(rows: pd.DataFrame) -> list[str]:
            return [
                f"{fmt(x)} {rule.verb} {b} {fmt(y)}" for x, y in zip(rows[a], rows[b], strict=True)
            ]

        return RowCheck(
            rule.id,
            a,
            pdr.Check(compare, name=rule.id, error=rule.id, ignore_na=False),
            say_compare,
            True,
        )

    c, w, v = rule.column, rule.when_column, rule.when_value

    def required(df: pd.DataFrame) -> pd.Series:
        return ~((df[w] == v).fillna(False).astype(bool) & df[c].isna())

    def say_required(rows: pd.DataFrame) -> list[str]:
        return [f"missing (required when {w} is {v})"] * len(rows)

    return RowCheck(
        rule.id,
        c,
        pdr.Check(required, name=rule.id, error=rule.id, ignore_na=False),
        say_required,
        True,
    )


@functools.cache
def row_checks(table: str) -> tuple[RowCheck, ...]:
    """Every value and row check of ``table``, in column order, then the row rules."""
    t = TABLES[table]
    out = [rc for col in t.columns for rc in _column_checks(col)]
    out += [_rule_check(rule) for rule in t.rules]
    return tuple(out)


@functools.cache
def schema(table: str, *, keys: bool = True) -> pdr.DataFrameSchema:
    """The pandera schema of a typed frame of ``table``.

    Extra columns are allowed (``strict=False``); required columns must be
    present and non-null, optional ones present (:mod:`features.load` adds absent
    optional columns as typed nulls). With ``keys`` the schema also checks that
    the key is unique -- in memory; :mod:`features.load` checks keys out of core
    in DuckDB instead and builds this schema with ``keys=False``.
    """
    t = TABLES[table]
    checks = row_checks(table)
    columns = {
        col.name: pdr.Column(
            col.dtype,
            nullable=not col.required,
            checks=[rc.check for rc in checks if rc.column == col.name and not rc.row_rule],
            required=True,
        )
        for col in t.columns
    }
    return pdr.DataFrameSchema(
        columns,
        checks=[rc.check for rc in checks if rc.row_rule],
        unique=list(t.key) if keys else None,
        report_duplicates="exclude_first",
        strict=False,
        coerce=False,
        name=table,
    )
