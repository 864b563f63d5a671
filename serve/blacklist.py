"""The black list (黑名单): institutions whose settlements ``blacklisted_institution`` rules catch.

Kept in the store; managed with ``fundguard blacklist``; read by the scorer for every
settlement and by ``fundguard screen`` for a history.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Engine, bindparam, delete, select
from sqlalchemy.exc import OperationalError, ProgrammingError

from serve.tables import blacklist

LISTED: Final = select(blacklist.c.institution_id).where(
    blacklist.c.institution_id == bindparam("institution")
)
"""The institution, if it is listed (bind ``institution``): what the scorer reads."""


def add(engine: Engine, institution_id: str, reason: str) -> bool:
    """List an institution; False if it was listed already (its reason stays)."""
    with engine.begin() as conn:
        if conn.execute(
            select(blacklist.c.institution_id).where(blacklist.c.institution_id == institution_id)
        ).first():
            return False
        conn.execute(
            blacklist.insert().values(
                institution_id=institution_id, reason=reason, added_at=datetime.now(UTC)
            )
        )
        return True


def remove(engine: Engine, institution_id: str) -> bool:
    """Take an institution off the list; False if it was not on it."""
    with engine.begin() as conn:
        result = conn.execute(delete(blacklist).where(blacklist.c.institution_id == institution_id))
        return result.rowcount > 0


def listed(engine: Engine) -> list[tuple[str, str, datetime]]:
    """Every listed institution with its reason and when it was listed."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(blacklist.c.institution_id, blacklist.c.reason, blacklist.c.added_at).order_by(
                blacklist.c.institution_id
            )
        )
        return [(r.institution_id, r.reason, r.added_at) for r in rows]


def listed_ids(engine: Engine) -> set[str]:
    """The listed institutions; none where the store has no schema yet."""
    try:
        return {institution for institution, _, _ in listed(engine)}
    except (OperationalError, ProgrammingError):
        return set()
