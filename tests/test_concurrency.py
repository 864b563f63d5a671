"""Settlements racing for the same packs through two scorer processes over one store.

Each pack is wanted by several settlements at once, sent by many clients spread over two
server processes: exactly one settlement wins each pack, every request gets an answer,
and the same settlement asked for at the same time from several clients is decided once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import bearer
from scorer_processes import PRODUCT, code, purchases, scorers, settlement
from sqlalchemy import func, select

from serve.store import create_store_engine
from serve.tables import decisions
from traceability.store import drugs, ledger_entries, products

PACKS = 12
RIVALS = 6  # settlements wanting each pack
CLIENTS = 16


@pytest.fixture
def headers(store_url: str) -> dict[str, str]:
    engine = create_store_engine(store_url)
    try:
        return bearer(engine, "settlement")
    finally:
        engine.dispose()


@pytest.fixture
def servers(store_url: str, tmp_path: Path) -> Iterator[list[str]]:
    engine = create_store_engine(store_url)
    with engine.begin() as conn:
        conn.execute(drugs.insert(), [{"drug_code": "D1", "generic_name": "D1", "pack_units": 24}])
        conn.execute(products.insert(), [{"product_code": PRODUCT, "drug_code": "D1"}])
    engine.dispose()
    with scorers(store_url, tmp_path) as urls:
        yield urls


@pytest.mark.slow
def test_exactly_one_settlement_wins_each_pack(
    servers: list[str], store_url: str, headers: dict[str, str]
) -> None:
    events = purchases(range(PACKS))
    assert (
        httpx.post(f"{servers[0]}/v1/trace-events", json=events, headers=headers).status_code == 200
    )
    requests = [(f"S{pack}-{rival}", pack) for rival in range(RIVALS) for pack in range(PACKS)]

    def send(i: int) -> tuple[str, int, str]:
        settlement_id, pack = requests[i]
        with httpx.Client(base_url=servers[i % 2], timeout=60, headers=headers) as client:
            answer = client.post("/v1/score", json=settlement(settlement_id, pack))
        assert answer.status_code == 200, answer.text
        return settlement_id, pack, answer.json()["decision"]

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(send, range(len(requests))))

    winners = Counter(pack for _, pack, decision in results if decision == "pass")
    assert winners == dict.fromkeys(range(PACKS), 1)
    assert Counter(d for *_, d in results) == {"pass": PACKS, "reject": PACKS * (RIVALS - 1)}
    engine = create_store_engine(store_url)
    with engine.connect() as conn:
        per_code = Counter(conn.execute(select(ledger_entries.c.canonical_code)).scalars())
        assert per_code == {code(n): 1 for n in range(PACKS)}
        assert conn.execute(select(func.count()).select_from(decisions)).scalar() == len(requests)
    engine.dispose()


@pytest.mark.slow
def test_one_settlement_asked_for_at_once_is_decided_once(
    servers: list[str], store_url: str, headers: dict[str, str]
) -> None:
    events = purchases(range(1))
    httpx.post(f"{servers[0]}/v1/trace-events", json=events, headers=headers)

    def send(i: int) -> bytes:
        with httpx.Client(base_url=servers[i % 2], timeout=60, headers=headers) as client:
            return client.post("/v1/score", json=settlement("SAME", 0)).content

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = set(pool.map(send, range(CLIENTS * 2)))
    assert len(answers) == 1
    assert b'"decision":"pass"' in answers.pop()
    engine = create_store_engine(store_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(decisions)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(ledger_entries)).scalar() == 1
    engine.dispose()
