"""cases for inspectors (cases, their flags and events), labels from verdicts, and the
institutions and patients of the loaded history

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import traceability.store

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "institutions",
        sa.Column("institution_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("region_code", sa.String(length=6), nullable=False),
        sa.PrimaryKeyConstraint("institution_id"),
    )
    op.create_index("ix_institutions_region_code", "institutions", ["region_code"])
    op.create_table(
        "patients",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("gender", sa.String(length=1), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=False),
        sa.Column("region_code", sa.String(length=6), nullable=False),
        sa.Column("locality_code", sa.String(length=12), nullable=True),
        sa.PrimaryKeyConstraint("patient_id"),
    )
    op.create_table(
        "cases",
        sa.Column("case_id", sa.String(length=32), nullable=False),
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("region_code", sa.String(length=6), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("patterns", sa.Text(), nullable=False),
        sa.Column("probability", sa.Numeric(precision=6, scale=4), nullable=False),
        sa.Column("amount_at_risk", sa.Numeric(precision=18, scale=2), nullable=False),
        sa.Column("priority", sa.Numeric(precision=18, scale=2), nullable=False),
        sa.Column("assignee", sa.String(length=200), nullable=True),
        sa.Column("created_at", traceability.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", traceability.store.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("case_id"),
        sa.UniqueConstraint("entity_type", "entity_id", name="uq_cases_entity"),
    )
    op.create_index("ix_cases_queue", "cases", ["status", "priority"])
    op.create_index("ix_cases_region", "cases", ["region_code"])
    op.create_table(
        "case_flags",
        sa.Column("case_id", sa.String(length=32), nullable=False),
        sa.Column("flag_id", sa.String(length=32), nullable=False),
        sa.Column("pattern", sa.String(length=32), nullable=False),
        sa.Column("score", sa.Numeric(precision=6, scale=4), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("amount_at_risk", sa.Numeric(precision=18, scale=2), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("filed_at", traceability.store.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("case_id", "flag_id"),
    )
    op.create_table(
        "case_events",
        sa.Column(
            "event_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("case_id", sa.String(length=32), nullable=False),
        sa.Column("at", traceability.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_case_events_case_id", "case_events", ["case_id"])
    op.create_table(
        "labels",
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("pattern", sa.String(length=32), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("decided_at", traceability.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("case_id", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("entity_type", "entity_id", "pattern"),
    )


def downgrade() -> None:
    op.drop_table("labels")
    op.drop_index("ix_case_events_case_id", table_name="case_events")
    op.drop_table("case_events")
    op.drop_table("case_flags")
    op.drop_index("ix_cases_region", table_name="cases")
    op.drop_index("ix_cases_queue", table_name="cases")
    op.drop_table("cases")
    op.drop_table("patients")
    op.drop_index("ix_institutions_region_code", table_name="institutions")
    op.drop_table("institutions")
