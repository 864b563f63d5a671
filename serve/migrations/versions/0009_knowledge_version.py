"""the knowledge base's version: bumped by triggers on every change of the catalog

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 12:00:00.000000

The scorer keeps the knowledge base (drugs, products, services, item reference prices) in
memory and reads this one row with every settlement: when it moved, the copy is read again.
Triggers bump it on any change of those tables, whoever makes it (``fundguard load``, a
retraining's reference prices, an administrator's SQL), so no writer can forget to.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

KNOWLEDGE_TABLES = ("drugs", "products", "services", "item_reference")


def upgrade() -> None:
    op.create_table(
        "knowledge_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO knowledge_version (id, version) VALUES (1, 1)")
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION bump_knowledge_version() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE knowledge_version SET version = version + 1 WHERE id = 1;
                RETURN NULL;
            END $$
            """
        )
        for table in KNOWLEDGE_TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_knowledge_changed"
                f" AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}"
                " FOR EACH STATEMENT EXECUTE FUNCTION bump_knowledge_version()"
            )
        return
    bump = "UPDATE knowledge_version SET version = version + 1 WHERE id = 1"
    for table in KNOWLEDGE_TABLES:  # SQLite: row triggers only
        for change in ("INSERT", "UPDATE", "DELETE"):
            name = f"{table}_knowledge_{change.lower()}d"
            op.execute(f"CREATE TRIGGER {name} AFTER {change} ON {table} BEGIN {bump}; END")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for table in KNOWLEDGE_TABLES:
            op.execute(f"DROP TRIGGER {table}_knowledge_changed ON {table}")
        op.execute("DROP FUNCTION bump_knowledge_version()")
    else:
        for table in KNOWLEDGE_TABLES:
            for change in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER {table}_knowledge_{change}d")
    op.drop_table("knowledge_version")
