"""What ``fundguard demo`` hands a new user: a request to try against the scorer."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, func, select

from features.batch import open_history
from serve.keys import Role
from serve.schemas import SettlementIn
from serve.tables import cases
from serve.web.accounts import create_user


def example_request(province: Path) -> dict[str, Any]:
    """A new pharmacy settlement of a pack that a pharmacy of ``province`` received and has
    neither sold nor sent back: scored, it passes; scored under another id, it is a
    duplicate."""
    con = open_history(province)
    try:
        row = con.execute(
            """
            WITH sold AS (SELECT DISTINCT unnest(trace_codes) AS code FROM settlement_items),
            last_event AS (
                SELECT trace_code, institution_id, max_by(event_type, event_at) AS last_type,
                       max(event_at) AS at
                FROM trace_events GROUP BY trace_code, institution_id
            )
            SELECT e.trace_code, e.institution_id, e.at, p.drug_code, d.pack_units
            FROM last_event e
            JOIN institutions i USING (institution_id)
            JOIN products p ON p.product_code = substr(e.trace_code, 1, 7)
            JOIN drugs d USING (drug_code)
            WHERE e.last_type = 'purchase' AND i.kind = 'pharmacy'
              AND regexp_full_match(e.trace_code, '[0-9]{20}')
              AND e.trace_code NOT IN (SELECT code FROM sold WHERE code IS NOT NULL)
              AND coalesce(d.gender_restriction, '') = '' AND d.min_age IS NULL
              AND d.max_age IS NULL
            ORDER BY e.at DESC, e.trace_code LIMIT 1
            """
        ).fetchone()
        patient = con.execute(
            """SELECT patient_id, gender, birth_date FROM patients
               WHERE date_diff('year', birth_date, DATE '2025-01-01') BETWEEN 30 AND 60
               ORDER BY patient_id LIMIT 1"""
        ).fetchone()
    finally:
        con.close()
    if row is None or patient is None:
        raise LookupError(f"{province}: no unsold pack at a pharmacy to make an example of")
    code, institution, received_at, drug, pack_units = row
    body = {
        "settlement_id": "DEMO-0001",
        "institution_id": institution,
        "patient": {"patient_id": patient[0], "gender": patient[1], "birth_date": patient[2]},
        "settled_at": received_at + timedelta(days=1),
        "visit_type": "pharmacy",
        "items": [
            {
                "line_no": 1,
                "item_type": "drug",
                "item_code": drug,
                "quantity": pack_units,
                "unit_price": "2.00",
                "amount": f"{2 * pack_units}.00",
                "trace_codes": [code],
            }
        ],
    }
    body["total_amount"] = body["fund_paid"] = f"{2 * pack_units}.00"
    return orjson.loads(SettlementIn.model_validate(body).model_dump_json())  # type: ignore[no-any-return]


def demo_inspector(engine: Engine) -> tuple[str, str, str]:
    """An inspector's account for the region with the most cases, with a fresh random
    password: (username, password, region). A new account each run (a password is never
    stored or shown again)."""
    with engine.connect() as conn:
        region = conn.execute(
            select(cases.c.region_code)
            .group_by(cases.c.region_code)
            .order_by(func.count().desc(), cases.c.region_code)
            .limit(1)
        ).scalar()
    if region is None:
        raise LookupError("no case in the store: screen with --store first")
    username = f"demo-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    create_user(
        engine, username, password, role=Role.INSPECTOR, regions=(str(region),),
        display_name="演示稽核员",
    )  # fmt: skip
    return username, password, str(region)
