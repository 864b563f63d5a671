"""the verdicts behind the cases' calibrated probabilities (per pattern and score bin)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import traceability.store

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calibration",
        sa.Column("pattern", sa.String(length=32), nullable=False),
        sa.Column("bin_low", sa.Numeric(precision=6, scale=4), nullable=False),
        sa.Column("bin_high", sa.Numeric(precision=6, scale=4), nullable=False),
        sa.Column("verdicts", sa.Integer(), nullable=False),
        sa.Column("confirmed", sa.Integer(), nullable=False),
        sa.Column("prior_strength", sa.Numeric(precision=8, scale=2), nullable=False),
        sa.Column("fitted_at", traceability.store.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pattern", "bin_low"),
    )


def downgrade() -> None:
    op.drop_table("calibration")
