"""Loading a history into the store: the code registry, the stock and the ledger.

After ``traceability.batch.screen_codes`` has run on a DuckDB connection, the codes of
every settlement that was not rejected are settled, and those of a reversed settlement are
released: that is the ledger the scorer must start from, so that a pack sold in the history
cannot be sold again online. Loading is idempotent: catalog rows are upserted, stock
events and ledger entries already present are skipped, and each code's outstanding units
are recomputed from its entries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import duckdb
import pyarrow as pa
from sqlalchemy import ColumnElement, Connection, bindparam, func, select, update

from traceability.batch import materialise
from traceability.store import (
    dialect_insert,
    drugs,
    ledger_codes,
    ledger_entries,
    products,
    stock_events,
    upsert,
)

CHUNK_ROWS: Final = 20_000


@dataclass(frozen=True)
class HistoryLoad:
    """What a load added to the store (zero everywhere when it was loaded before)."""

    drugs: int
    products: int
    stock_events: int
    ledger_entries: int
    codes: int


def batches(
    con: duckdb.DuckDBPyConnection, sql: str, chunk_rows: int = CHUNK_ROWS
) -> Iterator[list[dict[str, Any]]]:
    """The rows of ``sql`` on ``con``, ``chunk_rows`` at a time (never an empty chunk)."""
    reader = con.sql(sql).to_arrow_reader(chunk_rows)
    for batch in reader:
        rows = batch.to_pylist()
        if rows:
            yield rows


def mark_stored(
    con: duckdb.DuckDBPyConnection, conn: Connection, column: ColumnElement[Any], name: str
) -> None:
    """The settlement ids the store's ``column`` holds, as DuckDB temp table ``name``
    (``settlement_id``): what a load skips because it loaded it before."""
    ids = conn.execute(select(column).distinct()).scalars().all()
    materialise(con, name, pa.table({"settlement_id": pa.array(ids, pa.string())}))


def load_catalog(con: duckdb.DuckDBPyConnection, conn: Connection) -> tuple[int, int]:
    """Upsert the drug catalog and the product registry."""
    n_drugs = sum(
        upsert(conn, drugs, rows, "drug_code")
        for rows in batches(con, f"SELECT {', '.join(c.name for c in drugs.columns)} FROM drugs")  # noqa: S608 - our own columns
    )
    n_products = sum(
        upsert(conn, products, rows, "product_code")
        for rows in batches(
            con,
            f"SELECT {', '.join(c.name for c in products.columns)} FROM products",  # noqa: S608 - our own columns
        )
    )
    return n_drugs, n_products


def load_stock(con: duckdb.DuckDBPyConnection, conn: Connection) -> int:
    """Record the supply-chain events (canonical codes; invalid codes were refused before)."""
    added = 0
    for rows in batches(
        con,
        """SELECT institution_id, canonical AS canonical_code, event_type, event_at
           FROM stock WHERE canonical IS NOT NULL""",
    ):
        result = conn.execute(
            dialect_insert(conn, stock_events)
            .on_conflict_do_nothing()
            .returning(stock_events.c.id),
            rows,
        )
        added += len(result.fetchall())
    return added


def load_ledger(con: duckdb.DuckDBPyConnection, conn: Connection) -> tuple[int, int]:
    """Settle the codes of every settlement that consumed them (``resolved`` minus
    ``not_consuming``), releasing the reversed ones; skip settlements already in the ledger."""
    mark_stored(con, conn, ledger_entries.c.settlement_id, "ledger_present")
    added = 0
    touched: set[str] = set()
    for rows in batches(
        con,
        """SELECT settlement_id, line_no, pos - 1 AS position, canonical AS canonical_code,
                  units, split_sale, settled_at, reversed_at AS released_at
           FROM resolved
           WHERE canonical IS NOT NULL
             AND settlement_id NOT IN (SELECT settlement_id FROM not_consuming)
             AND settlement_id NOT IN (SELECT settlement_id FROM ledger_present)
           ORDER BY settled_at, settlement_id, line_no, pos""",
    ):
        conn.execute(ledger_entries.insert(), rows)
        added += len(rows)
        touched.update(r["canonical_code"] for r in rows)
    _recompute_codes(conn, sorted(touched))
    return added, len(touched)


def _recompute_codes(conn: Connection, canonicals: Sequence[str]) -> None:
    """Each code's outstanding units, from its unreleased entries."""
    outstanding = func.coalesce(
        func.sum(ledger_entries.c.units).filter(ledger_entries.c.released_at.is_(None)), 0
    )
    for start in range(0, len(canonicals), CHUNK_ROWS):
        chunk = list(canonicals[start : start + CHUNK_ROWS])
        totals: dict[str, dict[str, Any]] = {
            c: {"canonical_code": c, "full_units": 0, "split_units": 0} for c in chunk
        }
        for row in conn.execute(
            select(ledger_entries.c.canonical_code, ledger_entries.c.split_sale, outstanding)
            .where(ledger_entries.c.canonical_code.in_(chunk))
            .group_by(ledger_entries.c.canonical_code, ledger_entries.c.split_sale)
        ):
            totals[row[0]]["split_units" if row[1] else "full_units"] = row[2]
        statement = dialect_insert(conn, ledger_codes).on_conflict_do_nothing()
        conn.execute(statement, list(totals.values()))
        conn.execute(
            update(ledger_codes)
            .where(ledger_codes.c.canonical_code == bindparam("code"))
            .values(full_units=bindparam("full"), split_units=bindparam("split")),
            [
                {"code": t["canonical_code"], "full": t["full_units"], "split": t["split_units"]}
                for t in totals.values()
            ],
        )


def load_history(con: duckdb.DuckDBPyConnection, conn: Connection) -> HistoryLoad:
    """Everything a screened history holds for traceability, in ``conn``'s transaction."""
    n_drugs, n_products = load_catalog(con, conn)
    n_events = load_stock(con, conn)
    n_entries, n_codes = load_ledger(con, conn)
    return HistoryLoad(n_drugs, n_products, n_events, n_entries, n_codes)
