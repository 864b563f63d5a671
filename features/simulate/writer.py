"""Arrow schemas of the contract tables and chunked output (Parquet row groups or CSV).

Parquet: one row group per chunk via `pyarrow.parquet.ParquetWriter`. CSV: UTF-8
with a header, times as ISO 8601 with offset (``2025-03-01T09:12:00+08:00``),
dates ``YYYY-MM-DD``, money ``12.34``, list columns ``|``-separated.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.simulate.config import EPOCH_DAY0, T0_UTC, TIMEZONE

MONEY = pa.decimal128(18, 2)
TS = pa.timestamp("us", tz=TIMEZONE)
STR = pa.string()

SCHEMAS: dict[str, pa.Schema] = {
    "institutions": pa.schema(
        [
            ("institution_id", STR),
            ("name", STR),
            ("kind", STR),
            ("level", pa.int32()),
            ("region_code", STR),
        ]
    ),
    "patients": pa.schema(
        [
            ("patient_id", STR),
            ("gender", STR),
            ("birth_date", pa.date32()),
            ("region_code", STR),
            ("locality_code", STR),
        ]
    ),
    "drugs": pa.schema(
        [
            ("drug_code", STR),
            ("generic_name", STR),
            ("pack_units", pa.int32()),
            ("max_units_per_day", pa.int32()),
            ("gender_restriction", STR),
            ("min_age", pa.int32()),
            ("max_age", pa.int32()),
            ("high_value", pa.bool_()),
            ("red_list", pa.bool_()),
        ]
    ),
    "products": pa.schema([("product_code", STR), ("drug_code", STR), ("manufacturer", STR)]),
    "services": pa.schema(
        [
            ("service_code", STR),
            ("name", STR),
            ("gender_restriction", STR),
            ("min_age", pa.int32()),
            ("max_age", pa.int32()),
            ("max_times", pa.int32()),
            ("period_days", pa.int32()),
        ]
    ),
    "settlements": pa.schema(
        [
            ("settlement_id", STR),
            ("institution_id", STR),
            ("patient_id", STR),
            ("doctor_id", STR),
            ("settled_at", TS),
            ("visit_type", STR),
            ("admit_date", pa.date32()),
            ("discharge_date", pa.date32()),
            ("diagnosis_code", STR),
            ("total_amount", MONEY),
            ("fund_paid", MONEY),
        ]
    ),
    "settlement_items": pa.schema(
        [
            ("settlement_id", STR),
            ("line_no", pa.int32()),
            ("item_type", STR),
            ("item_code", STR),
            ("quantity", pa.int64()),
            ("unit_price", MONEY),
            ("amount", MONEY),
            ("trace_codes", pa.list_(STR)),
            ("split_sale", pa.bool_()),
        ]
    ),
    "trace_events": pa.schema(
        [("trace_code", STR), ("event_type", STR), ("institution_id", STR), ("event_at", TS)]
    ),
    "reversals": pa.schema([("settlement_id", STR), ("reversed_at", TS)]),
    "labels": pa.schema(
        [
            ("entity_type", STR),
            ("entity_id", STR),
            ("pattern", STR),
            ("label", pa.int32()),
            ("decided_at", TS),
        ]
    ),
}
CONTRACT_TABLES: tuple[str, ...] = tuple(SCHEMAS)

TRUTH_SCHEMAS: dict[str, pa.Schema] = {
    "flags": pa.schema(
        [("entity_type", STR), ("entity_id", STR), ("pattern", STR), ("detail", STR)]
    ),
    "groups": pa.schema([("group_id", STR), ("patient_id", STR), ("institution_id", STR)]),
    "benign": pa.schema(
        [("entity_type", STR), ("entity_id", STR), ("kind", STR), ("lookalike_of", STR)]
    ),
    "benign_groups": pa.schema([("group_id", STR), ("patient_id", STR), ("institution_id", STR)]),
}


def money(cents: np.ndarray) -> pa.Array:
    """Exact decimal128(18, 2) from int64 cents (no float on the way)."""
    cents = np.ascontiguousarray(cents, dtype=np.int64)
    words = np.empty((len(cents), 2), np.int64)
    words[:, 0] = cents
    words[:, 1] = np.where(cents < 0, -1, 0)
    return pa.Array.from_buffers(MONEY, len(cents), [None, pa.py_buffer(words.tobytes())])


def timestamps(local_seconds: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    micros = (np.asarray(local_seconds, np.int64) + T0_UTC) * 1_000_000
    return pa.array(micros, type=TS, mask=mask)


def dates(local_days: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(
        (np.asarray(local_days, np.int64) + EPOCH_DAY0).astype(np.int32),
        type=pa.date32(),
        mask=mask,
    )


def _csv_column(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if pa.types.is_timestamp(t):
        local = pc.strftime(col.cast(pa.timestamp("s", tz=t.tz)), format="%Y-%m-%dT%H:%M:%S")
        return pc.binary_join_element_wise(local, pa.scalar("+08:00"), "")
    if pa.types.is_date(t) or pa.types.is_decimal(t):
        return col.cast(STR)
    if pa.types.is_list(t):
        return pc.binary_join(col, "|")
    return col


class TableSink:
    """One output table, written chunk by chunk."""

    def __init__(self, path: Path, schema: pa.Schema, fmt: str) -> None:
        self.schema = schema
        self.fmt = fmt
        self.rows = 0
        if fmt == "parquet":
            self._pq: pq.ParquetWriter | None = pq.ParquetWriter(
                path.with_suffix(".parquet"), schema
            )
            self._csv: pacsv.CSVWriter | None = None
        elif fmt == "csv":
            self._pq = None
            csv_schema = pa.schema([pa.field(f.name, _csv_type(f.type)) for f in schema])
            self._csv = pacsv.CSVWriter(path.with_suffix(".csv"), csv_schema)
        else:
            msg = f"unknown format {fmt!r} (parquet or csv)"
            raise ValueError(msg)

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        self.rows += table.num_rows
        if self._pq is not None:
            self._pq.write_table(table, row_group_size=max(table.num_rows, 1))
        elif self._csv is not None:
            self._csv.write_table(
                pa.table({n: _csv_column(table.column(n)) for n in self.schema.names})
            )

    def close(self) -> None:
        if self._pq is not None:
            self._pq.close()
        if self._csv is not None:
            self._csv.close()

    def __enter__(self) -> TableSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _csv_type(t: pa.DataType) -> pa.DataType:
    if (
        pa.types.is_timestamp(t)
        or pa.types.is_date(t)
        or pa.types.is_decimal(t)
        or pa.types.is_list(t)
    ):
        return STR
    return t


def write_whole(path: Path, table: pa.Table, fmt: str) -> int:
    with TableSink(path, table.schema, fmt) as sink:
        sink.write(table)
        return sink.rows
