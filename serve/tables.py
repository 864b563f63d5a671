"""The store tables that the scorer owns: decisions (the audit of every answer) and reversals."""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
)

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
    Column("rulebase_version", String(64), nullable=False),
    Column("rulebase_sha256", String(64), nullable=False),
    Column("model_name", String(128), nullable=True),
    Column("model_version", String(32), nullable=True),
    Column("model_score", Numeric(6, 4), nullable=True),
    Column("feature_set", String(64), nullable=True),
    Column("degraded", Boolean, nullable=False, server_default=false()),
    Column("degraded_reason", Text, nullable=True),
    Column("challenger_version", String(32), nullable=True),
    Column("challenger_score", Numeric(6, 4), nullable=True),
)
"""Every answer given, stored before it leaves: the answer itself (``response``, what a
repeated request gets), what decided it (rule base version and checksum, model name,
version and score, feature set; ``degraded`` with its reason when the model had no say),
the challenger's shadow score, and the latency."""

rule_executions = Table(
    "rule_executions",
    metadata,
    Column("settlement_id", ID, nullable=False),
    Column("rule_id", String(64), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("micros", Integer, nullable=False),
    Column("error", Text, nullable=True),
    PrimaryKeyConstraint("settlement_id", "rule_id"),
)
"""Every rule run on every decided settlement: hit, no hit or error, and how long it took."""

blacklist = Table(
    "blacklist",
    metadata,
    Column("institution_id", ID, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("added_at", UTCDateTime(), nullable=False),
)
"""Institutions whose settlements the ``blacklisted_institution`` rules catch."""

reversals = Table(
    "reversals",
    metadata,
    Column("settlement_id", ID, primary_key=True),
    Column("reversed_at", UTCDateTime(), nullable=False),
    Column("released_codes", Integer, nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
)


watchlist = Table(
    "watchlist",
    metadata,
    Column("entity_type", String(16), nullable=False),
    Column("entity_id", ID, nullable=False),
    Column("pattern", String(32), nullable=False),
    Column("scope", ID, nullable=False),
    Column("score", Numeric(6, 4), nullable=False),
    Column("flag_id", String(32), nullable=False),
    Column("evidence", Text, nullable=False),
    Column("screened_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("entity_type", "entity_id", "pattern", "scope"),
)
"""The patients and institutions the batch analyses flagged (``serve.watchlist``)."""
