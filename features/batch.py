"""The contract tables of a folder as typed DuckDB views, for batch work out of core.

``open_history(folder)`` gives a DuckDB connection on which every contract table is a view
with the contract's column names and types (from ``features.tables``, the one description
of the tables), whether the folder holds Parquet or CSV: money ``DECIMAL(18,2)``, times
``TIMESTAMPTZ`` (a naive time is Asia/Shanghai local time), dates ``DATE``, code lists
``VARCHAR[]`` (``|``-separated in CSV). An optional column the file lacks is a typed NULL;
a table the folder lacks is an empty view, so a history without reversals screens as one
where nothing was reversed. Validate the folder first (``features.load``): these views cast,
they do not check.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Final

import duckdb

from features.tables import TABLES, TIMEZONE, Kind, Table

SQL_TYPES: Final = {
    Kind.STRING: "VARCHAR",
    Kind.ENUM: "VARCHAR",
    Kind.INT: "BIGINT",
    Kind.MONEY: "DECIMAL(18,2)",
    Kind.TIMESTAMP: "TIMESTAMPTZ",
    Kind.DATE: "DATE",
    Kind.BOOL: "BOOLEAN",
    Kind.CODE_LIST: "VARCHAR[]",
}

SPILL_CAP_BYTES: Final = 40 * 10**9
SPILL_DISK_SHARE: Final = 0.5
"""What DuckDB may spill by default: half the free space of the spill folder's disk, at most
40 GB (DuckDB's own default is 90% of it, enough for one runaway query to fill the disk)."""


def table_file(folder: Path, table: str) -> Path | None:
    """The file that holds ``table`` in ``folder`` (Parquet first), or None."""
    for suffix in (".parquet", ".csv"):
        path = folder / f"{table}{suffix}"
        if path.is_file():
            return path
    return None


def _quote(path: Path) -> str:
    return _quote_text(str(path))


def _quote_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _view_sql(con: duckdb.DuckDBPyConnection, table: Table, path: Path | None) -> str:
    if path is None:
        columns = ", ".join(f"CAST(NULL AS {SQL_TYPES[c.kind]}) AS {c.name}" for c in table.columns)
        return f"SELECT {columns} WHERE false"
    if path.suffix == ".csv":
        source = f"read_csv({_quote(path)}, header = true, all_varchar = true)"
    else:
        source = f"read_parquet({_quote(path)})"
    present = {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}  # noqa: S608 - our own table description, a quoted path
    selected = []
    for c in table.columns:
        sql_type = SQL_TYPES[c.kind]
        if c.name not in present:
            selected.append(f"CAST(NULL AS {sql_type}) AS {c.name}")
        elif c.kind is Kind.CODE_LIST and not str(present[c.name]).endswith("[]"):
            selected.append(
                f"CASE WHEN {c.name} IS NULL OR trim({c.name}) = '' THEN []::VARCHAR[] "
                f"ELSE string_split({c.name}, '|') END AS {c.name}"
            )
        else:
            selected.append(f"CAST({c.name} AS {sql_type}) AS {c.name}")
    return f"SELECT {', '.join(selected)} FROM {source}"  # noqa: S608 - column names from features.tables


def spill_bound(spill: Path) -> str:
    """The default bound on what DuckDB spills into ``spill`` (``SPILL_DISK_SHARE`` of the
    free space of its disk, at most ``SPILL_CAP_BYTES``), as a DuckDB size."""
    probe = spill.absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return f"{int(min(SPILL_CAP_BYTES, free * SPILL_DISK_SHARE))}B"


def open_history(
    folder: Path,
    *,
    memory_limit: str = "4GB",
    threads: int | None = None,
    temp_directory: Path | None = None,
    max_temp_directory_size: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the contract tables of ``folder`` as typed views.

    What does not fit in ``memory_limit`` spills into ``temp_directory``, at most
    ``max_temp_directory_size`` (a DuckDB size such as ``"40GB"``; by default
    ``spill_bound``): beyond it a query fails with DuckDB's out-of-memory error naming
    the setting, rather than filling the disk."""
    con = duckdb.connect(config={"memory_limit": memory_limit})
    con.execute(f"SET TimeZone = '{TIMEZONE}'")
    # inside Jupyter without ipywidgets DuckDB refuses any progress-bar setting (duckdb#7590)
    with contextlib.suppress(duckdb.InvalidInputException):
        con.execute("SET enable_progress_bar = false")
    # nothing here depends on the order rows were inserted in (every window and result is
    # ordered explicitly); keeping that order is what made 100M lines run out of 3 GB
    con.execute("SET preserve_insertion_order = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    # where DuckDB spills what does not fit in memory_limit (not the working folder)
    spill = temp_directory or Path(tempfile.gettempdir()) / "fundguard-duckdb"
    con.execute(f"SET temp_directory = {_quote(spill)}")
    bound = max_temp_directory_size or spill_bound(spill)
    con.execute(f"SET max_temp_directory_size = {_quote_text(bound)}")
    for name, table in TABLES.items():
        con.execute(f"CREATE VIEW {name} AS {_view_sql(con, table, table_file(folder, name))}")
    return con
