"""The store tables that the scorer owns: decisions (the audit of every answer) and reversals."""

from __future__ import annotations

from typing import Final

from sqlalchemy import Column, Integer, MetaData, Numeric, String, Table, Text

from traceability.store import ID, UTCDateTime

metadata: Final = MetaData()

decisions = Table(
    "decisions",
    metadata,
    Column("settlement_id", ID, primary_key=True),
    Column("institution_id", ID, nullable=False, index=True),
    Column("patient_id", ID, nullable=False, index=True),
    Column("settled_at", UTCDateTime(), nullable=False),
    Column("decision", String(8), nullable=False),
    Column("risk_score", Numeric(6, 4), nullable=False),
    Column("request_sha256", String(64), nullable=False),
    Column("response", Text, nullable=False),
    Column("latency_us", Integer, nullable=False),
    Column("decided_at", UTCDateTime(), nullable=False),
)

reversals = Table(
    "reversals",
    metadata,
    Column("settlement_id", ID, primary_key=True),
    Column("reversed_at", UTCDateTime(), nullable=False),
    Column("released_codes", Integer, nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
)
