"""The watch list: a screening's flagged patients and institutions, kept in the store
(``fundguard screen --store``) and looked up on every settlement the scorer sees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import bearer
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from serve import watchlist
from serve.app import create_app
from serve.cli import main
from serve.screening import ScreeningResult, screen
from serve.settings import Settings
from serve.tables import watchlist as watchlist_table


@pytest.fixture(scope="module")
def screening(province: Path, tmp_path_factory: pytest.TempPathFactory) -> ScreeningResult:
    return screen(province, tmp_path_factory.mktemp("screened-watch"))


@pytest.fixture
def client(store: Engine, screening: ScreeningResult) -> Iterator[TestClient]:
    with store.begin() as conn:
        watchlist.replace(conn, watchlist.entries(screening.flags, screening.members))
    with TestClient(
        create_app(Settings(), engine=store), headers=bearer(store, "settlement")
    ) as client:
        yield client


def settlement(sid: str, patient: str, institution: str, visit: str, **line: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "settlement_id": sid,
        "institution_id": institution,
        "patient": {"patient_id": patient, "gender": "F", "birth_date": "1960-05-01"},
        "settled_at": "2026-01-05T10:00:00+08:00",
        "visit_type": visit,
        "total_amount": "100.00",
        "fund_paid": "60.00",
        "items": [
            {"line_no": 1, "item_type": "service", "item_code": "110200001", "quantity": 1,
             "unit_price": "100.00", "amount": "100.00"} | line
        ],
    }  # fmt: skip
    if visit == "inpatient":
        body |= {"admit_date": "2026-01-01", "discharge_date": "2026-01-05"}
    return body


def watch_hits(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(h["pattern"], h["action"]) for h in answer["hits"] if h["rule_id"] == "WATCH"]


def test_a_group_member_admitted_at_the_groups_institution_is_reviewed(
    client: TestClient, screening: ScreeningResult
) -> None:
    member = screening.members[0]
    inpatient = settlement("W1", member.patient_id, member.institution_id, "inpatient")
    answer = client.post("/v1/score", json=inpatient).json()
    assert watch_hits(answer) == [("group_admission", "review")]
    assert answer["decision"] == "review"
    elsewhere = settlement("W2", member.patient_id, "SOMEWHERE-ELSE", "outpatient")
    assert watch_hits(client.post("/v1/score", json=elsewhere).json()) == []


def test_a_hoarder_buying_the_drug_and_a_resale_hub_selling_codes_are_flagged(
    client: TestClient, screening: ScreeningResult
) -> None:
    hoarder = next(f for f in screening.flags if f.pattern == "drug_hoarding")
    drug = str(hoarder.evidence["drug_code"])
    line = {"item_type": "drug", "item_code": drug, "trace_codes": ["81000010000000010000"]}
    answer = client.post(
        "/v1/score", json=settlement("W3", hoarder.entity_id, "ANY", "pharmacy", **line)
    ).json()
    assert ("drug_hoarding", "review") in watch_hits(answer)
    hub = next(f for f in screening.flags if f.pattern == "resale_hub")
    answer = client.post(
        "/v1/score", json=settlement("W4", "NEW-PATIENT", hub.entity_id, "pharmacy", **line)
    ).json()
    assert watch_hits(answer) == [("resale_hub", "review")]
    no_codes = settlement("W5", "NEW-PATIENT", hub.entity_id, "outpatient")
    assert watch_hits(client.post("/v1/score", json=no_codes).json()) == []


def test_a_new_screening_replaces_the_watch_list(store: Engine, screening: ScreeningResult) -> None:
    entries = watchlist.entries(screening.flags, screening.members)
    kinds = {(w.entity_type, w.pattern) for w in entries}
    assert kinds >= {("patient", "group_admission"), ("patient", "drug_hoarding"),
                     ("institution", "resale_hub")}  # fmt: skip
    with store.begin() as conn:
        assert watchlist.replace(conn, entries) == len(entries)
    with store.begin() as conn:
        assert watchlist.replace(conn, entries[:3]) == 3
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(watchlist_table)).scalar() == 3


def test_screen_store_fills_the_watch_list(
    province: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUNDGUARD_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(
        main, ["screen", "--data", str(province), "--out", str(tmp_path / "out"), "--store"]
    )
    assert result.exit_code == 0, result.output
    assert "watch list in sqlite:///" in result.output
    from serve.store import create_store_engine

    engine = create_store_engine(Settings(data_dir=tmp_path).store_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(watchlist_table)).scalar()
    finally:
        engine.dispose()
    assert stored
    assert f"{stored} entr" in result.output
