"""Validated loading of a folder of contract tables (CONTRACT.md section 3).

Public API:

- :func:`validate_folder` -- every problem of every table, never raises on bad data;
  bounded memory however big the files are.
- :func:`load_tables` / :func:`read_table` -- typed frames, or
  :class:`ContractViolation` listing every problem.

How it works, per table file (``<table>.parquet`` or ``<table>.csv``):

1. The header is checked: required columns present, no duplicate names.
2. The rows are read in chunks of about ``chunk_rows`` (parquet record batches
   across row groups; CSV through pyarrow's streaming reader, all cells as
   text). Every row carries its 1-based data row number.
3. Each chunk is *parsed*: raw values (text, or whatever physical type the
   parquet file has) become the typed columns of :data:`features.tables.DTYPES`;
   a value that does not parse is a problem ("'abc' is not an integer", "12.345
   has more than 2 decimals") and becomes null. Money is checked as text or
   exact values before it is converted to ``decimal128(18, 2)``, because that
   type cannot hold -- hence cannot reveal -- a third decimal.
4. The typed chunk is validated by the table's pandera schema
   (:func:`features.tables.schema`, lazy mode): enums, bounds, patterns,
   non-negative money, fund_paid <= total_amount, dates in order, inpatient
   dates present. Failure cases map back to row numbers and reasons.
5. The key and foreign-key columns of each typed chunk are appended to a small
   parquet "key file" (with the row number). After all tables are scanned,
   DuckDB checks duplicate keys and dangling references with SQL over those
   files -- out of core, spilling to a temporary directory -- so row numbers and
   key values are exactly those of the chunked pass, for CSV as for parquet.

Reading rules where the contract leaves room: an empty cell (or empty string in
parquet) is null; integers may be written ``3`` or ``3.0``; booleans
``true/false/t/f/1/0/yes/no/y/n`` in any case; timestamps are ISO 8601 (``T`` or
space; naive = Asia/Shanghai local time, an offset or ``Z`` is honoured);
dates ``YYYY-MM-DD``; an empty code list (``[]`` in parquet) is null, as an empty
CSV cell is; list items are trimmed and an empty item is a problem. Parquet
columns may have the natural physical types (int32, decimal, date32,
timestamp with or without zone, list<large_string>, ...) or strings; a type that
cannot hold the column's kind is one table-level problem. CSV rows with the
wrong number of fields, or bytes that are not UTF-8, are found by a row-by-row
fallback reader so that they too get their exact row number.

Problems are capped per table and reason at ``max_listed`` rows; the rest are
counted in one summary problem. :func:`validate_folder` keeps only the capped
problems and the current chunk in memory; :func:`load_tables` also keeps the
typed chunks it returns.
"""

from __future__ import annotations

import csv
import datetime as dt
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pandera.errors
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.tables import (
    DTYPES,
    LIST_SEPARATOR,
    TABLES,
    TIMEZONE,
    Col,
    Kind,
    RowCheck,
    Table,
    fmt,
    referrers,
    row_checks,
    schema,
)

__all__ = [
    "CHUNK_ROWS",
    "MAX_LISTED",
    "ContractViolation",
    "Problem",
    "load_tables",
    "read_table",
    "validate_folder",
]

CHUNK_ROWS = 1_000_000
"""Rows validated at a time."""

MAX_LISTED = 1000
"""Problems listed per table and reason; further ones are only counted."""

DUCKDB_MEMORY_LIMIT = "1GB"
"""DuckDB's memory for the relational checks; beyond it, it spills to disk."""


