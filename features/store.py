"""The online feature view over the stored state: each patient's billed history.

The rules that look back in time (over-frequency, over-quantity, split admission) and the
models' patient features need, for one settlement, what the patient was billed before it:
``patient_history`` holds one row per settlement line (and one ``stay`` row per inpatient
settlement), written when the scorer decides a settlement and when a history is loaded,
and marked when a reversal refunds it. The batch side computes the same facts from the
contract tables directly (``features.batch``).

History semantics (the same in batch): a line counts for every later settlement of the
patient, at any institution, until its settlement is reversed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Final

import duckdb
import pyarrow as pa
from sqlalchemy import (
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
    func,
    insert,
    or_,
    select,
    update,
)

from traceability.store import ID, UTCDateTime, upsert

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


def record_settlement(
    conn: Connection,
    *,
    settlement_id: str,
    patient_id: str,
    institution_id: str,
    settled_at: datetime,
    lines: Iterable[HistoryLine],
    admit_date: date | None = None,
    discharge_date: date | None = None,
    diagnosis_code: str | None = None,
) -> None:
    """Add a settlement to its patient's history (in the caller's transaction)."""
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
    if rows:
        conn.execute(insert(patient_history), rows)


def reverse_settlement(conn: Connection, *, settlement_id: str, reversed_at: datetime) -> None:
    """A refunded settlement no longer counts from ``reversed_at`` on."""
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


_WINDOW_SUMS = (
    select(patient_history.c.item_code, func.coalesce(func.sum(patient_history.c.quantity), 0))
    .where(
        and_(
            patient_history.c.patient_id == bindparam("patient"),
            patient_history.c.item_type == bindparam("item_type"),
            patient_history.c.item_code.in_(bindparam("items", expanding=True)),
            patient_history.c.settled_at > bindparam("since"),
            patient_history.c.settled_at <= bindparam("until"),
            or_(
                patient_history.c.reversed_at.is_(None),
                patient_history.c.reversed_at > bindparam("until"),
            ),
        )
    )
    .group_by(patient_history.c.item_code)
)


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
    if not item_codes:
        return {}
    rows = conn.execute(
        _WINDOW_SUMS,
        {
            "patient": patient_id,
            "item_type": item_type,
            "items": sorted(item_codes),
            "since": since,
            "until": until,
        },
    )
    return {code: Decimal(total) for code, total in rows}


_STAYS = select(
    patient_history.c.settlement_id,
    patient_history.c.institution_id,
    patient_history.c.admit_date,
    patient_history.c.discharge_date,
    patient_history.c.diagnosis_code,
).where(
    and_(
        patient_history.c.patient_id == bindparam("patient"),
        patient_history.c.item_type == STAY,
        patient_history.c.settled_at < bindparam("before"),
        or_(
            patient_history.c.reversed_at.is_(None),
            patient_history.c.reversed_at > bindparam("before"),
        ),
    )
)


def earlier_stays(conn: Connection, *, patient_id: str, before: datetime) -> list[Stay]:
    """The patient's inpatient stays settled before ``before`` and not reversed by then."""
    return [
        Stay(r.settlement_id, r.institution_id, r.admit_date, r.discharge_date, r.diagnosis_code)
        for r in conn.execute(_STAYS, {"patient": patient_id, "before": before})
    ]


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
    present = pa.table(
        {
            "settlement_id": pa.array(
                conn.execute(select(patient_history.c.settlement_id).distinct()).scalars().all(),
                pa.string(),
            )
        }
    )
    con.register("history_present", present)
    added = 0
    try:
        for batch in con.sql(_HISTORY_SQL).to_arrow_reader(chunk_rows):
            rows = batch.to_pylist()
            if rows:
                conn.execute(insert(patient_history), rows)
                added += len(rows)
    finally:
        con.unregister("history_present")
    return added
