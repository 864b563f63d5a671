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

import copy
import functools
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from psycopg import RawCursor
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
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
from sqlalchemy.exc import DBAPIError
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


_Processor = Callable[[Any], Any] | None


_NO_VALUE: Final = object()


@dataclass(frozen=True)
class _Form:
    """A statement compiled for one dialect: its text, and how its parameters are bound:
    each with its name, bind processor and the value of a literal the statement carries,
    in the statement's order (``positional``: as a tuple) or by name."""

    sql: str
    positional: bool
    binds: tuple[tuple[str, _Processor, Any], ...]


_BIND_PROCESSORS: Final[dict[tuple[type[Any], type[Dialect]], _Processor]] = {}


def bind_processor(type_: Any, dialect: Dialect) -> _Processor:
    """SQLAlchemy's bind processor of ``type_`` for ``dialect`` (None: values go as they
    are). A time's (``UTCDateTime``, whose stored form depends on the instant alone) and a
    date's are shared by every statement and remember the values they processed last: a
    settlement binds its time in most of its statements."""
    if not isinstance(type_, UTCDateTime | Date):
        process: _Processor = type_.dialect_impl(dialect).bind_processor(dialect)
        return process
    key = (type(type_), type(dialect))
    if key not in _BIND_PROCESSORS:
        process = type_.dialect_impl(dialect).bind_processor(dialect)
        _BIND_PROCESSORS[key] = None if process is None else functools.lru_cache(256)(process)
    return _BIND_PROCESSORS[key]


def _native_placeholders(dialect: Dialect) -> Dialect:
    """``dialect`` compiling PostgreSQL's own ``$1`` placeholders (its ``numeric_dollar``
    paramstyle), which psycopg's raw cursor sends as they are: psycopg's ``%(name)s`` are
    parsed again on every execution of a statement longer than 4 KB or with more than 50
    parameters, as a scorer's merged read is. SQLite's ``?`` is left as it is."""
    if dialect.name != "postgresql":
        return dialect
    native = copy.copy(dialect)
    native.paramstyle = "numeric_dollar"
    native.positional = True
    return native


@contextmanager
def driver_cursor(conn: Connection) -> Iterator[Any]:
    """A cursor of ``conn``'s driver connection, in its transaction. A driver error in the
    block is raised as SQLAlchemy's own execution would raise it (``IntegrityError``,
    ``OperationalError`` …), the connection invalidated when the error says the server is
    gone, so callers and the app's handlers see one kind of error whoever executed."""
    dialect = conn.dialect
    dbapi: Any = conn.connection.dbapi_connection
    cursor: Any = RawCursor(dbapi) if dialect.name == "postgresql" else dbapi.cursor()
    try:
        yield cursor
    except dialect.loaded_dbapi.Error as error:
        gone = dialect.is_disconnect(error, dbapi, cursor)
        if gone:
            conn.invalidate(error)
        raise DBAPIError.instance(
            None, None, error, dialect.loaded_dbapi.Error,
            connection_invalidated=gone, dialect=dialect,
        ) from error  # fmt: skip
    finally:
        cursor.close()


@dataclass(frozen=True)
class Bound:
    """A statement's text and its processed parameters (:meth:`Prepared.bind`)."""

    sql: str
    parameters: Any
    many: bool

    def run(self, conn: Connection, cursor: Any) -> None:
        """Execute on ``cursor`` (of ``conn``); listeners of SQLAlchemy's
        ``before_cursor_execute`` (a statement counter, say) hear of it as of any other."""
        if conn.dispatch.before_cursor_execute:
            conn.dispatch.before_cursor_execute(
                conn, cursor, self.sql, self.parameters, None, self.many
            )
        if self.many:
            cursor.executemany(self.sql, self.parameters)
        else:
            cursor.execute(self.sql, self.parameters)


