"""The store tables that the scorer owns: decisions (the audit of every answer) and reversals."""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from features.store import MONEY
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
    Column("doctor_id", ID, nullable=True),
    Column("fund_paid", MONEY, nullable=True),
)
"""Every answer given, stored before it leaves: the answer itself (``response``, what a
repeated request gets), what decided it (rule base version and checksum, model name,
version and score, feature set; ``degraded`` with its reason when the model had no say),
the challenger's shadow score, and the latency; the settlement's doctor and the fund's
share (``fund_paid``) are kept for the credit accounts (``serve.credit``), and the grades
used are in the answer (its ``credit`` field)."""

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


credit_accounts = Table(
    "credit_accounts",
    metadata,
    Column("entity_type", String(16), nullable=False),
    Column("entity_id", ID, nullable=False),
    Column("lost", Integer, nullable=False),
    Column("repaired", Integer, nullable=False),
    Column("restored", Integer, nullable=False),
    Column("last_violation_day", Integer, nullable=True),
    Column("year", Integer, nullable=True),
    Column("year_points", Integer, nullable=False),
    Column("events", Integer, nullable=False),
    PrimaryKeyConstraint("entity_type", "entity_id"),
)
"""The credit account (医保信用) of an institution, a patient or a doctor (``serve.credit``):
points lost and not yet repaired, points a clean record repaired (banked when a new cost
came) and points dismissed cases gave back, the local day number of the latest cost, the
doctor's yearly record (year and points), and how many events moved it. An entity without
a row has the scheme's starting score."""

