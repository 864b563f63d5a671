"""the watch list: patients and institutions flagged by the batch analyses

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 21:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import traceability.store

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watchlist",
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("pattern", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Numeric(precision=6, scale=4), nullable=False),
        sa.Column("flag_id", sa.String(length=32), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("screened_at", traceability.store.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("entity_type", "entity_id", "pattern", "scope"),
    )


def downgrade() -> None:
    op.drop_table("watchlist")
