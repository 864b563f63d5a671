"""The scorer's hot path: merged reads give what their parts give alone, a list binds as one
statement text, settlements racing for overlapping packs on many connections neither
deadlock nor share a pack, and a settlement costs a bounded number of statements."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, insert, select

from serve import scoring
from serve.schemas import SettlementIn
from serve.tables import decisions
from tests.scoring_requests import settlement
from traceability.checks import StockEvent
from traceability.ledger import StockEventIn, record_stock_events
from traceability.store import (
    MergedRead,
    drugs,
    ledger_codes,
    ledger_entries,
    one_of,
    products,
    stock_events,
)

AT = datetime(2025, 2, 1, 1, 0, tzinfo=UTC)


def code(n: int) -> str:
    return f"8100001{n:09d}0000"


def _catalog(store: Engine) -> None:
    with store.begin() as conn:
        conn.execute(
            insert(drugs),
            [
                {"drug_code": "D1", "generic_name": "D1", "pack_units": 24,
                 "max_units_per_day": Decimal("2.5"), "high_value": True},
                {"drug_code": "D2", "generic_name": "D2", "pack_units": 10,
                 "max_units_per_day": None, "high_value": None},
            ],
        )  # fmt: skip
        conn.execute(insert(products), [{"product_code": "8100001", "drug_code": "D1"}])
        record_stock_events(
            conn, [StockEventIn(code(n), StockEvent.PURCHASE, "P001", AT) for n in range(40)]
        )


def test_a_merged_read_gives_each_part_as_it_alone_gives_it(store: Engine) -> None:
    _catalog(store)
    parts: dict[str, Any] = {
        "drug": select(drugs.c.drug_code, drugs.c.pack_units, drugs.c.max_units_per_day).where(
            drugs.c.drug_code == "D1"
        ),
        "flag": select(drugs.c.drug_code, drugs.c.high_value),
        "stock": select(stock_events.c.canonical_code, stock_events.c.event_at).where(
            stock_events.c.canonical_code == code(3)
        ),
        "none": select(products.c.product_code).where(products.c.product_code == "nothing"),
    }
    merged = MergedRead(parts)
    with store.connect() as conn:
        read = merged.read(conn, {})
        for name, part in parts.items():
            alone = [tuple(r) for r in conn.execute(part)]
            assert sorted(map(tuple, read[name]), key=repr) == sorted(alone, key=repr), name
    (drug,) = read["drug"]
    assert drug.max_units_per_day == Decimal("2.500")  # the column's own type and scale
    assert drug.pack_units == 24
    (stock,) = read["stock"]
    assert stock.event_at == AT
    assert stock.event_at.tzinfo is not None
    assert read["none"] == []
    assert {r.drug_code: r.high_value for r in read["flag"]} == {"D1": True, "D2": None}


@pytest.mark.parametrize("wanted", [[], [code(1)], [code(n) for n in range(0, 40, 3)]])
def test_one_of_is_in_the_list_whatever_its_length(store: Engine, wanted: list[str]) -> None:
    _catalog(store)
    with store.connect() as conn:
        statement = select(stock_events.c.canonical_code).where(
            one_of(stock_events.c.canonical_code, "codes", conn.dialect.name)
        )
        found = conn.execute(statement, {"codes": wanted}).scalars().all()
    assert sorted(found) == sorted(wanted)


def test_racing_settlements_with_overlapping_packs_never_deadlock_nor_share_one(
    store: Engine,
) -> None:
    """Each settlement wants 3 of 8 packs, listed in a random order; 40 of them race on 8
    connections. Every one is answered, the codes are locked in one order (no deadlock),
    and each pack goes to at most one settlement that was not rejected, which holds all
    three of its packs."""
    _catalog(store)
    shuffle = random.Random(7)
    bodies = []
    for i in range(40):
        packs = shuffle.sample(range(8), 3)
        bodies.append(SettlementIn.model_validate(settlement(f"R{i}", *map(code, packs))))

    def score(body: SettlementIn) -> tuple[str, str]:
        return body.settlement_id, scoring.score(store, body, b"{}").decision

    with ThreadPoolExecutor(8) as pool:
        decided = dict(pool.map(score, bodies))
    assert len(decided) == 40
    paid = [b for b in bodies if decided[b.settlement_id] != "reject"]  # pass or review
    assert paid
    assert "reject" in decided.values()
    held = Counter(c for b in paid for c in b.items[0].trace_codes or ())
    assert max(held.values()) == 1
    with store.connect() as conn:
        entries = Counter(conn.execute(select(ledger_entries.c.canonical_code)).scalars())
        assert entries == held
        rows = conn.execute(select(ledger_codes.c.canonical_code, ledger_codes.c.full_units))
        units = {row.canonical_code: row.full_units for row in rows}
        assert {c: Decimal(u) for c, u in units.items() if u} == dict.fromkeys(held, Decimal(24))
        assert conn.execute(select(func.count()).select_from(decisions)).scalar() == 40


def test_a_settlement_of_ten_coded_lines_costs_a_bounded_number_of_statements(
    store: Engine,
) -> None:
    _catalog(store)
    codes = [f"8100003{n:09d}0000" for n in range(10)]  # D3: no limit, nothing to review
    with store.begin() as conn:
        conn.execute(insert(drugs), [{"drug_code": "D3", "generic_name": "D3", "pack_units": 24}])
        conn.execute(insert(products), [{"product_code": "8100003", "drug_code": "D3"}])
        record_stock_events(conn, [StockEventIn(c, StockEvent.PURCHASE, "P001", AT) for c in codes])
    body = settlement("C1", codes[0], drug="D3")
    body["items"] = [
        {**body["items"][0], "line_no": k + 1, "quantity": 24, "trace_codes": [c]}
        for k, c in enumerate(codes)
    ]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    scoring.score(store, SettlementIn.model_validate(settlement("C0", code(0))), b"{}")  # warm
    event.listen(store, "before_cursor_execute", count)
    try:
        first = scoring.score(store, SettlementIn.model_validate(body), b"{}")
        paid = len(statements)
        again = scoring.score(store, SettlementIn.model_validate(body), b"{}")
    finally:
        event.remove(store, "before_cursor_execute", count)
    assert first.decision == "pass"
    assert again.replayed
    assert again.body == first.body
    # one read (the knowledge base held in memory: its version only), BEGIN (SQLite), the
    # lock, 6 writes; 31 before the merged reads, 13 before the one read
    assert paid <= 9, statements
    assert len(statements) - paid == 1  # the stored answer: the one read
