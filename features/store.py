"""The online feature view over the stored state: each patient's billed history.

The rules that look back in time (over-frequency, over-quantity, split admission) and the
models' patient features need, for one settlement, what the patient was billed before it:
``patient_history`` holds one row per settlement line (and one ``stay`` row per inpatient
settlement), written when the scorer decides a settlement and when a history is loaded,
and marked when a reversal refunds it. The batch side computes the same facts from the
contract tables directly (``features.batch``).

History semantics (the same in batch): a line counts for every later settlement of the
patient, at any institution, until its settlement is reversed.

Two more tables serve the online settlement features (``features.settlement_features``):
``patient_visits``, one row per settlement with its amounts (a patient's visits,
institutions and fund paid in a window), and ``item_reference``, the reference unit price
and typical quantity of each catalog item, computed from a training history
(:func:`compute_item_reference`) and loaded with the model's feature set (:func:`load_item_reference`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import duckdb
import pyarrow as pa
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Date,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    and_,
    bindparam,
    cast,
    column,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Select
from sqlalchemy.types import JSON, TypeDecorator

from traceability.history import batches, mark_stored
from traceability.store import (
    ID,
    InsertRows,
    MergedRead,
    Prepared,
    UTCDateTime,
    Writes,
    bind_processor,
    upsert,
)

MONEY: Final = Numeric(18, 2)

metadata: Final = MetaData()

STAY: Final = "stay"
"""``item_type`` of the row that records an inpatient stay (line 0 of its settlement)."""

services = Table(
    "services",
    metadata,
    Column("service_code", ID, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("gender_restriction", String(1), nullable=True),
    Column("min_age", Integer, nullable=True),
    Column("max_age", Integer, nullable=True),
    Column("max_times", Integer, nullable=True),
    Column("period_days", Integer, nullable=True),
)
"""The service catalog (诊疗项目目录): with ``drugs`` (traceability), the knowledge base the
rules read online."""

patient_history = Table(
    "patient_history",
    metadata,
    Column("settlement_id", ID, nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("institution_id", ID, nullable=False),
    Column("settled_at", UTCDateTime(), nullable=False),
    Column("item_type", String(16), nullable=False),
    Column("item_code", ID, nullable=False),
    Column("quantity", Numeric(14, 3), nullable=False),
    Column("admit_date", Date, nullable=True),
    Column("discharge_date", Date, nullable=True),
    Column("diagnosis_code", String(16), nullable=True),
    Column("reversed_at", UTCDateTime(), nullable=True),
    PrimaryKeyConstraint("settlement_id", "line_no"),
    # the look-up: a patient's lines of some items in a window (stays are item "stay")
    Index("ix_patient_history_item", "patient_id", "item_code", "settled_at"),
)


patient_visits = Table(
    "patient_visits",
    metadata,
    Column("settlement_id", ID, primary_key=True),
    Column("patient_id", ID, nullable=False),
    Column("institution_id", ID, nullable=False),
    Column("settled_at", UTCDateTime(), nullable=False),
    Column("visit_type", String(16), nullable=True),
    Column("total_amount", MONEY, nullable=True),
    Column("fund_paid", MONEY, nullable=True),
    Column("reversed_at", UTCDateTime(), nullable=True),
    # the look-up: a patient's settlements in a window
    Index("ix_patient_visits_patient", "patient_id", "settled_at"),
)
"""One row per settlement of a patient (结算), with its amounts: the patient's visits,
institutions and fund paid in a window before a settlement. Same semantics as
``patient_history``: a settlement counts until it is reversed. Amounts are NULL for a
settlement recorded without them (they then add nothing to a window's sums)."""

item_reference = Table(
    "item_reference",
    metadata,
    Column("item_type", String(16), nullable=False),
    Column("item_code", ID, nullable=False),
    Column("ref_unit_price", Numeric(18, 4), nullable=False),
    Column("ref_quantity", Numeric(14, 3), nullable=False),
    Column("n_lines", Integer, nullable=False),
    PrimaryKeyConstraint("item_type", "item_code"),
)
"""The reference unit price (median price billed) and typical quantity (median quantity
per line) of each catalog item over a training history: what a settlement's prices and
quantities are compared with. Part of the settlement feature set a model was trained on."""


@dataclass(frozen=True)
class HistoryLine:
    """One line of a settlement as the history keeps it."""

    line_no: int
    item_type: str
    item_code: str
    quantity: Decimal


@dataclass(frozen=True)
class Stay:
    settlement_id: str
    institution_id: str
    admit_date: date
    discharge_date: date
    diagnosis_code: str | None


_NEW_VISIT: Final = Prepared(insert(patient_visits))
_NEW_LINES: Final = InsertRows(patient_history)


def settlement_history(
    writes: Writes,
    *,
    settlement_id: str,
    patient_id: str,
    institution_id: str,
    settled_at: datetime,
    lines: Iterable[HistoryLine],
    admit_date: date | None = None,
    discharge_date: date | None = None,
    diagnosis_code: str | None = None,
    visit_type: str | None = None,
    total_amount: Decimal | None = None,
    fund_paid: Decimal | None = None,
) -> Writes:
    """Add to ``writes`` what puts a settlement in its patient's history: its lines (and
    stay) in ``patient_history``, the settlement and its amounts in ``patient_visits``."""
    writes.add(
        _NEW_VISIT,
        {
            "settlement_id": settlement_id,
            "patient_id": patient_id,
            "institution_id": institution_id,
            "settled_at": settled_at,
            "visit_type": visit_type,
            "total_amount": total_amount,
            "fund_paid": fund_paid,
            "reversed_at": None,
        },
    )
    common = {
        "settlement_id": settlement_id,
        "patient_id": patient_id,
        "institution_id": institution_id,
        "settled_at": settled_at,
        "reversed_at": None,
    }
    rows = [
        {
            **common,
            "line_no": line.line_no,
            "item_type": line.item_type,
            "item_code": line.item_code,
            "quantity": line.quantity,
            "admit_date": None,
            "discharge_date": None,
            "diagnosis_code": None,
        }
        for line in lines
    ]
    if admit_date is not None and discharge_date is not None:
        rows.append(
            {
                **common,
                "line_no": 0,
                "item_type": STAY,
                "item_code": STAY,
                "quantity": Decimal(0),
                "admit_date": admit_date,
                "discharge_date": discharge_date,
                "diagnosis_code": diagnosis_code,
            }
        )
    return writes.insert(_NEW_LINES, rows)


def record_settlement(conn: Connection, **settlement: Any) -> None:
    """Add a settlement to its patient's history now, in ``conn``'s transaction (the
    arguments of :func:`settlement_history`)."""
    settlement_history(Writes(conn.dialect), **settlement).run(conn)


def reverse_settlement(conn: Connection, *, settlement_id: str, reversed_at: datetime) -> None:
    """A refunded settlement no longer counts from ``reversed_at`` on."""
    conn.execute(
        update(patient_visits)
        .where(
            and_(
                patient_visits.c.settlement_id == settlement_id,
                patient_visits.c.reversed_at.is_(None),
            )
        )
        .values(reversed_at=reversed_at)
    )
    conn.execute(
        update(patient_history)
        .where(
            and_(
                patient_history.c.settlement_id == settlement_id,
                patient_history.c.reversed_at.is_(None),
            )
        )
        .values(reversed_at=reversed_at)
    )


@dataclass(frozen=True)
class Window:
    """A look-back window of one item: its quantity billed to the patient in the ``days``
    before a settlement, ``(t - days, t]``."""

    item_type: str
    item_code: str
    days: int


_STAMPS: Final[dict[type[Dialect], Any]] = {}


def _stamp(dialect: Dialect) -> Any:
    """How ``dialect`` binds a time (``UTCDateTime``)."""
    stamp = _STAMPS.get(type(dialect))
    if stamp is None:
        stamp = _STAMPS[type(dialect)] = bind_processor(UTCDateTime(), dialect)
    return stamp


class _Windows(TypeDecorator[list[tuple[str, str, datetime]]]):
    """The windows of one read, bound as one JSON list of ``{k, item_type, item_code,
    since}`` (one statement text whatever their number): each start as the store compares
    times (SQLite: its UTC text; PostgreSQL: ISO 8601 with the offset)."""

    impl = JSON
    cache_ok = True

    def process_bind_param(
        self, value: list[tuple[str, str, datetime]] | None, dialect: Dialect
    ) -> Any:
        if value is None:
            return None
        stamp = _stamp(dialect)
        return [
            {
                "k": k,
                "item_type": item_type,
                "item_code": item_code,
                "since": str(stamp(since)) if dialect.name == "sqlite" else since.isoformat(),
            }
            for k, (item_type, item_code, since) in enumerate(value)
        ]


def _window_part(dialect: str) -> Select[Any]:
    """Each window's billed quantity (``k``: its position in the list bound as
    ``windows``), for the patient bound as ``patient``, up to ``until``."""
    h = patient_history.c
    listed = bindparam("windows", type_=_Windows())
    k: Any
    item_type: Any
    item_code: Any
    since: Any
    if dialect == "postgresql":
        w = (
            func.jsonb_to_recordset(cast(listed, JSONB))
            .table_valued(
                column("k", Integer),
                column("item_type", String),
                column("item_code", String),
                column("since", UTCDateTime()),
            )
            .render_derived(with_types=True)
        )
        k, item_type, item_code, since = (w.c.k, w.c.item_type, w.c.item_code, w.c.since)
    else:
        w = func.json_each(listed).table_valued("value")
        k, item_type, item_code, since = (
            func.json_extract(w.c.value, f"$.{name}")
            for name in ("k", "item_type", "item_code", "since")
        )
    return (
        select(
            cast(k, Integer).label("k"),
            func.coalesce(func.sum(h.quantity), 0).label("quantity"),
        )
        .select_from(
            w.join(
                patient_history,
                and_(
                    h.patient_id == bindparam("patient"),
                    h.item_type == item_type,
                    h.item_code == item_code,
                    h.settled_at > since,
                    h.settled_at <= bindparam("until"),
                    or_(h.reversed_at.is_(None), h.reversed_at > bindparam("until")),
                ),
            )
        )
        .group_by(k)
    )


_STAYS: Final = select(
    patient_history.c.settlement_id,
    patient_history.c.institution_id,
    patient_history.c.admit_date,
    patient_history.c.discharge_date,
    patient_history.c.diagnosis_code,
).where(
    and_(
        patient_history.c.patient_id == bindparam("patient"),
        patient_history.c.item_type == STAY,
        patient_history.c.settled_at < bindparam("until"),
        or_(
            patient_history.c.reversed_at.is_(None),
            patient_history.c.reversed_at > bindparam("until"),
        ),
    )
)


def history_parts(dialect: str) -> dict[str, Select[Any]]:
    """What the rules read of a patient's history before a settlement, as parts of one
    ``MergedRead``: the windows' quantities (``window``) and the earlier inpatient stays
    (``stay``). Parameters: :func:`history_params`."""
    return {"window": _window_part(dialect), "stay": _STAYS}


def history_params(
    *, patient_id: str, until: datetime, windows: Sequence[tuple[str, str, datetime]]
) -> dict[str, Any]:
    """The parameters of :func:`history_parts`: each window as (item type, item code, its
    start, exclusive); ``until`` the end, inclusive, for the windows and exclusive for the
    stays."""
    return {"patient": patient_id, "until": until, "windows": list(windows)}


@dataclass(frozen=True)
class PatientHistory:
    """What the rules know of a patient's history before one settlement."""

    quantities: Mapping[Window, Decimal]
    """Each window's quantity billed before the settlement (the settlement not included)."""
    stays: tuple[Stay, ...]
    """The inpatient stays settled before it and not reversed by then."""


def patient_history_of(rows: Mapping[str, list[Any]], windows: Sequence[Window]) -> PatientHistory:
    """The history from the rows of :func:`history_parts` read for ``windows``."""
    quantities = dict.fromkeys(windows, Decimal(0))
    for row in rows["window"]:
        quantities[windows[row.k]] = Decimal(row.quantity)
    return PatientHistory(
        quantities,
        tuple(
            Stay(
                r.settlement_id, r.institution_id, r.admit_date, r.discharge_date, r.diagnosis_code
            )
            for r in rows["stay"]
        ),
    )


_HISTORY: Final = MergedRead(history_parts)


def read_patient_history(
    conn: Connection, *, patient_id: str, at: datetime, windows: Sequence[Window]
) -> PatientHistory:
    """The patient's history before a settlement at ``at`` (one statement); the scorer
    reads the same parts within its first statement."""
    windows = list(dict.fromkeys(windows))
    rows = _HISTORY.read(
        conn,
        history_params(
            patient_id=patient_id,
            until=at,
            windows=[(w.item_type, w.item_code, at - timedelta(days=w.days)) for w in windows],
        ),
    )
    return patient_history_of(rows, windows)


def window_quantities(
    conn: Connection,
    *,
    patient_id: str,
    item_type: str,
    item_codes: Sequence[str],
    since: datetime,
    until: datetime,
) -> dict[str, Decimal]:
    """The patient's billed quantity of each item (of ``item_type``) in (since, until],
    reversed lines left out (a line reversed at or before ``until`` does not count)."""
    codes = sorted(set(item_codes))
    rows = _HISTORY.read(
        conn,
        history_params(
            patient_id=patient_id, until=until, windows=[(item_type, c, since) for c in codes]
        ),
    )
    return {codes[row.k]: Decimal(row.quantity) for row in rows["window"]}


def earlier_stays(conn: Connection, *, patient_id: str, before: datetime) -> list[Stay]:
    """The patient's inpatient stays settled before ``before`` and not reversed by then."""
    return list(read_patient_history(conn, patient_id=patient_id, at=before, windows=[]).stays)


_HISTORY_SQL: Final = """
SELECT i.settlement_id, i.line_no, s.patient_id, s.institution_id, s.settled_at,
       i.item_type, i.item_code, i.quantity::DECIMAL(14,3) AS quantity,
       NULL::DATE AS admit_date, NULL::DATE AS discharge_date, NULL::VARCHAR AS diagnosis_code,
       r.reversed_at
FROM settlement_items i JOIN settlements s USING (settlement_id)
LEFT JOIN reversals r USING (settlement_id)
WHERE s.settlement_id NOT IN (SELECT settlement_id FROM history_present)
UNION ALL
SELECT s.settlement_id, 0, s.patient_id, s.institution_id, s.settled_at,
       'stay', 'stay', 0, s.admit_date, s.discharge_date, s.diagnosis_code, r.reversed_at
FROM settlements s LEFT JOIN reversals r USING (settlement_id)
WHERE s.visit_type = 'inpatient' AND s.admit_date IS NOT NULL AND s.discharge_date IS NOT NULL
  AND s.settlement_id NOT IN (SELECT settlement_id FROM history_present)
"""


def load_services(con: duckdb.DuckDBPyConnection, conn: Connection) -> int:
    """Upsert the service catalog of the history behind ``con``."""
    columns = [c.name for c in services.columns]
    rows = con.sql(f"SELECT {', '.join(columns)} FROM services").to_arrow_table().to_pylist()  # noqa: S608 - our own columns
    return upsert(conn, services, rows, "service_code")


def load_history(
    con: duckdb.DuckDBPyConnection, conn: Connection, *, chunk_rows: int = 20_000
) -> int:
    """Add every settlement of the history behind ``con`` (``features.batch`` views) that is
    not in the store yet; returns the rows added (zero when it was loaded before)."""
    mark_stored(con, conn, patient_history.c.settlement_id, "history_present")
    added = 0
    for rows in batches(con, _HISTORY_SQL, chunk_rows):
        conn.execute(insert(patient_history), rows)
        added += len(rows)
    _load_visits(con, conn, chunk_rows=chunk_rows)
    return added


_VISITS_SQL: Final = """
SELECT s.settlement_id, s.patient_id, s.institution_id, s.settled_at, s.visit_type,
       s.total_amount, s.fund_paid, r.reversed_at
FROM settlements s LEFT JOIN reversals r USING (settlement_id)
WHERE s.settlement_id NOT IN (SELECT settlement_id FROM visits_present)
"""


def _load_visits(con: duckdb.DuckDBPyConnection, conn: Connection, *, chunk_rows: int) -> int:
    """Add every settlement of the history that ``patient_visits`` does not hold yet."""
    mark_stored(con, conn, patient_visits.c.settlement_id, "visits_present")
    added = 0
    for rows in batches(con, _VISITS_SQL, chunk_rows):
        conn.execute(insert(patient_visits), rows)
        added += len(rows)
    return added


_REFERENCE_SQL: Final = """
SELECT i.item_type, i.item_code,
       round(median(i.unit_price::DOUBLE), 4)::DECIMAL(18,4) AS ref_unit_price,
       round(median(i.quantity::DOUBLE), 3)::DECIMAL(14,3) AS ref_quantity,
       count(*)::BIGINT AS n_lines
FROM settlement_items i JOIN settlements s USING (settlement_id)
LEFT JOIN reversals r USING (settlement_id)
WHERE i.unit_price IS NOT NULL AND i.quantity > 0
  AND (r.reversed_at IS NULL OR r.reversed_at > $until)
  AND ($until IS NULL OR s.settled_at < $until)
GROUP BY ALL
ORDER BY i.item_type, i.item_code
"""


def compute_item_reference(
    con: duckdb.DuckDBPyConnection, *, until: datetime | None = None
) -> pa.Table:
    """The reference price and typical quantity of every item billed in the history behind
    ``con`` (``features.batch`` views), from the lines settled before ``until`` (all when
    None) and not reversed by then: the median unit price and the median quantity per line
    (rounded to 4 and 3 decimals, as the store keeps them)."""
    table: pa.Table = con.sql(_REFERENCE_SQL, params={"until": until}).to_arrow_table()
    return table


def load_item_reference(conn: Connection, reference: pa.Table) -> int:
    """Replace the store's ``item_reference`` with ``reference`` (:func:`compute_item_reference`)."""
    conn.execute(item_reference.delete())
    rows = reference.select([c.name for c in item_reference.columns]).to_pylist()
    if rows:
        conn.execute(insert(item_reference), rows)
    return len(rows)


knowledge_version = Table(
    "knowledge_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)
"""One row: the knowledge base's version. Triggers (migration 0009) bump it on every change
of ``drugs``, ``products``, ``services`` and ``item_reference``, so a scorer holding the
knowledge base in memory (``features.knowledge``) knows when to read it again."""
