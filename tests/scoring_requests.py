"""The requests the scorer tests send: a pharmacy settlement of drug ``D1`` (24 units a
pack) at ``P001`` with its trace codes, and ``P001``'s purchases of packs."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve.schemas import SettlementIn


def settlement(settlement_id: str, *codes: str, drug: str = "D1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "settlement_id": settlement_id,
        "institution_id": "P001",
        "patient": {"patient_id": "U1", "gender": "F", "birth_date": "1960-05-01"},
        "settled_at": "2025-03-01T10:00:00+08:00",
        "visit_type": "pharmacy",
        "total_amount": "48.00",
        "fund_paid": "30.00",
        "items": [
            {
                "line_no": 1,
                "item_type": "drug",
                "item_code": drug,
                "quantity": 24 * max(len(codes), 1),
                "unit_price": "2.00",
                "amount": "48.00",
                "trace_codes": list(codes),
            }
        ],
    }
    body.update(extra)
    return body


def purchase(client: TestClient, *codes: str, at: str = "2025-02-01T09:00:00+08:00") -> None:
    events = [
        {"trace_code": c, "event_type": "purchase", "institution_id": "P001", "event_at": at}
        for c in codes
    ]
    response = client.post("/v1/trace-events", json=events)
    assert response.status_code == 200, response.text


def reference_app() -> FastAPI:
    """FastAPI reading a ``SettlementIn`` body parameter: what ``/v1/score`` (which reads
    its raw body itself, faster) must answer and document as."""
    app = FastAPI()

    @app.post("/v1/score")
    async def score(settlement: SettlementIn) -> dict[str, str]:
        return {"settlement_id": settlement.settlement_id}

    return app
