"""Many decisions for one institution at once, through two scorer processes over one
PostgreSQL store: every decision's cost reaches the institution's credit account (no
update lost), and recomputing the accounts gives what the online updates gave."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import bearer
from scorer_processes import PRODUCT, scorers, settlement
from sqlalchemy import func, select

from rules.credit import shipped_scheme
from serve import credit
from serve.store import create_store_engine, upgrade
from serve.tables import credit_accounts, credit_events, decisions
from traceability.store import drugs, products

SETTLEMENTS = 80
CLIENTS = 16


@pytest.fixture
def pg_store(postgres_url: str) -> str:
    upgrade(postgres_url)
    engine = create_store_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(drugs.insert(), [{"drug_code": "D1", "generic_name": "D1", "pack_units": 24}])
        conn.execute(products.insert(), [{"product_code": PRODUCT, "drug_code": "D1"}])
    engine.dispose()
    return postgres_url


@pytest.fixture
def servers(pg_store: str, tmp_path: Path) -> Iterator[list[str]]:
    with scorers(pg_store, tmp_path) as urls:
        yield urls


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrent_decisions_for_one_institution_lose_no_credit_update(
    servers: list[str], pg_store: str
) -> None:
    engine = create_store_engine(pg_store)
    headers = bearer(engine, "settlement")

    def send(i: int) -> str:  # packs P001 never received: every settlement is rejected
        with httpx.Client(base_url=servers[i % 2], timeout=60, headers=headers) as client:
            answer = client.post("/v1/score", json=settlement(f"C{i}", i))
        assert answer.status_code == 200, answer.text
        return str(answer.json()["decision"])

    with ThreadPoolExecutor(CLIENTS) as pool:
        assert set(pool.map(send, range(SETTLEMENTS))) == {"reject"}
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(decisions)).scalar() == SETTLEMENTS
            account = conn.execute(
                select(credit_accounts).where(credit_accounts.c.entity_id == "P001")
            ).one()
            costs = conn.execute(
                select(func.count(), func.sum(credit_events.c.points)).where(
                    credit_events.c.entity_id == "P001"
                )
            ).one()
        assert account.events == costs[0] == SETTLEMENTS  # one event per decision, none lost
        assert account.lost == -costs[1] > 0
        online = credit.state(engine)
        credit.recompute(engine, shipped_scheme())
        assert credit.state(engine) == online
    finally:
        engine.dispose()
