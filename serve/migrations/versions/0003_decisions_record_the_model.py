"""decisions record the model: name, version, score, feature set, degraded and why, the
challenger's shadow score

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 21:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_name", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("model_version", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("model_score", sa.Numeric(precision=6, scale=4), nullable=True)
        )
        batch_op.add_column(sa.Column("feature_set", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("degraded", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("degraded_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("challenger_version", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("challenger_score", sa.Numeric(precision=6, scale=4), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        for column in (
            "challenger_score",
            "challenger_version",
            "degraded_reason",
            "degraded",
            "feature_set",
            "model_score",
            "model_version",
            "model_name",
        ):
            batch_op.drop_column(column)