# --- problems -----------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a folder of tables.

    ``row`` is the 1-based data row of the file (CSV header excluded, parquet
    counted across row groups), None for a problem of the whole table or file.
    ``column`` is None when no single field is at fault.
    """

    table: str
    row: int | None
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = self.table if self.row is None else f"{self.table} row {self.row}"
        if self.column is not None:
            where += f", field {self.column}"
        return f"{where}: {self.reason}"


class ContractViolation(Exception):
    """The data breaks the contract; ``problems`` names every breach."""

    def __init__(self, problems: Sequence[Problem], shown: int = 20) -> None:
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:shown]]
        if len(self.problems) > shown:
            lines.append(f"... and {len(self.problems) - shown} more problems")
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' * (n != 1)}:\n" + "\n".join(lines))
        self._shown = shown

    def __reduce__(self) -> tuple[Any, ...]:  # picklable, e.g. across processes
        return (type(self), (self.problems, self._shown))


class _Report:
    """Problems of one table, capped per reason (``kind``)."""

    def __init__(self, table: str, max_listed: int) -> None:
        self.table = table
        self.max_listed = max_listed
        self.table_level: list[Problem] = []
        self.rows: list[Problem] = []
        self.count: dict[str, int] = {}
        self.kind_column: dict[str, str | None] = {}

    def table_problem(self, column: str | None, reason: str) -> None:
        self.table_level.append(Problem(self.table, None, column, reason))

    def room(self, kind: str) -> int:
        return max(0, self.max_listed - self.count.get(kind, 0))

    def rows_problem(
        self,
        kind: str,
        column: str | None,
        rows: Sequence[int] | np.ndarray,
        reasons: Callable[[int], list[str]],
        total: int | None = None,
    ) -> None:
        """``rows`` (of ``total``, default all) fail ``kind``.

        ``reasons(k)`` words the first k rows; it is called at once, and only for
        as many rows as the cap leaves room for.
        """
        n = len(rows) if total is None else total
        if n == 0:
            return
        k = min(self.room(kind), len(rows))
        if k:
            listed = [int(r) for r in rows[:k]]
            self.rows += [
                Problem(self.table, r, column, why)
                for r, why in zip(listed, reasons(k), strict=True)
            ]
        self.count[kind] = self.count.get(kind, 0) + n
        self.kind_column[kind] = column

    def problems(self) -> list[Problem]:
        order = (
            {c: i for i, c in enumerate(TABLES[self.table].column_names)}
            if self.table in TABLES
            else {}
        )
        rows = sorted(self.rows, key=lambda p: (p.row or 0, order.get(p.column or "", len(order))))
        summary = [
            Problem(
                self.table,
                None,
                self.kind_column[kind],
                f"{n - self.max_listed} more rows with this problem ({kind}) not listed",
            )
            for kind, n in self.count.items()
            if n > self.max_listed
        ]
        return self.table_level + rows + summary


# --- finding and reading the files --------------------------------------------------


@dataclass
class _Source:
    table: Table
    path: Path
    format: str  # "parquet" or "csv"
    columns: list[str] = field(default_factory=list)


class _SlowPathError(Exception):
    """The fast CSV reader met a row it cannot place; read with the csv module."""


def _find(data_dir: Path, name: str, report: _Report) -> _Source | None:
    paths = [(data_dir / f"{name}.{ext}", ext) for ext in ("parquet", "csv")]
    found = [(p, ext) for p, ext in paths if p.is_file()]
    if len(found) > 1:
        report.table_problem(None, f"both {name}.parquet and {name}.csv present; keep one")
        return None
    if not found:
        return None
    return _Source(TABLES[name], found[0][0], found[0][1])


def _read_header(src: _Source, report: _Report) -> bool:
    try:
        if src.format == "parquet":
            src.columns = list(pq.ParquetFile(src.path).schema_arrow.names)
        else:
            with src.path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
                header = next(csv.reader(f), None)
            if header is None:
                report.table_problem(None, "empty file: no header row")
                return False
            src.columns = header
    except (OSError, pa.ArrowException, csv.Error) as e:
        report.table_problem(None, f"cannot read {src.path.name}: {e}")
        return False
    dups = sorted({c for c in src.columns if src.columns.count(c) > 1})
    if dups:
        report.table_problem(None, f"duplicate column names: {', '.join(dups)}")
        return False
    return True


Chunk = tuple[np.ndarray, pa.Table]  # (row numbers, raw columns)


def _parquet_chunks(src: _Source, columns: list[str], chunk_rows: int) -> Iterator[Chunk]:
    f = pq.ParquetFile(src.path)
    start = 0
    for batch in f.iter_batches(batch_size=chunk_rows, columns=columns, use_pandas_metadata=False):
        n = batch.num_rows
        yield np.arange(start + 1, start + n + 1, dtype=np.int64), pa.Table.from_batches([batch])
        start += n


def _csv_fast_chunks(src: _Source, columns: list[str], chunk_rows: int) -> Iterator[Chunk]:
    def invalid_row(_row: Any) -> str:
        return "error"

    try:
        reader = pacsv.open_csv(
            src.path,
            read_options=pacsv.ReadOptions(block_size=16 << 20),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(src.columns, pa.string()),
                include_columns=columns,
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as e:
        raise _SlowPathError(str(e)) from e
    start = 0
    pending: list[pa.RecordBatch] = []
    n_pending = 0
    try:
        for batch in reader:
            pending.append(batch)
            n_pending += batch.num_rows
            while n_pending >= chunk_rows:
                table = pa.Table.from_batches(pending, schema=reader.schema)
                head, rest = table.slice(0, chunk_rows), table.slice(chunk_rows)
                pending, n_pending = rest.to_batches(), rest.num_rows
                del table, rest
                yield np.arange(start + 1, start + chunk_rows + 1, dtype=np.int64), head
                del head
                start += chunk_rows
    except pa.ArrowInvalid as e:  # a ragged row or bad UTF-8: find them row by row
        raise _SlowPathError(str(e)) from e
    if n_pending or start == 0:
        table = pa.Table.from_batches(pending, schema=reader.schema)
        yield np.arange(start + 1, start + n_pending + 1, dtype=np.int64), table


def _csv_slow_chunks(
    src: _Source, columns: list[str], chunk_rows: int, report: _Report
) -> Iterator[Chunk]:
    """The csv module, row by row: exact row numbers for ragged or non-UTF-8 rows."""
    width = len(src.columns)
    wanted = [src.columns.index(c) for c in columns]
    rn: list[int] = []
    values: list[list[str | None]] = [[] for _ in wanted]

    def flush() -> Chunk:
        table = pa.table(
            {c: pa.array(v, pa.string()) for c, v in zip(columns, values, strict=True)}
        )
        out = np.array(rn, dtype=np.int64), table
        rn.clear()
        for v in values:
            v.clear()
        return out

    with src.path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        next(reader, None)
        row = 0
        yielded = False
        for record in reader:
            if not record:
                continue
            row += 1
            if len(record) != width:  # the row cannot be placed: reported, not loaded
                why = f"has {len(record)} fields, the header has {width}"
                report.rows_problem("ragged row", None, [row], _same(why))
                continue
            try:
                "\x1f".join(record).encode("utf-8")
            except UnicodeEncodeError:  # reported; the value is kept with U+FFFD
                for name, value in zip(src.columns, record, strict=True):
                    try:
                        value.encode("utf-8")
                    except UnicodeEncodeError:
                        report.rows_problem(
                            f"{name}: not UTF-8", name, [row], _same("is not valid UTF-8")
                        )
                record = [
                    v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for v in record
                ]
            rn.append(row)
            for v, i in zip(values, wanted, strict=True):
                v.append(record[i] or None)
            if len(rn) >= chunk_rows:
                yielded = True
                yield flush()
    if rn or not yielded:
        yield flush()


# --- parsing raw columns into typed ones ------------------------------------------


class _WrongTypeError(Exception):
    pass


@dataclass
class _Parsed:
    values: pd.Series
    failures: list[tuple[str, np.ndarray, str]]  # (what, mask, reason template with {v})


_INT_RE = r"^\s*[+-]?[0-9]{1,18}(\.0*)?\s*$"
_MONEY_RE = r"^\s*(?P<sign>[+-]?)(?P<whole>[0-9]*)(?:\.(?P<frac>[0-9]*))?\s*$"
_DATE_RE = r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}\s*$"
_TS_RE = (
    r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?)?"
    r"\s*(?:Z|z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?\s*$"
)
_TRUE = ("true", "t", "1", "yes", "y")
_FALSE = ("false", "f", "0", "no", "n")
_MONEY_INT_DIGITS = 16  # decimal128(18, 2)


def _is_stringy(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_stringy(t.value_type)
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


_NUMBERS = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)


def _text(arr: pa.Array, *also: Callable[[pa.DataType], bool]) -> pa.Array:
    """Text values as they are; the types ``also`` accepted as their spelling."""
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if _is_stringy(t) or any(ok(t) for ok in also):
        return pc.cast(arr, pa.string())
    raise _WrongTypeError(str(t))


def _mask(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _fullmatch(text: pa.Array, regex: str) -> pa.Array:
    return pc.match_substring_regex(text, regex)


def _series(arr: pa.Array, kind: Kind, index: pd.Index) -> pd.Series:
    if kind in (Kind.MONEY, Kind.CODE_LIST):
        s = pd.Series(pd.arrays.ArrowExtensionArray(arr), copy=False)
    elif kind is Kind.INT:
        s = arr.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    elif kind is Kind.BOOL:
        s = arr.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)
    else:
        s = arr.to_pandas()
    s = s.astype(DTYPES[kind])
    s.index = index
    return s


def _fast_timestamps(text: pa.Array) -> pa.Array | None:
    """All values naive, or all with offsets, in the ISO forms Arrow casts strictly.

    Arrow accepts a subset of what the general path (regex, then pandas)
    accepts, so the fast path never lets through what the general one rejects.
    """
    try:
        naive = pc.cast(text, pa.timestamp("us"))
    except pa.ArrowInvalid:
        pass
    else:
        try:
            return pc.assume_timezone(naive, TIMEZONE, ambiguous="raise", nonexistent="raise")
        except pa.ArrowException:
            return None
    try:
        return pc.cast(pc.cast(text, pa.timestamp("us", "UTC")), pa.timestamp("us", TIMEZONE))
    except pa.ArrowInvalid:
        return None


def _parse(col: Col, arr: pa.Array, index: pd.Index) -> _Parsed:
    kind, t = col.kind, arr.type
    n = len(arr)

    if kind in (Kind.STRING, Kind.ENUM):
        if not (_is_stringy(t) or pa.types.is_integer(t) or pa.types.is_null(t)):
            raise _WrongTypeError(str(t))
        text = pc.cast(arr, pa.string())
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        return _Parsed(_series(text, kind, index), [])

    if kind is Kind.INT:
        if pa.types.is_integer(t) and t != pa.uint64():
            return _Parsed(_series(pc.cast(arr, pa.int64()), kind, index), [])
        text = _text(arr, *_NUMBERS)
        if _is_stringy(t):  # fast path: every value a plain integer
            try:
                return _Parsed(_series(pc.cast(text, pa.int64()), kind, index), [])
            except pa.ArrowInvalid:
                pass
        ok = _fullmatch(text, _INT_RE)
        bad = _mask(pc.invert(ok))
        digits = pc.replace_substring_regex(text, r"\.0*\s*$|\s", "")
        digits = pc.if_else(ok, digits, pa.scalar(None, pa.string()))
        return _Parsed(
            _series(pc.cast(digits, pa.int64()), kind, index),
            [("not an integer", bad, "{v} is not an integer")],
        )

    if kind is Kind.MONEY:
        if pa.types.is_decimal(t) and t.scale <= 2 and t.precision - t.scale <= _MONEY_INT_DIGITS:
            return _Parsed(_series(pc.cast(arr, DTYPES[kind].pyarrow_dtype), kind, index), [])
        if pa.types.is_integer(t):
            arr = pc.cast(arr, pa.string())
        text = _text(arr, *_NUMBERS)
        if _is_stringy(t) and not pc.any(pc.match_substring(text, "e", ignore_case=True)).as_py():
            # Fast path: Arrow's exact cast succeeds only if every value is a plain
            # decimal number that fits decimal128(18, 2) without rounding.
            try:
                money = pc.cast(text, DTYPES[kind].pyarrow_dtype)
                return _Parsed(_series(money, kind, index), [])
            except pa.ArrowInvalid:
                pass
        parts = pc.extract_regex(text, _MONEY_RE)  # null where the regex fails
        sign = pc.struct_field(parts, [0])
        whole = pc.utf8_ltrim(pc.struct_field(parts, [1]), "0")
        frac = pc.utf8_rtrim(pc.fill_null(pc.struct_field(parts, [2]), ""), "0")
        has_digit = pc.match_substring_regex(text, "[0-9]")
        number = _mask(pc.and_kleene(pc.is_valid(parts), has_digit))
        present = _mask(pc.is_valid(text))
        not_number = present & ~number
        too_precise = number & _mask(pc.greater(pc.utf8_length(frac), 2))
        too_large = number & _mask(pc.greater(pc.utf8_length(whole), _MONEY_INT_DIGITS))
        good = number & ~too_precise & ~too_large
        canonical = pc.binary_join_element_wise(
            sign, pc.if_else(pc.equal(whole, ""), "0", whole), ".", pc.utf8_rpad(frac, 2, "0"), ""
        )
        canonical = pc.if_else(pa.array(good), canonical, pa.scalar(None, pa.string()))
        return _Parsed(
            _series(pc.cast(canonical, DTYPES[kind].pyarrow_dtype), kind, index),
            [
                ("not an amount", not_number, "{v} is not an amount"),
                ("more than 2 decimals", too_precise, "{v} has more than 2 decimals"),
                ("too large", too_large, "{v} is too large"),
            ],
        )

    if kind is Kind.TIMESTAMP:
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            if pa.types.is_date(t):
                arr = pc.cast(arr, pa.timestamp("s"))
            s = arr.to_pandas()
            s = s.dt.tz_localize(TIMEZONE) if s.dt.tz is None else s.dt.tz_convert(TIMEZONE)
            s = s.dt.as_unit("us")
            s.index = index
            return _Parsed(s, [])
        text = _text(arr)
        fast = _fast_timestamps(text)
        if fast is not None:
            return _Parsed(_series(fast, kind, index), [])
        shape_ok = _mask(_fullmatch(text, _TS_RE))
        aware = shape_ok & _mask(_fullmatch(text, r"^\s*.{10}.*[Zz+-]"))
        naive = shape_ok & ~aware
        raw = pd.Series(text.to_pandas().to_numpy(dtype=object), index=index)
        out = pd.Series(pd.NaT, index=index, dtype=DTYPES[kind])
        if naive.any():
            local = pd.to_datetime(raw[naive].str.strip(), format="ISO8601", errors="coerce")
            local = local.dt.tz_localize(TIMEZONE, ambiguous="NaT", nonexistent="NaT")
            out[naive] = local.dt.as_unit("us")
        if aware.any():
            utc = pd.to_datetime(
                raw[aware].str.strip(), format="ISO8601", utc=True, errors="coerce"
            )
            out[aware] = utc.dt.tz_convert(TIMEZONE).dt.as_unit("us")
        bad = _mask(pc.is_valid(text)) & out.isna().to_numpy()
        return _Parsed(out, [("not a timestamp", bad, "{v} is not a timestamp (ISO 8601)")])

    if kind is Kind.DATE:
        if pa.types.is_date(t):
            return _Parsed(_series(pc.cast(arr, pa.timestamp("s")), kind, index), [])
        if pa.types.is_timestamp(t):
            s = arr.to_pandas()
            if s.dt.tz is not None:
                s = s.dt.tz_convert(TIMEZONE).dt.tz_localize(None)
            s.index = index
            bad = (s.notna() & (s != s.dt.normalize())).to_numpy()
            s = s.where(~bad).astype(DTYPES[kind])
            return _Parsed(s, [("not a date", bad, "{v} is not a date (it has a time of day)")])
        text = _text(arr)
        try:  # fast path: Arrow's strict ISO cast succeeds for every value
            days = pc.cast(pc.cast(text, pa.date32()), pa.timestamp("s"))
            return _Parsed(_series(days, kind, index), [])
        except pa.ArrowInvalid:
            pass
        shape_ok = _mask(_fullmatch(text, _DATE_RE))
        raw = pd.Series(text.to_pandas().to_numpy(dtype=object), index=index)
        out = pd.Series(pd.NaT, index=index, dtype=DTYPES[kind])
        if shape_ok.any():
            out[shape_ok] = pd.to_datetime(
                raw[shape_ok].str.strip(), format="%Y-%m-%d", errors="coerce"
            ).astype(DTYPES[kind])
        bad = _mask(pc.is_valid(text)) & out.isna().to_numpy()
        return _Parsed(out, [("not a date", bad, "{v} is not a date (YYYY-MM-DD)")])

    if kind is Kind.BOOL:
        if pa.types.is_boolean(t):
            return _Parsed(_series(arr, kind, index), [])
        text = pc.utf8_lower(pc.utf8_trim_whitespace(_text(arr, pa.types.is_integer)))
        true = pc.is_in(text, pa.array(_TRUE))
        false = pc.is_in(text, pa.array(_FALSE))
        valid = pc.is_valid(text)
        bad = _mask(valid) & ~_mask(true) & ~_mask(false)
        value = pc.if_else(true, True, pc.if_else(false, False, pa.scalar(None, pa.bool_())))
        return _Parsed(
            _series(value, kind, index),
            [("not a boolean", bad, "{v} is not a boolean (true/false)")],
        )

    if kind is Kind.CODE_LIST:
        if pa.types.is_null(t):
            lists = pa.nulls(n, pa.list_(pa.string()))
        elif _is_stringy(t):
            lists = pc.split_pattern(pc.cast(arr, pa.string()), LIST_SEPARATOR)
        elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            _is_stringy(t.value_type) or pa.types.is_null(t.value_type)
        ):
            lists = pc.cast(arr, pa.list_(pa.string()))
        else:
            raise _WrongTypeError(str(t))
        items = pc.utf8_trim_whitespace(pc.list_flatten(lists))
        empty_item = pc.fill_null(pc.equal(items, ""), True)
        bad = np.zeros(n, dtype=bool)
        if len(items):
            parents = pc.list_parent_indices(lists).to_numpy()
            bad[parents[_mask(empty_item)]] = True
        # Rebuild with the trimmed items. An empty list becomes null: CSV cannot
        # tell them apart, so neither do the typed frames ("no codes" either way).
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy()
        rebuilt = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32()),
            items,
            mask=pa.array(lengths == 0),
        )
        return _Parsed(
            _series(rebuilt, kind, index), [("empty code", bad, "{v} holds an empty code")]
        )

    raise AssertionError(kind)  # pragma: no cover


# --- one table -------------------------------------------------------------------


def _key_columns(t: Table) -> list[str]:
    cols = list(t.key) + [fk.column for fk in t.foreign_keys]
    return list(dict.fromkeys(cols))


def _arrow_type(col: Col) -> pa.DataType:
    return {
        Kind.STRING: pa.string(),
        Kind.ENUM: pa.string(),
        Kind.INT: pa.int64(),
        Kind.MONEY: pa.decimal128(18, 2),
        Kind.TIMESTAMP: pa.timestamp("us", TIMEZONE),
        Kind.DATE: pa.timestamp("s"),
        Kind.BOOL: pa.bool_(),
        Kind.CODE_LIST: pa.list_(pa.string()),
    }[col.kind]


def _to_arrow(s: pd.Series, type_: pa.DataType) -> pa.Array:
    if isinstance(s.dtype, pd.DatetimeTZDtype):  # as UTC instants, then typed
        utc = s.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
        return pa.array(utc, pa.timestamp(s.dtype.unit)).cast(type_)
    return pa.array(s.array, type_)


@dataclass
class _Scan:
    report: _Report
    keys_path: Path | None = None  # the key file, when the key columns were readable
    key_columns: list[str] = field(default_factory=list)
    frames: list[pd.DataFrame] = field(default_factory=list)


def _same(reason: str) -> Callable[[int], list[str]]:
    return lambda k: [reason] * k


def _same_for_each(reasons: list[str]) -> Callable[[int], list[str]]:
    return lambda k: reasons[:k]


def _raw_reasons(template: str, arr: pa.Array, pos: np.ndarray) -> Callable[[int], list[str]]:
    """Reasons quoting the raw values (as read) at positions ``pos``."""

    def reasons(k: int) -> list[str]:
        return [template.format(v=fmt(v)) for v in arr.take(pa.array(pos[:k])).to_pylist()]

    return reasons


def _described(rc: RowCheck, df: pd.DataFrame, rows: np.ndarray) -> Callable[[int], list[str]]:
    return lambda k: rc.describe(df.loc[rows[:k]])


def _check_chunk(
    t: Table,
    rn: np.ndarray,
    raw: pa.Table,
    bad_columns: dict[str, str],
    report: _Report,
    keep_extras: list[str],
    full: bool,
) -> pd.DataFrame:
    """Parse and validate one chunk; returns its typed frame (index = row numbers)."""
    index = pd.Index(rn, name="row")
    n = len(rn)
    typed: dict[str, pd.Series] = {}
    suppressed: dict[str, np.ndarray] = {}  # (column) rows already reported
    for col in t.columns:
        if col.name not in raw.column_names or col.name in bad_columns:
            # Absent: typed nulls. A required or unreadable column is already a
            # table problem, so its nulls are not reported row by row; an absent
            # optional column is simply empty (and e.g. inpatient rows miss dates).
            typed[col.name] = pd.Series(index=index, dtype=col.dtype)
            suppressed[col.name] = np.full(n, col.required or col.name in bad_columns)
            continue
        arr = raw.column(col.name).combine_chunks()
        try:
            parsed = _parse(col, arr, index)
        except _WrongTypeError as e:  # the parquet column's type cannot hold this kind
            bad_columns[col.name] = str(e)
            report.table_problem(col.name, f"has type {e}, expected {col.kind.value}")
            typed[col.name] = pd.Series(index=index, dtype=col.dtype)
            suppressed[col.name] = np.ones(n, dtype=bool)
            continue
        typed[col.name] = parsed.values
        hit = np.zeros(n, dtype=bool)
        for what, mask, template in parsed.failures:
            if not mask.any():
                continue
            hit |= mask
            pos = np.flatnonzero(mask)
            report.rows_problem(
                f"{col.name}: {what}",
                col.name,
                rn[pos],
                _raw_reasons(template, arr, pos),
            )
        suppressed[col.name] = hit
    df = pd.DataFrame(typed, index=index, copy=False)
    if full:
        _run_schema(t, df, rn, suppressed, report)
    for c in keep_extras:
        s = raw.column(c).to_pandas()
        s.index = index
        df[c] = s
    return df


def _run_schema(
    t: Table,
    df: pd.DataFrame,
    rn: np.ndarray,
    suppressed: dict[str, np.ndarray],
    report: _Report,
) -> None:
    try:
        schema(t.name, keys=False).validate(df, lazy=True, inplace=True)
        return
    except pandera.errors.SchemaErrors as e:
        cases = e.failure_cases
    checks = {rc.id: rc for rc in row_checks(t.name)}
    cases = cases[["column", "check", "index"]].copy()
    # A row rule's failure cases come once per column of the row; it is reported on
    # its own column. Other checks (not_nullable, ...) are per column.
    own_column = cases["check"].map({rc_id: rc.column for rc_id, rc in checks.items()})
    cases["column"] = own_column.where(own_column.notna(), cases["column"])
    cases = cases.drop_duplicates(["column", "check", "index"])
    for (check, column), group in cases.groupby(["check", "column"], sort=False, dropna=False):
        rc = checks.get(str(check))
        col = str(column)
        rows = pd.to_numeric(group["index"], errors="coerce").dropna()
        if len(rows) < len(group):  # a dtype or column failure: a bug here, not in the data
            report.table_problem(col, f"schema check {check} failed")
        rows_arr = np.unique(rows.to_numpy(dtype=np.int64))
        if col in suppressed:
            keep = ~suppressed[col][np.searchsorted(rn, rows_arr)]
            rows_arr = rows_arr[keep]
        if len(rows_arr) == 0:
            continue
        if rc is not None:
            report.rows_problem(
                rc.id,
                rc.column,
                rows_arr,
                _described(rc, df, rows_arr),
            )
        elif check == "not_nullable":
            report.rows_problem(f"{col}: missing", col, rows_arr, _same("missing value"))
        else:
            report.rows_problem(str(check), col, rows_arr, _same(f"fails {check}"))


def _scan(
    src: _Source,
    *,
    full: bool,
    keep: bool,
    chunk_rows: int,
    max_listed: int,
    tmp: Path,
) -> _Scan:
    """Read one table file chunk by chunk: parse, validate, write its key file."""
    t = src.table
    scan = _Scan(_Report(t.name, max_listed))
    if not _read_header(src, scan.report):
        return scan
    present = set(src.columns)
    for name in t.required:
        if name not in present and (full or name in _key_columns(t)):
            scan.report.table_problem(name, "required column missing")
    wanted_cols = t.column_names if full else tuple(_key_columns(t))
    contract = [c for c in wanted_cols if c in present]
    extras = [c for c in src.columns if c not in t.column_names] if keep else []
    columns = contract + extras
    if not full:
        t = Table(t.name, tuple(t.col(c) for c in wanted_cols), t.key, t.foreign_keys)

    key_cols = [c for c in _key_columns(t) if c in present]
    key_schema = pa.schema(
        [pa.field("rn", pa.int64())] + [pa.field(c, _arrow_type(t.col(c))) for c in key_cols]
    )

    def attempt(chunks: Iterable[Chunk]) -> _Scan:
        attempt_scan = _Scan(_Report(t.name, max_listed))
        attempt_scan.report.table_level = list(scan.report.table_level)
        bad_columns: dict[str, str] = {}
        path = tmp / f"{t.name}.keys.parquet"
        empty = pa.table({c: pa.array([], pa.string()) for c in columns})
        with pq.ParquetWriter(path, key_schema) as writer:
            for rn, raw in _at_least_one(chunks, (np.zeros(0, dtype=np.int64), empty)):
                df = _check_chunk(t, rn, raw, bad_columns, attempt_scan.report, extras, full)
                keys = [pa.array(rn, pa.int64())]
                keys += [_to_arrow(df[c], key_schema.field(c).type) for c in key_cols]
                writer.write_table(pa.Table.from_arrays(keys, schema=key_schema))
                if keep:
                    attempt_scan.frames.append(df)
                del df, keys  # one chunk in memory at a time
        attempt_scan.key_columns = [c for c in key_cols if c not in bad_columns]
        attempt_scan.keys_path = path
        return attempt_scan

    try:
        if src.format == "parquet":
            return attempt(_parquet_chunks(src, columns, chunk_rows))
        try:
            return attempt(_csv_fast_chunks(src, columns, chunk_rows))
        except _SlowPathError:
            slow_report = _Report(t.name, max_listed)
            result = attempt(_csv_slow_chunks(src, columns, chunk_rows, slow_report))
            result.report.rows += slow_report.rows
            result.report.count.update(slow_report.count)
            result.report.kind_column.update(slow_report.kind_column)
            return result
    except (OSError, pa.ArrowException, csv.Error, UnicodeDecodeError) as e:
        scan.report.table_problem(None, f"cannot read {src.path.name}: {e}")
        return scan


def _at_least_one(chunks: Iterable[Chunk], empty: Chunk) -> Iterator[Chunk]:
    """The chunks, or one empty chunk, so that an empty file still gets a typed frame."""
    any_chunk = False
    for chunk in chunks:
        any_chunk = True
        yield chunk
    if not any_chunk:
        yield empty


# --- relational checks in DuckDB --------------------------------------------------


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _duplicates(con: duckdb.DuckDBPyConnection, scan: _Scan, t: Table) -> None:
    if scan.keys_path is None or not set(t.key) <= set(scan.key_columns):
        return
    keys = ", ".join(_quote(k) for k in t.key)
    not_null = " AND ".join(f"{_quote(k)} IS NOT NULL" for k in t.key)
    cap = scan.report.max_listed
    # S608: identifiers are quoted by _quote; the paths are our own temporary files.
    sql = f"""
        WITH t AS (SELECT rn, {keys} FROM read_parquet({_sql_path(scan.keys_path)})
                   WHERE {not_null}),
             d AS (SELECT {keys}, min(rn) AS first_rn FROM t
                   GROUP BY {keys} HAVING count(*) > 1)
        SELECT t.rn, d.first_rn, {", ".join("t." + _quote(k) for k in t.key)},
               count(*) OVER () AS total
        FROM t JOIN d USING ({keys}) WHERE t.rn > d.first_rn
        ORDER BY t.rn LIMIT {cap}
    """  # noqa: S608
    rows = con.execute(sql).fetchall()
    if not rows:
        return
    column = ",".join(t.key)

    def reasons(k: int) -> list[str]:
        out = []
        for r in rows[:k]:
            values = r[2:-1]
            if len(t.key) == 1:
                what = f"duplicate {t.key[0]} {_key_fmt(values[0])}"
            else:
                what = (
                    "duplicate key ("
                    + ", ".join(f"{c} {_key_fmt(v)}" for c, v in zip(t.key, values, strict=True))
                    + ")"
                )
            out.append(f"{what}, first at row {r[1]}")
        return out

    scan.report.rows_problem(
        "duplicate key", column, [r[0] for r in rows], reasons, total=rows[0][-1]
    )


def _key_fmt(v: Any) -> str:
    if isinstance(v, dt.datetime):
        ts = pd.Timestamp(v)
        return (ts.tz_convert(TIMEZONE) if ts.tzinfo is not None else ts).isoformat()
    return fmt(v)


def _references(
    con: duckdb.DuckDBPyConnection, scan: _Scan, t: Table, scans: dict[str, _Scan]
) -> None:
    for fk in t.foreign_keys:
        parent = scans.get(fk.table)
        ref = TABLES[fk.table].key[0]
        if (
            scan.keys_path is None
            or fk.column not in scan.key_columns
            or parent is None
            or parent.keys_path is None
            or ref not in parent.key_columns
        ):
            continue
        cap = scan.report.max_listed
        sql = f"""
            SELECT c.rn, c.{_quote(fk.column)}, count(*) OVER () AS total
            FROM read_parquet({_sql_path(scan.keys_path)}) c
            WHERE c.{_quote(fk.column)} IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM read_parquet({_sql_path(parent.keys_path)}) p
                WHERE p.{_quote(ref)} = c.{_quote(fk.column)})
            ORDER BY c.rn LIMIT {cap}
        """  # noqa: S608
        rows = con.execute(sql).fetchall()
        if rows:
            scan.report.rows_problem(
                f"{fk.column}: unknown {fk.table}",
                fk.column,
                [r[0] for r in rows],
                _same_for_each([f"{fmt(r[1])} not found in {fk.table}.{ref}" for r in rows]),
                total=rows[0][-1],
            )


# --- the folder ------------------------------------------------------------------


def _check(
    data_dir: str | Path,
    tables: Iterable[str] | None,
    *,
    keep: bool,
    chunk_rows: int,
    max_listed: int,
    temp_dir: str | Path | None,
) -> tuple[list[Problem], dict[str, pd.DataFrame]]:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"no such folder: {data_dir}")
    if chunk_rows < 1 or max_listed < 1:
        raise ValueError("chunk_rows and max_listed must be positive")
    requested = list(TABLES) if tables is None else list(dict.fromkeys(tables))
    unknown = [n for n in requested if n not in TABLES]
    if unknown:
        raise ValueError(f"not contract tables: {', '.join(unknown)}; known: {', '.join(TABLES)}")

    # Full checks for the requested tables; their parents only for their keys.
    parents = {fk.table for n in requested for fk in TABLES[n].foreign_keys} - set(requested)
    reports: dict[str, _Report] = {}
    scans: dict[str, _Scan] = {}
    sources: dict[str, _Source] = {}
    missing: list[str] = []
    for name in TABLES:
        if name not in requested and name not in parents:
            continue
        report = _Report(name, max_listed)
        src = _find(data_dir, name, report)
        reports[name] = report
        if src is not None:
            sources[name] = src
        elif not report.table_level:
            missing.append(name)

    with tempfile.TemporaryDirectory(prefix="fundguard-load-", dir=temp_dir) as tmp_name:
        tmp = Path(tmp_name)
        for name, src in sources.items():
            full = name in requested
            scan = _scan(
                src,
                full=full,
                keep=keep and full,
                chunk_rows=chunk_rows,
                max_listed=max_listed,
                tmp=tmp,
            )
            scan.report.table_level = reports[name].table_level + scan.report.table_level
            scans[name] = scan
            pa.default_memory_pool().release_unused()  # give the chunks' memory back
            reports[name] = scan.report
            if not full:  # only its table-level problems stop the checks of its referrers
                scan.report.rows, scan.report.count = [], {}

        for name in missing:
            users = [
                f"{child}.{fk.column}"
                for child, fk in referrers(name)
                if child in sources and child in requested
            ]
            if tables is not None and name in requested:
                reports[name].table_problem(None, f"file missing: {name}.parquet or {name}.csv")
            elif users:
                reports[name].table_problem(
                    None,
                    f"file missing: {name}.parquet or {name}.csv"
                    f" (referred to by {', '.join(users)})",
                )

        tmp_db = tmp / "duckdb"
        tmp_db.mkdir()
        with duckdb.connect(
            config={"temp_directory": str(tmp_db), "memory_limit": DUCKDB_MEMORY_LIMIT}
        ) as con:
            for name in requested:
                if name in scans:
                    _duplicates(con, scans[name], TABLES[name])
                    _references(con, scans[name], TABLES[name], scans)

    problems = [p for name in TABLES if name in reports for p in reports[name].problems()]
    frames: dict[str, pd.DataFrame] = {}
    if keep and not problems:
        for name in requested:
            if name in scans:
                parts = scans[name].frames
                frames[name] = (
                    pd.concat(parts).reset_index(drop=True)
                    if len(parts) > 1
                    else parts[0].reset_index(drop=True)
                )
    return problems, frames


def validate_folder(
    data_dir: str | Path,
    *,
    chunk_rows: int = CHUNK_ROWS,
    max_listed: int = MAX_LISTED,
    temp_dir: str | Path | None = None,
) -> list[Problem]:
    """Every problem of every contract table in ``data_dir``; never raises on bad data.

    Memory stays bounded by one chunk of ``chunk_rows`` rows (plus DuckDB's
    :data:`DUCKDB_MEMORY_LIMIT`) whatever the size of the files. The key files
    and DuckDB's spill go to a temporary folder under ``temp_dir`` (default: the
    system's), removed at the end; a big folder needs room there of about the
    size of its key columns. An empty list means the folder keeps the contract.
    Raises only for a wrong call (no such folder, bad arguments).
    """
    problems, _ = _check(
        data_dir,
        None,
        keep=False,
        chunk_rows=chunk_rows,
        max_listed=max_listed,
        temp_dir=temp_dir,
    )
    return problems


def load_tables(
    data_dir: str | Path,
    tables: Iterable[str] | None = None,
    *,
    chunk_rows: int = CHUNK_ROWS,
    max_listed: int = MAX_LISTED,
    temp_dir: str | Path | None = None,
) -> dict[str, pd.DataFrame]:
    """Typed frames of the contract tables in ``data_dir`` (all present, or ``tables``).

    Raises :class:`ContractViolation` naming every problem if anything is wrong
    (so no table is ever returned with a row missing); a requested table whose
    file is absent is a problem. Frames have a fresh ``RangeIndex``: frame row i
    is data row i + 1 of the file; contract columns come first in contract
    order (absent optional ones as typed nulls), then the file's extra columns. References to parent
    tables (e.g. items to settlements) are checked against the parents' files
    even when the parents are not requested.
    """
    problems, frames = _check(
        data_dir,
        tables,
        keep=True,
        chunk_rows=chunk_rows,
        max_listed=max_listed,
        temp_dir=temp_dir,
    )
    if problems:
        raise ContractViolation(problems)
    return frames


def read_table(data_dir: str | Path, table: str, *, chunk_rows: int = CHUNK_ROWS) -> pd.DataFrame:
    """The typed frame of one contract table; :class:`ContractViolation` if it is bad."""
    return load_tables(data_dir, [table], chunk_rows=chunk_rows)[table]
