"""Replaying a history through the online path, in time order.

The settlement system's view of a province: its supply-chain events recorded up front
(each check looks only at events up to the sale's time), then every settlement scored and
every reversal posted in the order they happened, through the same service functions the
HTTP handlers call. It is how the tests demand that the online path finds exactly what
batch screening finds, and how a province is played into a store for a demonstration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import Connection, Engine

from features.load import load_tables
from features.store import services
from rules.credit import CreditScheme
from serve import scoring
from serve.schemas import SettlementIn
from traceability.checks import StockEvent
from traceability.ledger import StockEventIn, record_stock_events
from traceability.store import drugs, products


@dataclass(frozen=True)
class Replayed:
    """One settlement as the scorer answered it during a replay."""

    settlement_id: str
    decision: str
    patterns: frozenset[str]
    answer: dict[str, Any]


def _value(v: Any) -> Any:
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float) and v != v:  # NaN
        return None
    return v


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _value(v) for k, v in row.items()} for row in frame.to_dict("records")]


def settlement_requests(
    tables: dict[str, pd.DataFrame],
) -> Iterator[tuple[datetime, dict[str, Any]]]:
    """The ``POST /v1/score`` body of every settlement, with its time, in time order."""
    patients = {p["patient_id"]: p for p in _records(tables["patients"])}
    items: dict[str, list[dict[str, Any]]] = {}
    for item in _records(tables["settlement_items"]):
        codes = item.get("trace_codes")
        items.setdefault(item.pop("settlement_id"), []).append(
            {
                **{k: v for k, v in item.items() if v is not None},
                "trace_codes": list(codes) if codes is not None else None,
            }
        )
    settlements = tables["settlements"].sort_values(["settled_at", "settlement_id"])
    for s in _records(settlements):
        patient = patients[s.pop("patient_id")]
        yield (
            s["settled_at"].to_pydatetime(),
            {
                **{k: v for k, v in s.items() if v is not None},
                "settled_at": s["settled_at"].to_pydatetime(),
                "patient": {
                    "patient_id": patient["patient_id"],
                    "gender": patient["gender"],
                    "birth_date": pd.Timestamp(patient["birth_date"]).date(),
                    **(
                        {"locality_code": patient["locality_code"]}
                        if patient.get("locality_code")
                        else {}
                    ),
                },
                "items": sorted(items.get(s["settlement_id"], []), key=lambda i: i["line_no"]),
            },
        )


Move = tuple[datetime, int, Any]
"""When, what (0: a reversal, 1: a settlement) and its settlement id or request body."""


def record_catalog(conn: Connection, tables: dict[str, pd.DataFrame]) -> None:
    """The knowledge base (drugs, services, products) and every supply-chain event."""
    conn.execute(drugs.insert(), _records(tables["drugs"][[c.name for c in drugs.columns]]))
    conn.execute(
        services.insert(), _records(tables["services"][[c.name for c in services.columns]])
    )
    conn.execute(
        products.insert(), _records(tables["products"][[c.name for c in products.columns]])
    )
    record_stock_events(
        conn,
        [
            StockEventIn(
                e["trace_code"],
                StockEvent(e["event_type"]),
                e["institution_id"],
                e["event_at"].to_pydatetime(),
            )
            for e in _records(tables["trace_events"])
        ],
    )


def moves(tables: dict[str, pd.DataFrame]) -> list[Move]:
    """Every settlement and reversal of the history, in the order they happened (a
    reversal before a settlement of the same moment)."""
    reversals: list[Move] = [
        (r["reversed_at"].to_pydatetime(), 0, r["settlement_id"])
        for r in _records(tables["reversals"])
    ]
    sales: list[Move] = [(at, 1, body) for at, body in settlement_requests(tables)]
    return sorted(reversals + sales, key=lambda m: (m[0], m[1]))


def play(engine: Engine, move: Move, credit: CreditScheme | None = None) -> Replayed | None:
    """Post one reversal (None) or score one settlement, as the HTTP handlers do."""
    at, kind, what = move
    if kind == 0:
        with contextlib.suppress(scoring.UnknownSettlement):  # never scored: nothing held
            scoring.reverse(engine, what, at)
        return None
    settlement = SettlementIn.model_validate(what)
    answer = orjson.loads(scoring.score(engine, settlement, b"", credit=credit).body)
    return Replayed(
        settlement.settlement_id,
        answer["decision"],
        frozenset(hit["pattern"] for hit in answer["hits"]),
        answer,
    )


def replay(
    data_dir: Path, engine: Engine, *, credit: CreditScheme | None = None
) -> Iterator[Replayed]:
    """Play the history in ``data_dir`` into the (migrated, empty) store behind ``engine``;
    ``credit``: the credit scheme the scorer applies (none by default)."""
    tables = load_tables(data_dir)
    with engine.begin() as conn:
        record_catalog(conn, tables)
    for move in moves(tables):
        played = play(engine, move, credit)
        if played is not None:
            yield played
