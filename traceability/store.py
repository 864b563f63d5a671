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

from collections import namedtuple
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import (
    JSON,
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
    any_,
    bindparam,
    cast,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import CompoundSelect, Select
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


DIALECTS: Final = ("postgresql", "sqlite")
"""The store's dialects: statements built per dialect are built for these."""


def many_rows(statement: Any, column: Any) -> dict[str, Any]:
    """``statement`` (an ``INSERT``) per dialect, for many rows in one execution: on
    PostgreSQL with ``RETURNING column``, which makes SQLAlchemy send the rows as one
    multi-row ``INSERT`` ("insertmanyvalues", one round trip) instead of psycopg's
    executemany (a statement per row); on SQLite as it is (the driver's executemany, a
    loop in C with no round trip to save)."""
    return {"postgresql": statement.returning(column), "sqlite": statement}


def one_of(column: Any, name: str, dialect: str) -> Any:
    """``column IN`` the list bound to ``name``, as one fixed statement text whatever the
    list's length: ``= ANY(array)`` on PostgreSQL, ``IN (SELECT value FROM json_each(…))`` on
    SQLite. (An expanding ``IN`` renders a new text for every length: SQLAlchemy rewrites
    the statement on each execution, and neither psycopg's prepared statements nor
    SQLite's statement cache can keep it.)"""
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=postgresql.ARRAY(column.type)))
    values = func.json_each(bindparam(name, type_=JSON)).table_valued("value")
    return column.in_(select(values.c.value).scalar_subquery())


def _picker(positions: list[int]) -> Callable[[Any], tuple[Any, ...]]:
    """The values at ``positions`` of a row, as a tuple."""
    if len(positions) == 1:
        (only,) = positions
        return lambda row: (row[only],)
    pick: Callable[[Any], tuple[Any, ...]] = itemgetter(*positions)
    return pick


class MergedRead:
    """Several small reads sent as one statement (one round trip): ``UNION ALL`` of named
    parts, each part a plain ``SELECT`` (no ``ORDER BY``).

    Every row carries its part's name; each part's columns sit in typed slots that parts
    share by type (a slot is NULL, cast to its type, in the rows of a part that does not
    use it), so each value is read back through its own column type, exactly as the part
    alone would give it. ``read`` answers the rows of each part as named tuples. ``parts``
    may depend on the dialect (``one_of``); the statement is built once per dialect at
    import, and SQLAlchemy compiles it once and caches it.
    """

    def __init__(
        self, parts: Mapping[str, Select[Any]] | Callable[[str], Mapping[str, Select[Any]]]
    ) -> None:
        self.statements = {
            dialect: self._merge(parts(dialect) if callable(parts) else parts)
            for dialect in DIALECTS
        }

    def _merge(self, parts: Mapping[str, Select[Any]]) -> CompoundSelect[Any]:
        slots: list[tuple[str, Any]] = []  # (type key, type)
        placed: dict[str, list[int]] = {}
        for name, part in parts.items():
            taken: list[int] = []
            for column in part.selected_columns:
                key = repr(column.type)
                free = [i for i, (k, _) in enumerate(slots) if k == key and i not in taken]
                if not free:
                    slots.append((key, column.type))
                    free = [len(slots) - 1]
                taken.append(free[0])
            placed[name] = taken
        self._shape: dict[str, tuple[Callable[[Any], Any], Any]] = {}
        branches = []
        for name, part in parts.items():
            keys = [str(column.key) for column in part.selected_columns]
            positions = [1 + i for i in placed[name]]
            shape = namedtuple(f"{name.title()}Row", keys, rename=True)  # type: ignore[misc]
            self._shape[name] = (_picker(positions), shape)
            own = dict(zip(placed[name], part.selected_columns, strict=True))
            branches.append(
                part.with_only_columns(
                    literal(name, String).label("part"),
                    *(
                        (own[i] if i in own else cast(null(), type_)).label(f"c{i}")
                        for i, (_, type_) in enumerate(slots)
                    ),
                    maintain_column_froms=True,
                )
            )
        return union_all(*branches)

    def read(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, list[Any]]:
        """The rows of every part (an empty list for a part without rows)."""
        rows: dict[str, list[Any]] = {name: [] for name in self._shape}
        for row in conn.execute(self.statements[conn.dialect.name], params):
            values, shape = self._shape[row[0]]
            rows[row[0]].append(shape._make(values(row)))
        return rows
