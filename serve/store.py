"""The state store: one SQLAlchemy engine per process, the schema by Alembic migrations.

SQLite is the embedded default: WAL journal, ``synchronous=NORMAL``, a busy timeout, and
every transaction opened with ``BEGIN IMMEDIATE`` so that writers serialise at the start of
a transaction instead of failing half-way (two workers racing for one code: the second
waits, then sees the first's units). PostgreSQL is the production store: the ledger rows a
settlement touches are created, locked and read by one ``INSERT … ON CONFLICT DO UPDATE …
RETURNING``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from features import store as features_store
from serve import keys as serve_keys
from serve import tables as serve_tables
from traceability import store as traceability_store

METADATA: tuple[MetaData, ...] = (
    traceability_store.metadata,
    features_store.metadata,
    serve_tables.metadata,
    serve_keys.metadata,
)
"""Every table the store holds, by the layer that owns it (Alembic compares against these)."""


WAL_LIMIT_BYTES = 64 * 1024 * 1024
"""A SQLite WAL is truncated back to this size once checkpointed."""


def create_store_engine(
    url: str, *, pool_size: int = 5, background_checkpoints: bool = False
) -> Engine:
    """An engine for the store at ``url``, tuned for the scorer's short transactions.
    ``background_checkpoints`` (SQLite): no commit checkpoints the WAL; the caller runs
    :class:`Checkpoints` beside it (the scorer does)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            if background_checkpoints:
                cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            begin_immediate(conn.connection.dbapi_connection)

        return engine
    # No ``pool_pre_ping``: it cost a round trip on every checkout, one a settlement. A
    # connection the server dropped (a restart) fails its first statement instead; the
    # error invalidates it (``traceability.store.driver_cursor``, or SQLAlchemy's own),
    # the request is answered 503 with nothing decided, and the retry gets a fresh one.
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size)


log = logging.getLogger("fundguard.store")

BUSY_SECONDS = 30.0
"""How long a SQLite transaction waits for another writer before it fails."""


def begin_immediate(dbapi_connection: Any) -> None:
    """``BEGIN IMMEDIATE``, tried again every 0.2-2 ms while another process holds the
    write lock, for up to :data:`BUSY_SECONDS`. SQLite's own busy handler sleeps 1, 2, 5 …
    up to 100 ms between tries, and meanwhile a worker with requests queued takes the lock
    again and again: with two workers at 16 clients one settlement in a hundred waited
    more than a second."""
    dbapi_connection.execute("PRAGMA busy_timeout=0")
    try:
        deadline, pause = time.monotonic() + BUSY_SECONDS, 0.0002
        while True:
            try:
                dbapi_connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
            time.sleep(pause)
            pause = min(pause * 1.5, 0.002)
    finally:
        dbapi_connection.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")


class Checkpoints:
    """Checkpoints of a SQLite store's WAL in a background thread, every ``every`` seconds,
    for an engine made with ``background_checkpoints``.

    SQLite checkpoints the WAL in the commit that takes it past 1,000 pages: that commit
    copies the pages into the database file and waits for two fsyncs. A settlement writes
    some forty pages (random keys in the ledger, the history and their indexes), so every
    twenty-fifth settlement paid for a checkpoint: 0.75 ms a commit on average, the largest
    single cost of a settlement once its statements were few
    (``benchmarks/scoring_path.py --profile``). Here the copying and the fsyncs happen
    beside the requests. Checkpoints are passive (they wait for no reader or writer); a
    second worker's checkpointer running at the same moment makes one of them a no-op.
    Nothing to do on PostgreSQL.
    """

    def __init__(self, engine: Engine, every: float = 0.25) -> None:
        self.engine = engine
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Checkpoints:
        if self.engine.dialect.name == "sqlite" and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="fundguard-checkpoints", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.checkpoint()

    def checkpoint(self) -> None:
        """One passive checkpoint now."""
        if self.engine.dialect.name != "sqlite":
            return
        raw = self.engine.raw_connection()
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").close()
        except sqlite3.OperationalError as exc:  # busy: another worker is checkpointing
            log.debug("checkpoint skipped: %s", exc)
        finally:
            raw.close()

    def stop(self) -> None:
        """Stop the thread, after a last checkpoint."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.checkpoint()


def store_exists(url: str) -> bool:
    """Whether there is a store at ``url`` to read (a SQLite file is made by connecting)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return bool(parsed.database) and Path(str(parsed.database)).is_file()
    return True


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("serve") / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the store at ``url`` to ``revision`` (the newest by default)."""
    command.upgrade(alembic_config(url), revision)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction: committed if the block ends normally, rolled back otherwise."""
    with engine.begin() as conn:
        yield conn
