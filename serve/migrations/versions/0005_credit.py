"""credit accounts, their events and the verdicts they received; decisions keep the doctor
and the fund's share

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 22:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import traceability.store

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("doctor_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("fund_paid", sa.Numeric(precision=18, scale=2), nullable=True))
    op.create_table(
        "credit_accounts",
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("lost", sa.Integer(), nullable=False),
        sa.Column("repaired", sa.Integer(), nullable=False),
        sa.Column("restored", sa.Integer(), nullable=False),
        sa.Column("last_violation_day", sa.Integer(), nullable=True),
        sa.Column("year", sa.Integer(), nullable=True),
        sa.Column("year_points", sa.Integer(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("entity_type", "entity_id"),
    )
    op.create_table(
        "credit_events",
        sa.Column(
            "event_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("at", traceability.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("settlement_id", sa.String(length=64), nullable=True),
        sa.Column("pattern", sa.String(length=32), nullable=False),
        sa.Column("patterns", sa.Text(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("year_points", sa.Integer(), nullable=False),
        sa.Column("restored_by", sa.String(length=64), nullable=True),
        sa.Column("scheme_version", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_credit_events_account", "credit_events", ["entity_type", "entity_id"])
    op.create_index("ix_credit_events_settlement_id", "credit_events", ["settlement_id"])
    op.create_table(
        "credit_verdicts",
        sa.Column("verdict_id", sa.String(length=64), nullable=False),
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("patterns", sa.Text(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("decided_at", traceability.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("amount_at_risk", sa.Numeric(precision=18, scale=2), nullable=False),
        sa.Column("settlement_ids", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("recorded_at", traceability.store.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("verdict_id"),
    )


def downgrade() -> None:
    op.drop_table("credit_verdicts")
    op.drop_index("ix_credit_events_settlement_id", table_name="credit_events")
    op.drop_index("ix_credit_events_account", table_name="credit_events")
    op.drop_table("credit_events")
    op.drop_table("credit_accounts")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("fund_paid")
        batch.drop_column("doctor_id")
