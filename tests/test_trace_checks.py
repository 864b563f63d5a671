"""The five trace-code checks, on hand-made histories, through both executors.

Each scenario is a short history in time order with the patterns each settlement must
get. The same history is screened in batch (DuckDB over contract files) and replayed
online (the ledger in the store, SQLite and PostgreSQL); both must give exactly the
expected hits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine

from serve.screening import code_flags
from traceability.checks import CHECKS, CodeFacts, StockEvent, TracePattern
from traceability.codes import gs1_hri, gs1_raw
from traceability.ledger import (
    DrugLine,
    StockEventIn,
    record_stock_events,
    release_codes,
    settle_codes,
)
from traceability.store import drugs, products

CST = timezone(timedelta(hours=8))
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=CST)

# product 8100001 is drug D1 (pack of 30); 8100002 is D2 (pack of 10); GTIN below is D3
GTIN = "06901234567892"


def code(product: str, serial: int) -> str:
    return f"{product}{serial:09d}0000"


C1, C2, C3 = code("8100001", 1), code("8100001", 2), code("8100002", 3)
G_HRI = gs1_hri(GTIN, "SN12AB", expiry=date(2027, 12, 31), lot="L1")
G_RAW = gs1_raw(GTIN, "SN12AB", order=("21", "01"))  # the same pack, spelled otherwise


@dataclass
class Sale:
    settlement_id: str
    at: datetime
    institution: str
    lines: list[tuple[str, int, list[str], bool]]  # drug, quantity, codes, split
    expect: set[TracePattern] = field(default_factory=set)
    reversed_at: datetime | None = None


@dataclass
class Scenario:
    name: str
    purchases: list[tuple[str, str, datetime, str]]  # code, institution, at, event type
    sales: list[Sale]


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


P = "purchase"
SCENARIOS = [
    Scenario(
        "a resold pack is a duplicate; after a reversal it may be sold again",
        [(C1, "I1", h(-24), P)],
        [
            Sale("S1", h(0), "I1", [("D1", 30, [C1], False)], reversed_at=h(2)),
            Sale("S2", h(1), "I1", [("D1", 30, [C1], False)], {TracePattern.DUPLICATE}),
            # S2 was rejected and took nothing; S1's reversal put the pack back on the shelf
            Sale("S3", h(3), "I1", [("D1", 30, [C1], False)]),
            Sale("S4", h(4), "I1", [("D1", 30, [C1], False)], {TracePattern.DUPLICATE}),
        ],
    ),
    Scenario(
        "split sales within the pack pass; beyond it they overrun",
        [(C1, "I1", h(-24), P), (C2, "I1", h(-24), P)],
        [
            Sale("S1", h(0), "I1", [("D1", 10, [C1], True)]),
            Sale("S2", h(1), "I1", [("D1", 20, [C1], True)]),
            Sale("S3", h(2), "I1", [("D1", 5, [C1], True)], {TracePattern.SPLIT_OVERRUN}),
            Sale("S4", h(3), "I1", [("D1", 30, [C2], False)]),
            Sale("S5", h(4), "I1", [("D1", 5, [C2], True)], {TracePattern.DUPLICATE}),
        ],
    ),
    Scenario(
        "a full sale after a split sale of the same pack is a duplicate",
        [(C1, "I1", h(-24), P)],
        [
            Sale("S1", h(0), "I1", [("D1", 10, [C1], True)]),
            Sale("S2", h(1), "I1", [("D1", 30, [C1], False)], {TracePattern.DUPLICATE}),
        ],
    ),
    Scenario(
        "the code of another drug is substitution; no code or a bad one is missing",
        [(C3, "I1", h(-24), P)],
        [
            Sale("S1", h(0), "I1", [("D1", 10, [C3], False)], {TracePattern.MISMATCH}),
            Sale("S2", h(1), "I1", [("D1", 30, [], False)], {TracePattern.MISSING}),
            Sale("S3", h(2), "I1", [("D1", 30, ["12345"], False)], {TracePattern.MISSING}),
            Sale(
                "S4",
                h(3),
                "I1",
                [("D3", 12, ["(01)06901234567893(21)X1"], False)],
                {TracePattern.MISSING},
            ),
        ],
    ),
    Scenario(
        "a pack never received, returned, or received after the sale is unpurchased",
        [
            (C1, "I2", h(-24), P),
            (C2, "I1", h(-24), P),
            (C2, "I1", h(-12), "return"),
            (C3, "I1", h(5), P),
        ],
        [
            Sale("S1", h(0), "I1", [("D1", 30, [C1], False)], {TracePattern.UNPURCHASED}),
            Sale("S2", h(1), "I1", [("D1", 30, [C2], False)], {TracePattern.UNPURCHASED}),
            Sale("S3", h(2), "I1", [("D2", 10, [C3], False)], {TracePattern.UNPURCHASED}),
        ],
    ),
    Scenario(
        "a GS1 pack spelled otherwise at purchase and at sale is one pack",
        [(G_HRI, "I1", h(-24), P)],
        [
            Sale("S1", h(0), "I1", [("D3", 12, [G_RAW], False)]),
            Sale("S2", h(1), "I1", [("D3", 12, [G_HRI], False)], {TracePattern.DUPLICATE}),
        ],
    ),
    Scenario(
        "one pack twice in one settlement is a duplicate on the second line",
        [(C1, "I1", h(-24), P), (C2, "I1", h(-24), P)],
        [
            Sale(
                "S1",
                h(0),
                "I1",
                [("D1", 30, [C1], False), ("D1", 60, [C2, C1], False)],
                {TracePattern.DUPLICATE},
            ),
        ],
    ),
]

DRUGS = [("D1", 30), ("D2", 10), ("D3", 12)]
PRODUCTS = [("8100001", "D1"), ("8100002", "D2"), (GTIN, "D3")]


def write_history(folder: Path, scenario: Scenario) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        [{"drug_code": d, "generic_name": d, "pack_units": n} for d, n in DRUGS]
    ).to_parquet(folder / "drugs.parquet")
    pd.DataFrame([{"product_code": p, "drug_code": d} for p, d in PRODUCTS]).to_parquet(
        folder / "products.parquet"
    )
    pq.write_table(
        pa.table(
            {
                "trace_code": [c for c, *_ in scenario.purchases],
                "event_type": [e for *_, e in scenario.purchases],
                "institution_id": [i for _, i, _, _ in scenario.purchases],
                "event_at": pa.array(
                    [t for _, _, t, _ in scenario.purchases], pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        folder / "trace_events.parquet",
    )
    settlements, items, reversals = [], [], []
    for sale in scenario.sales:
        settlements.append(
            {
                "settlement_id": sale.settlement_id,
                "institution_id": sale.institution,
                "patient_id": "U1",
                "settled_at": sale.at,
            }
        )
        for n, (drug, quantity, codes, split) in enumerate(sale.lines, start=1):
            items.append(
                {
                    "settlement_id": sale.settlement_id,
                    "line_no": n,
                    "item_type": "drug",
                    "item_code": drug,
                    "quantity": quantity,
                    "amount": Decimal("10.00"),
                    "trace_codes": codes,
                    "split_sale": split,
                }
            )
        if sale.reversed_at:
            reversals.append({"settlement_id": sale.settlement_id, "reversed_at": sale.reversed_at})
    pq.write_table(
        pa.Table.from_pylist(
            settlements,
            pa.schema(
                [
                    ("settlement_id", pa.string()),
                    ("institution_id", pa.string()),
                    ("patient_id", pa.string()),
                    ("settled_at", pa.timestamp("us", tz="Asia/Shanghai")),
                ]
            ),
        ),
        folder / "settlements.parquet",
    )
    pq.write_table(
        pa.Table.from_pylist(
            items,
            pa.schema(
                [
                    ("settlement_id", pa.string()),
                    ("line_no", pa.int64()),
                    ("item_type", pa.string()),
                    ("item_code", pa.string()),
                    ("quantity", pa.int64()),
                    ("amount", pa.decimal128(18, 2)),
                    ("trace_codes", pa.list_(pa.string())),
                    ("split_sale", pa.bool_()),
                ]
            ),
        ),
        folder / "settlement_items.parquet",
    )
    pq.write_table(
        pa.Table.from_pylist(
            reversals,
            pa.schema(
                [
                    ("settlement_id", pa.string()),
                    ("reversed_at", pa.timestamp("us", tz="Asia/Shanghai")),
                ]
            ),
        ),
        folder / "reversals.parquet",
    )


def expected(scenario: Scenario) -> set[tuple[str, str]]:
    return {(s.settlement_id, p.value) for s in scenario.sales for p in s.expect}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_batch_finds_exactly_the_expected_hits(scenario: Scenario, tmp_path: Path) -> None:
    write_history(tmp_path, scenario)
    flags = code_flags(tmp_path)
    assert {(f.entity_id, f.pattern) for f in flags} == expected(scenario)


def replay(engine: Engine, scenario: Scenario) -> set[tuple[str, str]]:
    """Replay a scenario online in time order: events, sales and reversals as they happen."""
    with engine.begin() as conn:
        conn.execute(
            drugs.insert(), [{"drug_code": d, "generic_name": d, "pack_units": n} for d, n in DRUGS]
        )
        conn.execute(products.insert(), [{"product_code": p, "drug_code": d} for p, d in PRODUCTS])
    moments: list[tuple[datetime, int, object]] = []
    moments += [(t, 0, ("event", c, i, e)) for c, i, t, e in scenario.purchases]
    moments += [(s.reversed_at, 1, ("reversal", s)) for s in scenario.sales if s.reversed_at]
    moments += [(s.at, 2, ("sale", s)) for s in scenario.sales]
    found: set[tuple[str, str]] = set()
    for at, _, what in sorted(moments, key=lambda m: (m[0], m[1])):
        with engine.begin() as conn:
            if what[0] == "event":  # type: ignore[index]
                _, c, i, e = what  # type: ignore[misc]
                record_stock_events(conn, [StockEventIn(c, StockEvent(e), i, at)])
            elif what[0] == "reversal":  # type: ignore[index]
                release_codes(conn, settlement_id=what[1].settlement_id, released_at=at)  # type: ignore[index]
            else:
                sale: Sale = what[1]  # type: ignore[index]
                hits = settle_codes(
                    conn,
                    settlement_id=sale.settlement_id,
                    institution_id=sale.institution,
                    settled_at=sale.at,
                    lines=[
                        DrugLine(n, drug, Decimal(q), Decimal("10.00"), split, tuple(codes))
                        for n, (drug, q, codes, split) in enumerate(sale.lines, start=1)
                    ],
                )
                found |= {(sale.settlement_id, hit.pattern.value) for hit in hits}
    return found


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_online_finds_exactly_the_expected_hits(scenario: Scenario, store: Engine) -> None:
    assert replay(store, scenario) == expected(scenario)


def test_online_rejected_settlement_does_not_consume_its_codes(store: Engine) -> None:
    with store.begin() as conn:
        conn.execute(drugs.insert(), [{"drug_code": "D1", "generic_name": "D1", "pack_units": 30}])
        conn.execute(products.insert(), [{"product_code": "8100001", "drug_code": "D1"}])
        record_stock_events(conn, [StockEventIn(C1, StockEvent.PURCHASE, "I1", h(-1))])
    line_ok = DrugLine(1, "D1", Decimal(30), Decimal(1), False, (C1,))
    line_bad = DrugLine(2, "D1", Decimal(30), Decimal(1), False, ())
    with store.begin() as conn:
        hits = settle_codes(
            conn,
            settlement_id="S1",
            institution_id="I1",
            settled_at=h(0),
            lines=[line_ok, line_bad],
        )
    assert [hit.pattern for hit in hits] == [TracePattern.MISSING]
    with store.begin() as conn:  # C1 was not consumed by the rejected S1
        assert (
            settle_codes(
                conn, settlement_id="S2", institution_id="I1", settled_at=h(1), lines=[line_ok]
            )
            == []
        )
    with store.begin() as conn:
        hits = settle_codes(
            conn, settlement_id="S3", institution_id="I1", settled_at=h(2), lines=[line_ok]
        )
    assert [hit.pattern for hit in hits] == [TracePattern.DUPLICATE]


def test_stock_events_are_recorded_once(store: Engine) -> None:
    event = StockEventIn(G_HRI, StockEvent.PURCHASE, "I1", h(0))
    same_pack_other_spelling = StockEventIn(G_RAW, StockEvent.PURCHASE, "I1", h(0))
    with store.begin() as conn:
        assert record_stock_events(conn, [event]) == 1
    with store.begin() as conn:
        assert record_stock_events(conn, [event, same_pack_other_spelling]) == 0


def test_checks_give_the_same_answer_on_arrays_and_on_one_line() -> None:
    rng = np.random.default_rng(0)
    n = 500
    facts = CodeFacts(
        has_code=rng.random(n) > 0.1,
        code_valid=rng.random(n) > 0.1,
        split_sale=rng.random(n) > 0.5,
        units=rng.integers(1, 40, n).astype(float),
        pack_units=np.full(n, 30.0),
        item_code=rng.choice(["D1", "D2"], n),
        product_drug_code=rng.choice(["D1", "D2", ""], n),
        prior_full_units=rng.choice([0.0, 30.0], n),
        prior_split_units=rng.choice([0.0, 10.0, 25.0], n),
        last_stock_event=rng.choice(["purchase", "return", ""], n),
    )
    for pattern, check in CHECKS.items():
        batch = np.asarray(check(facts))
        one_by_one = [
            bool(
                check(
                    CodeFacts(
                        **{k: getattr(facts, k)[i].item() for k in facts.__dataclass_fields__}
                    )
                )
            )
            for i in range(n)
        ]
        assert batch.tolist() == one_by_one, pattern
        assert 0 < batch.sum() < n, f"{pattern}: the random facts should both fire and not"
