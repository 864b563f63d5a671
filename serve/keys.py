"""API keys: who may call the scorer, in which role, for which regions (CONTRACT.md §6).

A key is ``fg_<key id>_<secret>``: the id finds the key's row, the secret is checked
against its SHA-256 (the secret is 32 random bytes, so a fast hash is enough; the key
itself is shown once, when it is made, and never stored). Roles: ``settlement`` (the
settlement system: scoring, reversals, trace events), ``inspector`` (cases, for the
regions of the key), ``admin`` (everything). A revoked key stops working within
``CACHE_SECONDS``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from sqlalchemy import Column, Engine, MetaData, String, Table, Text, select, update

from traceability.store import UTCDateTime

metadata: Final = MetaData()
CACHE_SECONDS: Final = 5.0

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(16), primary_key=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("regions", Text, nullable=False),
    Column("label", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
)


class Role(StrEnum):
    SETTLEMENT = "settlement"
    INSPECTOR = "inspector"
    ADMIN = "admin"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's id, role and regions (empty: every region)."""

    key_id: str
    role: Role
    regions: frozenset[str]

    def sees_region(self, region_code: str) -> bool:
        return self.role is Role.ADMIN or not self.regions or region_code in self.regions


def digest(secret: str) -> str:
    """What the store keeps of a secret (an API key, a session cookie): its SHA-256."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(engine: Engine, role: Role, regions: tuple[str, ...] = (), label: str = "") -> str:
    """Make a key and return it: the only time it is ever shown."""
    if role is Role.INSPECTOR and not regions:
        raise ValueError("an inspector's key names the regions it may see (--region)")
    for region in regions:
        if not (len(region) == 6 and region.isdigit()):
            raise ValueError(f"region {region!r} is not a 6-digit region code")
    key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(
            api_keys.insert().values(
                key_id=key_id,
                secret_sha256=digest(secret),
                role=role.value,
                regions=json.dumps(sorted(set(regions))),
                label=label,
                created_at=datetime.now(UTC),
                revoked_at=None,
            )
        )
    return f"fg_{key_id}_{secret}"


def revoke_key(engine: Engine, key_id: str) -> bool:
    with engine.begin() as conn:
        result = conn.execute(
            update(api_keys)
            .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        return result.rowcount > 0


class KeyRing:
    """Checks keys against the store, remembering each answer for ``CACHE_SECONDS``."""

    def __init__(self, engine: Engine, cache_seconds: float = CACHE_SECONDS) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._lock = threading.Lock()

    def caller(self, key: str) -> Caller | None:
        """The caller a key stands for, or None for a key that is malformed, unknown,
        wrong or revoked."""
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        caller = self._look_up(key)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now, caller)
        return caller

    def _look_up(self, key: str) -> Caller | None:
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != "fg" or not parts[1] or not parts[2]:
            return None
        _, key_id, secret = parts
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_sha256, digest(secret)):
            return None
        return Caller(key_id, Role(row.role), frozenset(json.loads(row.regions)))