class Prepared:
    """A statement compiled once per dialect and run on the driver's own cursor.

    SQLAlchemy's execution of a Core statement costs tens of µs of Python per call
    (cache-key lookup, parameter construction, result wrapping), more than SQLite takes to
    run a small statement. The scorer's hot path pays that a dozen times a settlement, so
    its statements are compiled here once and executed on the DBAPI cursor of the caller's
    connection, inside its transaction. Parameters and results go through the very bind
    and result processors SQLAlchemy would apply (a time stored as SQLite's text in UTC, a
    NUMERIC read back as a ``Decimal`` of its scale), so what is written and read is what
    the Core statement would write and read. Result processors depend on the driver's
    column types, so they are resolved from the first execution's cursor description.
    Statements must bind plain values (no expanding ``IN``: see :func:`one_of`).
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._forms: dict[type[Dialect], _Form] = {}
        self._results: dict[type[Dialect], tuple[_Processor, ...]] = {}

    def _form(self, dialect: Dialect) -> _Form:
        form = self._forms.get(type(dialect))
        if form is None:
            compiled = self.statement.compile(dialect=_native_placeholders(dialect))
            named = {name: bind for bind, name in compiled.bind_names.items()}
            positional = compiled.positiontup
            names = list(positional) if positional is not None else list(dict.fromkeys(named))
            form = _Form(
                compiled.string,
                positional is not None,
                tuple(
                    (
                        name,
                        bind_processor(named[name].type, dialect),
                        named[name].effective_value
                        if not named[name].required and named[name].callable is None
                        else _NO_VALUE,
                    )
                    for name in names
                ),
            )
            self._forms[type(dialect)] = form
        return form

    @staticmethod
    def _params(form: _Form, params: Mapping[str, Any]) -> Any:
        values = []
        for name, process, carried in form.binds:
            value = params.get(name, carried)
            if value is _NO_VALUE:
                raise KeyError(f"no value for the statement's parameter {name!r}")
            values.append(value if process is None or value is None else process(value))
        if form.positional:
            return tuple(values)
        return dict(zip((name for name, _, _ in form.binds), values, strict=True))

    @staticmethod
    def _params_many(form: _Form, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """:meth:`_params` of many rows, column by column: a value that is the very object
        of the row before (a settlement's time on each of its lines) is processed once."""
        columns = []
        for name, process, carried in form.binds:
            column = []
            last_in: Any = _NO_VALUE
            last_out: Any = None
            for row in rows:
                value = row.get(name, carried)
                if value is _NO_VALUE:
                    raise KeyError(f"no value for the statement's parameter {name!r}")
                if process is not None and value is not None:
                    if value is not last_in:
                        last_in, last_out = value, process(value)
                    value = last_out
                column.append(value)
            columns.append(column)
        if form.positional:
            return list(zip(*columns, strict=True))
        names = [name for name, _, _ in form.binds]
        return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]

    def _processors(self, dialect: Dialect, description: Any) -> tuple[_Processor, ...]:
        processors = self._results.get(type(dialect))
        if processors is None:
            columns = list(self.statement.exported_columns)
            processors = tuple(
                column.type.dialect_impl(dialect).result_processor(dialect, d[1])
                for column, d in zip(columns, description, strict=True)
            )
            self._results[type(dialect)] = processors
        return processors

    def bind(self, dialect: Dialect, parameters: Any, *, many: bool = False) -> Bound:
        """The statement with its parameters processed for ``dialect`` (a mapping, or a
        sequence of them when ``many``), ready to run."""
        form = self._form(dialect)
        bound = self._params_many(form, parameters) if many else self._params(form, parameters)
        return Bound(form.sql, bound, many)

    def _run(
        self, conn: Connection, parameters: Any, *, many: bool = False, fetch: bool = False
    ) -> tuple[list[Any], tuple[_Processor, ...], int]:
        """Execute on a driver cursor of ``conn``: the rows (when ``fetch``) with their
        result processors, and the row count (:func:`driver_cursor`)."""
        bound = self.bind(conn.dialect, parameters, many=many)
        with driver_cursor(conn) as cursor:
            bound.run(conn, cursor)
            if not fetch:
                return [], (), int(cursor.rowcount)
            raw = list(cursor.fetchall())
            processors = self._processors(conn.dialect, cursor.description) if raw else ()
            return raw, processors, len(raw)

    def raw(
        self, conn: Connection, params: Mapping[str, Any]
    ) -> tuple[list[Any], tuple[_Processor, ...]]:
        """Run the statement in ``conn``'s transaction: its rows as the driver gives them,
        and the result processor of each column (None: the value is as it should be)."""
        raw, processors, _ = self._run(conn, params, fetch=True)
        return raw, processors

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run the statement in ``conn``'s transaction; its rows, values processed."""
        raw, processors = self.raw(conn, params)
        if not any(processors):
            return [tuple(row) for row in raw]
        return [
            tuple(
                value if process is None or value is None else process(value)
                for process, value in zip(processors, row, strict=True)
            )
            for row in raw
        ]

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run the statement (no rows wanted) in ``conn``'s transaction; the rows it touched."""
        return self._run(conn, params)[2]

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the statement once per row, as one driver ``executemany`` (SQLite: a loop in
        C; psycopg: one pipeline)."""
        if rows:
            self._run(conn, rows, many=True)


class InsertRows:
    """Many rows into one table in one execution of one statement text, whatever their
    number: on PostgreSQL ``INSERT … SELECT unnest(column array), …`` with each column bound
    as one array (one round trip, one prepared statement); on SQLite the driver's
    ``executemany`` (a loop in C, no round trip to save). ``update``: the columns an
    existing row (same ``key``) takes from the new one (an upsert)."""

    def __init__(self, table: Table, *, key: str | None = None, update: Sequence[str] = ()) -> None:
        self.columns = [c.name for c in table.columns]
        # psycopg dumps an array of one Python type: a Numeric column's ints go as Decimals
        self._decimals = {
            c.name
            for c in table.columns
            if isinstance(c.type, Numeric) and not isinstance(c.type, Float)
        }
        self._statements: dict[str, Prepared] = {}
        for dialect in DIALECTS:
            if dialect == "postgresql":
                statement: Any = postgresql.insert(table).from_select(
                    self.columns,
                    select(
                        *(
                            func.unnest(bindparam(c.name, type_=postgresql.ARRAY(c.type)))
                            for c in table.columns
                        )
                    ),
                )
            else:
                statement = sqlite.insert(table)
            if key is not None:
                statement = statement.on_conflict_do_update(
                    index_elements=[key], set_={c: statement.excluded[c] for c in update}
                )
            self._statements[dialect] = Prepared(statement)

    def bind(self, dialect: Dialect, rows: Sequence[Mapping[str, Any]]) -> Bound:
        """The insert of ``rows`` (every column of the table given), ready to run."""
        statement = self._statements[dialect.name]
        if dialect.name == "postgresql":
            return statement.bind(
                dialect,
                {
                    c: [_decimal(row[c]) for row in rows]
                    if c in self._decimals
                    else [row[c] for row in rows]
                    for c in self.columns
                },
            )
        return statement.bind(dialect, rows, many=True)

    def execute(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` (every column of the table given) in ``conn``'s transaction."""
        if rows:
            Writes(conn.dialect).insert(self, rows).run(conn)


