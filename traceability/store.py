"""The store tables that traceability owns (the engine and the migrations are ``serve``'s).

- ``drugs`` and ``products``: the drug catalog (医保药品目录) and the product registry
  (药品标识码 / GTIN-14 → drug), as loaded from the contract tables: a code check needs a
  drug's pack size and a code's product;
- ``ledger_codes``: one row per canonical code with its outstanding units (full-pack and
  split sales, not released): the row a settlement locks while it decides;
- ``ledger_entries``: which settlement settled which code, how many units, and when a
  reversal released it;
- ``stock_events``: the supply-chain events (``purchase``, ``return``) by institution and code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeDecorator

metadata: Final = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time: stored in UTC, returned zone-aware; a naive time is refused.

    SQLite has no zone-aware type: storing every time in UTC keeps its comparisons right
    whatever offset the time arrived with.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive time {value.isoformat()} has no zone")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"not a time: {value!r}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UNITS: Final = Numeric(14, 3)
ID: Final = String(64)
CODE: Final = String(128)

drugs = Table(
    "drugs",
    metadata,
    Column("drug_code", ID, primary_key=True),
    Column("generic_name", String(200), nullable=False),
    Column("pack_units", Integer, nullable=False),
    Column("max_units_per_day", Numeric(10, 3), nullable=True),
    Column("gender_restriction", String(1), nullable=True),
    Column("min_age", Integer, nullable=True),
    Column("max_age", Integer, nullable=True),
    Column("high_value", Boolean, nullable=True),
    Column("red_list", Boolean, nullable=True),
)

products = Table(
    "products",
    metadata,
    Column("product_code", String(14), primary_key=True),
    Column("drug_code", ID, nullable=False),
    Column("manufacturer", String(200), nullable=True),
)

ledger_codes = Table(
    "ledger_codes",
    metadata,
    Column("canonical_code", CODE, primary_key=True),
    Column("full_units", UNITS, nullable=False),
    Column("split_units", UNITS, nullable=False),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("settlement_id", ID, nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("position", Integer, nullable=False),
    Column("canonical_code", CODE, nullable=False, index=True),
    Column("units", UNITS, nullable=False),
    Column("split_sale", Boolean, nullable=False),
    Column("settled_at", UTCDateTime(), nullable=False),
    Column("released_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("settlement_id", "line_no", "position"),
)

stock_events = Table(
    "stock_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("institution_id", ID, nullable=False),
    Column("canonical_code", CODE, nullable=False),
    Column("event_type", String(16), nullable=False),
    Column("event_at", UTCDateTime(), nullable=False),
    # the code first: a sale looks up its codes' events, and a code has few
    UniqueConstraint(
        "canonical_code", "institution_id", "event_at", "event_type", name="uq_stock_event"
    ),
)


def dialect_insert(conn: Connection, table: Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` for the store's dialect (PostgreSQL or SQLite)."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def upsert(conn: Connection, table: Table, rows: list[dict[str, Any]], key: str) -> int:
    """Insert ``rows``, replacing the columns of rows whose ``key`` exists; how many."""
    if not rows:
        return 0
    statement = dialect_insert(conn, table)
    columns = [c.name for c in table.columns if c.name != key]
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[key], set_={c: statement.excluded[c] for c in columns}
        ),
        rows,
    )
    return len(rows)
