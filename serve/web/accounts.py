"""Accounts of the inspectors' web pages and their server-side sessions.

- **Accounts** (``users``): an inspector sees the cases of its regions, an admin every
  case. Passwords are hashed with Argon2 (pwdlib's recommended hasher); a hash made with
  weaker parameters than today's is replaced at the next sign-in. A disabled account
  signs in no more and its sessions end at once.
- **Sessions** (``user_sessions``): signing in makes a random cookie value; the store
  keeps only its SHA-256, the time it ends (``session_minutes`` after signing in: the
  server refuses it after that whatever the browser keeps), the token every form of the
  session must carry (CSRF), and the cases whose patient identifiers were revealed.
  Signing out deletes the row, so the cookie is worth nothing after it.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pwdlib import PasswordHash
from sqlalchemy import Engine, delete, insert, select, update

from serve.keys import Caller, Role, digest
from serve.tables import user_sessions, users

USERNAME: Final = re.compile(r"^[A-Za-z0-9_.-]{2,64}$")
MIN_PASSWORD: Final = 8
ROLES: Final = (Role.INSPECTOR, Role.ADMIN)


class AccountError(ValueError):
    """A bad account request (the message names the field and the reason)."""


@functools.cache
def _hasher() -> PasswordHash:
    return PasswordHash.recommended()


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the account does not exist, so that an unknown name
    takes as long to refuse as a wrong password."""
    return _hasher().hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class User:
    username: str
    display_name: str
    role: Role
    regions: frozenset[str]
    active: bool
    created_at: datetime

    @property
    def caller(self) -> Caller:
        """What the case service asks of a caller: its id (the actor of case events), role
        and regions."""
        return Caller(self.username, self.role, self.regions)

    def sees_region(self, region_code: str) -> bool:
        return self.caller.sees_region(region_code)


@dataclass(frozen=True)
class Session:
    session_id: str
    """The SHA-256 of the cookie value."""
    user: User
    csrf_token: str
    created_at: datetime
    expires_at: datetime
    revealed: frozenset[str]
    """Cases whose patient identifiers were revealed in this session."""


def _user(row: Any) -> User:
    return User(
        username=row.username,
        display_name=row.display_name,
        role=Role(row.role),
        regions=frozenset(json.loads(row.regions)),
        active=bool(row.active),
        created_at=row.created_at,
    )


def create_user(
    engine: Engine,
    username: str,
    password: str,
    *,
    role: Role,
    regions: tuple[str, ...] = (),
    display_name: str = "",
) -> User:
    """Make an account; :class:`AccountError` naming the field for bad input or a name
    already taken."""
    if not USERNAME.match(username):
        raise AccountError(
            f"username {username!r}: 2-64 letters, digits, '.', '_' or '-' (用户名格式不对)"
        )
    if role not in ROLES:
        raise AccountError(f"role {role.value!r}: inspector or admin")
    if role is Role.INSPECTOR and not regions:
        raise AccountError("region: an inspector's account names the regions it may see")
    for region in regions:
        if not (len(region) == 6 and region.isdigit()):
            raise AccountError(f"region {region!r}: not a 6-digit region code")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password: at least {MIN_PASSWORD} characters (密码太短)")
    display_name = display_name.strip() or username
    if len(display_name) > 200:
        raise AccountError("name: at most 200 characters")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        if conn.execute(select(users.c.username).where(users.c.username == username)).first():
            raise AccountError(f"username {username!r}: taken already")
        conn.execute(
            insert(users).values(
                username=username,
                display_name=display_name,
                password_hash=_hasher().hash(password),
                role=role.value,
                regions=json.dumps(sorted(set(regions))),
                active=True,
                created_at=now,
            )
        )
    return User(username, display_name, role, frozenset(regions), True, now)


def list_users(engine: Engine) -> list[User]:
    with engine.connect() as conn:
        return [_user(r) for r in conn.execute(select(users).order_by(users.c.username))]


def disable_user(engine: Engine, username: str) -> bool:
    """Disable an account and end its sessions; False if there is no active one."""
    with engine.begin() as conn:
        done = conn.execute(
            update(users)
            .where(users.c.username == username, users.c.active.is_(True))
            .values(active=False)
        ).rowcount
        conn.execute(delete(user_sessions).where(user_sessions.c.username == username))
    return bool(done)


def sign_in(engine: Engine, username: str, password: str, *, minutes: int) -> str | None:
    """A new session's cookie value for the right password of an active account, else
    None (an unknown name, a wrong password and a disabled account are told apart by no
    one). Sessions that have ended are cleared on the way."""
    with engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.username == username)).first()
    stored = row.password_hash if row is not None else _dummy_hash()
    right, rehashed = _hasher().verify_and_update(password, stored)
    if row is None or not right or not row.active:
        return None
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        if rehashed is not None:
            conn.execute(
                update(users).where(users.c.username == username).values(password_hash=rehashed)
            )
        conn.execute(delete(user_sessions).where(user_sessions.c.expires_at <= now))
        conn.execute(
            insert(user_sessions).values(
                session_id=digest(token),
                username=username,
                csrf_token=secrets.token_urlsafe(32),
                created_at=now,
                expires_at=now + timedelta(minutes=minutes),
                revealed="",
            )
        )
    return token


def session_of(engine: Engine, token: str | None) -> Session | None:
    """The live session of a cookie value: None when there is none, it has ended, or its
    account was disabled."""
    if not token or len(token) > 100:
        return None
    s = user_sessions.c
    with engine.connect() as conn:
        row = conn.execute(
            select(user_sessions, users)
            .join_from(user_sessions, users, s.username == users.c.username)
            .where(s.session_id == digest(token))
        ).first()
    if row is None or not row.active or row.expires_at <= datetime.now(UTC):
        return None
    return Session(
        session_id=row.session_id,
        user=_user(row),
        csrf_token=row.csrf_token,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revealed=frozenset(c for c in row.revealed.split("|") if c),
    )


def sign_out(engine: Engine, token: str | None) -> None:
    if token:
        with engine.begin() as conn:
            conn.execute(delete(user_sessions).where(user_sessions.c.session_id == digest(token)))


def remember_reveal(engine: Engine, session: Session, case_id: str) -> None:
    """Show the patient identifiers of ``case_id`` for the rest of this session."""
    if case_id in session.revealed:
        return
    with engine.begin() as conn:
        current = conn.execute(
            select(user_sessions.c.revealed).where(user_sessions.c.session_id == session.session_id)
        ).scalar()
        if current is None:
            return
        revealed = {c for c in str(current).split("|") if c} | {case_id}
        conn.execute(
            update(user_sessions)
            .where(user_sessions.c.session_id == session.session_id)
            .values(revealed="|".join(sorted(revealed)))
        )