credit_events = Table(
    "credit_events",
    metadata,
    Column(
        "event_id",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("entity_type", String(16), nullable=False),
    Column("entity_id", ID, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("source", ID, nullable=False),
    Column("settlement_id", ID, nullable=True),
    Column("pattern", String(32), nullable=False),
    Column("patterns", Text, nullable=False),
    Column("points", Integer, nullable=False),
    Column("year_points", Integer, nullable=False),
    Column("restored_by", ID, nullable=True),
    Column("scheme_version", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_credit_events_account", "entity_type", "entity_id"),
    Index("ix_credit_events_settlement_id", "settlement_id"),
)
"""Every event that moved a credit account, in words: when it counts from (the settlement's
or the verdict's time), what it was (``rejected``, ``flagged``, ``confirmed``,
``dismissed``), its source (a settlement or a verdict), the pattern that decided it, the
points (negative: a cost), the doctor's record points, and the dismissed verdict that gave
a flag's cost back (``restored_by``)."""

credit_verdicts = Table(
    "credit_verdicts",
    metadata,
    Column("verdict_id", ID, primary_key=True),
    Column("entity_type", String(16), nullable=False),
    Column("entity_id", ID, nullable=False),
    Column("patterns", Text, nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("decided_at", UTCDateTime(), nullable=False),
    Column("amount_at_risk", MONEY, nullable=False),
    Column("settlement_ids", Text, nullable=False),
    Column("note", Text, nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
)
"""The inspectors' verdicts as credit received them (``serve.credit.record_verdict``): what
``fundguard credit recompute`` replays beside the decisions."""


# --- institutions and patients (``fundguard load``), cases, labels (``serve.cases``) ---------

institutions = Table(
    "institutions",
    metadata,
    Column("institution_id", ID, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("level", Integer, nullable=False),
    Column("region_code", String(6), nullable=False, index=True),
)
"""The designated institutions (定点医药机构) of the loaded history: what region a case, a
decision or an inspector's question belongs to."""

patients = Table(
    "patients",
    metadata,
    Column("patient_id", ID, primary_key=True),
    Column("gender", String(1), nullable=False),
    Column("birth_date", Date, nullable=False),
    Column("region_code", String(6), nullable=False),
    Column("locality_code", String(12), nullable=True),
)
"""The insured persons (参保人) of the loaded history: a patient's case belongs to the region
where the patient is insured."""

cases = Table(
    "cases",
    metadata,
    Column("case_id", String(32), primary_key=True),
    Column("entity_type", String(16), nullable=False),
    Column("entity_id", ID, nullable=False),
    Column("region_code", String(6), nullable=False),
    Column("status", String(16), nullable=False),
    Column("patterns", Text, nullable=False),
    Column("probability", Numeric(6, 4), nullable=False),
    Column("amount_at_risk", MONEY, nullable=False),
    Column("priority", MONEY, nullable=False),
    Column("assignee", String(200), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("entity_type", "entity_id", name="uq_cases_entity"),
    Index("ix_cases_queue", "status", "priority"),
    Index("ix_cases_region", "region_code"),
)
"""One case per flagged entity (a settlement, a patient, an institution, a group): its
region, where it stands in the workflow, the patterns of its flags (``|``-joined), and its
priority in the inspectors' queue: the expected loss, probability x amount at risk (yuan)."""

case_flags = Table(
    "case_flags",
    metadata,
    Column("case_id", String(32), nullable=False),
    Column("flag_id", String(32), nullable=False),
    Column("pattern", String(32), nullable=False),
    Column("score", Numeric(6, 4), nullable=False),
    Column("action", String(8), nullable=False),
    Column("amount_at_risk", MONEY, nullable=False),
    Column("evidence", Text, nullable=False),
    Column("source", String(8), nullable=False),
    Column("filed_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("case_id", "flag_id"),
)
"""The flags a case gathers, from batch screening or from online decisions; a flag id (its
pattern and entity) is filed once, so a second screening adds nothing twice."""

case_events = Table(
    "case_events",
    metadata,
    Column(
        "event_id",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("case_id", String(32), nullable=False, index=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("detail", Text, nullable=False),
)
"""A case's audit trail: filed, flag added, assigned, status changed, note, verdict,
reopened; who (a key id, ``screening`` or ``scorer``) and when."""

labels = Table(
    "labels",
    metadata,
    Column("entity_type", String(16), nullable=False),
    Column("entity_id", ID, nullable=False),
    Column("pattern", String(32), nullable=False),
    Column("label", Integer, nullable=False),
    Column("decided_at", UTCDateTime(), nullable=False),
    Column("case_id", String(32), nullable=False),
    PrimaryKeyConstraint("entity_type", "entity_id", "pattern"),
)
"""The inspectors' verdicts as labels (1 confirmed, 0 dismissed), one per entity and
pattern (the latest verdict wins): the contract's ``labels`` table for retraining."""

calibration = Table(
    "calibration",
    metadata,
    Column("pattern", String(32), nullable=False),
    Column("bin_low", Numeric(6, 4), nullable=False),
    Column("bin_high", Numeric(6, 4), nullable=False),
    Column("verdicts", Integer, nullable=False),
    Column("confirmed", Integer, nullable=False),
    Column("prior_strength", Numeric(8, 2), nullable=False),
    Column("fitted_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("pattern", "bin_low"),
)
"""The verdicts behind the cases' probabilities (``serve.cases.recalibrate``): per pattern
and score bin (flags scoring from ``bin_low`` on), how many flags got a verdict and how
many were confirmed, and the Beta prior's strength (pseudo-verdicts at the flag's score)."""


# --- inspectors' and admins' accounts for the web pages (``serve.web.accounts``) ------------

users = Table(
    "users",
    metadata,
    Column("username", String(64), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("regions", Text, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)
"""Who may sign in to the inspectors' pages (``fundguard users create``): a password hash
(Argon2), a role (``inspector``: the cases of its ``regions``, a JSON list; ``admin``:
every case) and whether the account is active (a disabled one signs in no more, and its
sessions end)."""

user_sessions = Table(
    "user_sessions",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("username", String(64), nullable=False, index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("revealed", Text, nullable=False),
)
"""The signed-in sessions of the web pages, kept on the server so that signing out and
expiry are real: the SHA-256 of the random cookie value (never the value itself), whose
session it is, the token every form must carry (CSRF), when it ends, and the cases whose
patient identifiers the inspector asked to see in this session (``|``-joined)."""
