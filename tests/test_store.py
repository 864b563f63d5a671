"""The store: migrations match the tables, and loading a history is idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, func, select
from test_trace_checks import SCENARIOS, write_history

from serve.loading import load_folder
from serve.store import alembic_config
from traceability.ledger import DrugLine, settle_codes
from traceability.store import drugs, ledger_codes, ledger_entries, stock_events


def test_the_migrations_build_exactly_the_tables_the_code_declares(store_url: str) -> None:
    command.check(alembic_config(store_url))  # raises if autogenerate would find a difference


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (drugs, ledger_codes, ledger_entries, stock_events)
        }


def test_loading_a_history_twice_changes_nothing_and_the_scorer_sees_it(
    store_url: str, store: Engine, tmp_path: Path
) -> None:
    scenario = SCENARIOS[0]  # S1 sold C1, reversed; S2 rejected; S3 sold it again; S4 rejected
    write_history(tmp_path, scenario)
    first = load_folder(tmp_path, store_url)
    assert (first.drugs, first.ledger_entries) == (3, 2)  # S1 (released) and S3
    after_first = counts(store)
    load_folder(tmp_path, store_url)
    assert counts(store) == after_first
    with store.connect() as conn:
        released = conn.execute(
            select(ledger_entries.c.settlement_id, ledger_entries.c.released_at.is_not(None))
        ).all()
    assert sorted(released) == [("S1", True), ("S3", False)]
    pack = scenario.sales[0].lines[0][2][0]
    with store.begin() as conn:  # S3 holds the pack: selling it again online is a duplicate
        hits = settle_codes(
            conn,
            settlement_id="S9",
            institution_id="I1",
            settled_at=scenario.sales[-1].at,
            lines=[DrugLine(1, "D1", 30, 1, False, (pack,))],  # type: ignore[arg-type]
        )
    assert [h.pattern.value for h in hits] == ["duplicate_trace_code"]
    assert hits[0].earlier_settlements == ("S3",)


@pytest.mark.parametrize("scenario", SCENARIOS[:3], ids=lambda s: s.name)
def test_loaded_balances_equal_the_sum_of_unreleased_entries(
    scenario: object, store_url: str, store: Engine, tmp_path: Path
) -> None:
    write_history(tmp_path, scenario)  # type: ignore[arg-type]
    load_folder(tmp_path, store_url)
    with store.connect() as conn:
        balances = {
            r.canonical_code: float(r.full_units + r.split_units)
            for r in conn.execute(select(ledger_codes))
        }
        outstanding: dict[str, float] = {}
        for r in conn.execute(select(ledger_entries).where(ledger_entries.c.released_at.is_(None))):
            outstanding[r.canonical_code] = outstanding.get(r.canonical_code, 0.0) + float(r.units)
    assert {c: v for c, v in balances.items() if v} == outstanding


def test_a_loaded_settlement_scored_again_is_judged_without_its_own_codes(
    store_url: str, store: Engine, tmp_path: Path
) -> None:
    scenario = SCENARIOS[1]  # split sales S1 (10) and S2 (20) of one pack of 30, then S3 (5)
    write_history(tmp_path, scenario)
    load_folder(tmp_path, store_url)
    before = counts(store)
    s2 = scenario.sales[1]
    drug, quantity, codes, split = s2.lines[0]
    line = DrugLine(1, drug, quantity, 1, split, tuple(codes))  # type: ignore[arg-type]
    with store.begin() as conn:
        hits = settle_codes(
            conn, settlement_id="S2", institution_id="I1", settled_at=s2.at, lines=[line]
        )
    assert hits == []  # S2 within the pack, as when it happened; not a split overrun of itself
    assert counts(store) == before
    with store.connect() as conn:
        balance = conn.execute(select(ledger_codes.c.split_units)).scalars().all()
    assert [float(b) for b in balance if b] == [30.0]  # S1 10 + S2 20, unchanged


def test_a_sqlite_writer_waits_for_the_lock_then_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction begun while another process writes waits for it (retrying BEGIN
    IMMEDIATE) and goes on when the lock is free; past ``BUSY_SECONDS`` it fails with the
    store's OperationalError (the scorer answers 503), not a bare sqlite3 error."""
    import sqlite3
    import threading

    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from serve import store as serve_store

    path = tmp_path / "store.db"
    engine = serve_store.create_store_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
        with engine.begin() as conn:  # waits ~0.3 s for the other writer
            conn.execute(text("INSERT INTO t VALUES (1)"))
        monkeypatch.setattr(serve_store, "BUSY_SECONDS", 0.2)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="locked"), engine.begin():
            pass
        other.execute("ROLLBACK")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1
    finally:
        other.close()
        engine.dispose()
