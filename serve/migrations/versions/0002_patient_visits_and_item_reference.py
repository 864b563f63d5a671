"""patient visits (one row per settlement, with its amounts) and item reference prices

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 21:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import traceability.store

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patient_visits",
        sa.Column("settlement_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("institution_id", sa.String(length=64), nullable=False),
        sa.Column("settled_at", traceability.store.UTCDateTime(timezone=True), nullable=False),
        sa.Column("visit_type", sa.String(length=16), nullable=True),
        sa.Column("total_amount", sa.Numeric(precision=18, scale=2), nullable=True),
        sa.Column("fund_paid", sa.Numeric(precision=18, scale=2), nullable=True),
        sa.Column("reversed_at", traceability.store.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("settlement_id"),
    )
    with op.batch_alter_table("patient_visits", schema=None) as batch_op:
        batch_op.create_index(
            "ix_patient_visits_patient", ["patient_id", "settled_at"], unique=False
        )
    op.create_table(
        "item_reference",
        sa.Column("item_type", sa.String(length=16), nullable=False),
        sa.Column("item_code", sa.String(length=64), nullable=False),
        sa.Column("ref_unit_price", sa.Numeric(precision=18, scale=4), nullable=False),
        sa.Column("ref_quantity", sa.Numeric(precision=14, scale=3), nullable=False),
        sa.Column("n_lines", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("item_type", "item_code"),
    )
    # settlements recorded before this revision: their visits, without amounts (the
    # history holds no amounts); reloading the history does not add them again
    op.execute(
        """
        INSERT INTO patient_visits (settlement_id, patient_id, institution_id, settled_at,
                                    visit_type, total_amount, fund_paid, reversed_at)
        SELECT settlement_id, min(patient_id), min(institution_id), min(settled_at),
               NULL, NULL, NULL, min(reversed_at)
        FROM patient_history GROUP BY settlement_id
        """
    )


def downgrade() -> None:
    op.drop_table("item_reference")
    with op.batch_alter_table("patient_visits", schema=None) as batch_op:
        batch_op.drop_index("ix_patient_visits_patient")
    op.drop_table("patient_visits")