def _decimal(value: Any) -> Any:
    """A Numeric column's value as a Decimal (None and Decimals as they are)."""
    return value if value is None or type(value) is Decimal else Decimal(str(value))


@dataclass
class Writes:
    """Writes made ready (:class:`Bound`) before the transaction that runs them: a scorer
    prepares a settlement's writes before it takes its locks, so that the locks are held
    only while the store writes. On PostgreSQL they are sent as one pipeline (one round
    trip for them all)."""

    dialect: Dialect
    steps: list[Bound] = field(default_factory=list)

    def add(self, statement: Prepared, params: Mapping[str, Any]) -> Writes:
        self.steps.append(statement.bind(self.dialect, params))
        return self

    def insert(self, rows_insert: InsertRows, rows: Sequence[Mapping[str, Any]]) -> Writes:
        if rows:
            self.steps.append(rows_insert.bind(self.dialect, rows))
        return self

    def run(self, conn: Connection) -> None:
        """Execute the writes in order, in ``conn``'s transaction."""
        if not self.steps:
            return
        dbapi: Any = conn.connection.dbapi_connection
        with driver_cursor(conn) as cursor:
            pipeline = dbapi.pipeline() if conn.dialect.name == "postgresql" else nullcontext()
            with pipeline:
                for step in self.steps:
                    step.run(conn, cursor)


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
            dialect: Prepared(self._merge(parts(dialect) if callable(parts) else parts))
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
        self._shape: dict[str, tuple[list[int], Any]] = {}
        branches = []
        for name, part in parts.items():
            keys = [str(column.key) for column in part.selected_columns]
            positions = [1 + i for i in placed[name]]
            shape = namedtuple(f"{name.title()}Row", keys, rename=True)  # type: ignore[misc]
            self._shape[name] = (positions, shape)
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
        raw, processors = self.statements[conn.dialect.name].raw(conn, params)
        for row in raw:
            positions, shape = self._shape[row[0]]
            values = []
            for i in positions:
                value, process = row[i], processors[i]
                values.append(value if value is None or process is None else process(value))
            rows[row[0]].append(shape._make(values))
        return rows
