"""The running scorer picks up a changed rule file, and refuses a broken one.

Policy staff add a frequency limit as data alone; the scorer applies it without a restart.
A broken file is refused with every problem named, and the rules already in force answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import bearer
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from features.store import services
from rules.base import shipped_bytes
from serve.app import create_app
from serve.settings import Settings

NEW_LIMIT = """
  - id: OF901
    template: over_frequency
    params: {items: ["X-RAY"], max_times: 1, period_days: 30}
    action: review
    severity: medium
    message: {zh: 胸部X线检查30天内限1次, en: chest X-ray at most once in 30 days}
    examples:
      hit: [{times_in_period: 2}]
      no_hit: [{times_in_period: 1}]
"""


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rulebase.yaml"
    path.write_bytes(shipped_bytes())
    return path


@pytest.fixture
def client(store: Engine, rules_file: Path, tmp_path: Path) -> Iterator[TestClient]:
    with store.begin() as conn:
        conn.execute(
            services.insert(),
            [{"service_code": "X-RAY", "name": "胸部X线", "gender_restriction": None,
              "max_times": None, "period_days": None}],
        )  # fmt: skip
    settings = Settings(data_dir=tmp_path, rules_file=rules_file)
    with TestClient(
        create_app(settings, engine=store), headers=bearer(store, "settlement")
    ) as client:
        client.app.state.rules.check_every = 0  # type: ignore[attr-defined]
        yield client


def xray(settlement_id: str, day: int) -> dict[str, Any]:
    return {
        "settlement_id": settlement_id,
        "institution_id": "H001",
        "patient": {"patient_id": "U1", "gender": "M", "birth_date": "1970-01-01"},
        "settled_at": f"2025-04-{day:02d}T10:00:00+08:00",
        "visit_type": "outpatient",
        "total_amount": "80.00",
        "fund_paid": "40.00",
        "items": [{"line_no": 1, "item_type": "service", "item_code": "X-RAY", "quantity": 1,
                   "unit_price": "80.00", "amount": "80.00"}],
    }  # fmt: skip


def rule_ids(client: TestClient, body: dict[str, Any]) -> list[str]:
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    return [hit["rule_id"] for hit in response.json()["hits"]]


def test_a_new_limit_as_data_alone_then_a_broken_file_refused(
    client: TestClient, rules_file: Path
) -> None:
    assert rule_ids(client, xray("S1", 1)) == []
    assert rule_ids(client, xray("S2", 2)) == []  # no limit on X-rays yet

    rules_file.write_text(rules_file.read_text(encoding="utf-8") + NEW_LIMIT, encoding="utf-8")
    assert rule_ids(client, xray("S3", 3)) == ["OF901"]  # 3 in 30 days, limit 1

    rules_file.write_text("version: '2025.2'\nrules:\n  - id: BROKEN\n    template: nope\n")
    assert rule_ids(client, xray("S4", 4)) == ["OF901"]  # the rules in force still answer
    refused = client.app.state.rules.refused  # type: ignore[attr-defined]
    assert refused is not None
    assert "BROKEN" in str(refused)
    assert "template" in str(refused)
