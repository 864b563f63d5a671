"""Credit (医保信用): the scheme file, the arithmetic, decisions and verdicts moving accounts,
the policy reading grades back, the endpoint, and recompute equal to online, on SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from conftest import bearer
from fastapi.testclient import TestClient
from scorer_processes import PRODUCT, code, settlement
from sqlalchemy import Engine, select

from rules.credit import (
    Account,
    CreditSchemeError,
    EventKind,
    Party,
    parse_scheme,
    shipped_scheme,
)
from serve import credit, scoring
from serve.app import create_app
from serve.cli import main
from serve.schemas import SHANGHAI, SettlementIn
from serve.settings import Settings
from serve.tables import credit_accounts, decisions, institutions
from traceability.checks import StockEvent
from traceability.ledger import StockEventIn, record_stock_events
from traceability.store import drugs, products

SCHEME = shipped_scheme()
T0 = datetime(2025, 3, 1, 10, 0, tzinfo=SHANGHAI)


# --- the scheme file ------------------------------------------------------------------------


def test_the_shipped_scheme_is_valid_and_grades_every_score() -> None:
    assert SCHEME.version
    assert len(SCHEME.checksum) == 64
    for score in range(SCHEME.minimum, SCHEME.maximum + 1):
        assert SCHEME.grade(score).min_score <= score
    assert SCHEME.grade(SCHEME.start).name == SCHEME.grades[0].name
    assert SCHEME.grades[-1].blacklist


SHIPPED_TEXT = resources.files("rules").joinpath("credit.yaml").read_text()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("min: 750", "min: 950"), "grades: best first"),
        (("\nscale:\n", "\nextra: 1\nscale:\n"), "extra: unknown name"),
        (("    min: 0\n", "    min: 10\n"), "must reach scale.min"),
        (("      resale_hub: 5\n", "      resale_hubs: 5\n"), "events.flagged.points"),
        (("  start: 1000", "  start: 2000"), "scale: start 2000"),
        (("  clean_days: 90", "  clean_days: 0"), "repair.clean_days"),
        (("{zh: 守信, en: trustworthy}", "{zh: good}"), "grades[0].label"),
        (("review_bar: 0.5", "review_bar: 1.5"), "grades[3].review_bar"),
        (("  limit: 12", "  limit: 12\n  limit: 13"), "given twice"),
    ],
)
def test_a_bad_scheme_is_refused_naming_the_field(change: tuple[str, str], named: str) -> None:
    old, new = change
    assert old in SHIPPED_TEXT
    with pytest.raises(CreditSchemeError) as refused:
        parse_scheme(SHIPPED_TEXT.replace(old, new, 1).encode())
    assert named in str(refused.value)


# --- the arithmetic -------------------------------------------------------------------------


def test_costs_follow_pattern_amount_and_share() -> None:
    parties = [(Party.INSTITUTION, "I"), (Party.PATIENT, "P"), (Party.DOCTOR, "D")]
    small = SCHEME.charges(EventKind.REJECTED, ["duplicate_trace_code"], Decimal(10), parties)
    large = SCHEME.charges(EventKind.REJECTED, ["duplicate_trace_code"], Decimal(9000), parties)
    assert [c.party for c in small] == [Party.INSTITUTION, Party.PATIENT, Party.DOCTOR]
    assert small[0].points < 0
    assert large[0].points < small[0].points
    assert small[1].points > small[0].points  # the patient bears a smaller share
    missing = SCHEME.charges(EventKind.REJECTED, ["missing_trace_code"], Decimal(10), parties)
    assert missing[0].points > small[0].points  # a missing code costs less than a resold one
    assert (
        SCHEME.charges(EventKind.REJECTED, ["blacklisted_institution"], Decimal("9e3"), parties)
        == []
    )
    confirmed = SCHEME.charges(EventKind.CONFIRMED, ["resale_hub"], Decimal(0), parties)
    assert [c.year_points for c in confirmed] == [0, 0, SCHEME.year_points_of(["resale_hub"])]


def test_a_clean_record_repairs_step_by_step_and_never_beyond_what_was_lost() -> None:
    lost = Account(lost=120, last_day=T0.date().toordinal())
    days = SCHEME.repair_days
    scores = [
        SCHEME.position(Party.INSTITUTION, "I", lost, T0 + timedelta(days=d)).score
        for d in (0, days - 1, days, 2 * days, 10 * days)
    ]
    start = SCHEME.start
    assert scores[0] == scores[1] == start - 120
    assert scores[2] == start - 120 + SCHEME.repair_points
    assert scores[3] == start - 120 + 2 * SCHEME.repair_points
    assert scores[4] == start


# --- decisions and verdicts in the store ----------------------------------------------------


@pytest.fixture
def catalog(store: Engine) -> Engine:
    with store.begin() as conn:
        conn.execute(drugs.insert(), [{"drug_code": "D1", "generic_name": "D1", "pack_units": 24}])
        conn.execute(products.insert(), [{"product_code": PRODUCT, "drug_code": "D1"}])
    return store


def body(settlement_id: str, pack: int, *, at: datetime = T0, **options: Any) -> SettlementIn:
    """``scorer_processes.settlement`` as the scoring service takes it."""
    return SettlementIn.model_validate(settlement(settlement_id, pack, at=at, **options))


def receive(engine: Engine, packs: range, institution: str = "P001") -> None:
    with engine.begin() as conn:
        record_stock_events(
            conn,
            [
                StockEventIn(code(n), StockEvent.PURCHASE, institution, T0 - timedelta(days=30))
                for n in packs
            ],
        )


def answer(engine: Engine, settlement: SettlementIn) -> dict[str, Any]:
    scored = scoring.score(engine, settlement, b"", credit=SCHEME)
    return dict(orjson.loads(scored.body))


def account(engine: Engine, party: str, entity_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(credit_accounts).where(
                credit_accounts.c.entity_type == party, credit_accounts.c.entity_id == entity_id
            )
        ).first()


def test_a_rejected_settlement_costs_its_parties_and_the_answer_names_the_grades(
    catalog: Engine,
) -> None:
    first = answer(catalog, body("S1", 1, doctor="DR1"))  # never received: unpurchased
    assert first["decision"] == "reject"
    assert first["credit"]["institution"] == {"id": "P001", "grade": "A", "score": SCHEME.start}
    assert first["credit"]["doctor"]["suspended"] is False
    expected = SCHEME.charges(
        EventKind.REJECTED,
        ["unpurchased_trace_code"],
        Decimal("5.00"),
        [(Party.INSTITUTION, "P001"), (Party.PATIENT, "US1"), (Party.DOCTOR, "DR1")],
    )
    for charge in expected:
        assert account(catalog, charge.party.value, charge.entity_id).lost == -charge.points
    second = answer(catalog, body("S2", 2))
    assert second["credit"]["institution"]["score"] == SCHEME.start + expected[0].points
    answer(catalog, body("S2", 2))  # scored again: nothing moves twice
    assert account(catalog, "institution", "P001").events == 2
    receive(catalog, range(3, 4))
    assert answer(catalog, body("S3", 3))["decision"] == "pass"
    assert account(catalog, "institution", "P001").events == 2  # a pass costs nothing


def test_a_poor_grade_blacklists_then_a_clean_period_repairs(catalog: Engine) -> None:
    with catalog.begin() as conn:  # two confirmed resale-hub cases: the worst grade
        for n in (1, 2):
            credit.record_verdict(
                conn, SCHEME, verdict_id=f"V{n}", entity_type="institution", entity_id="P001",
                patterns=["resale_hub"], verdict="confirmed", decided_at=T0,
                amount_at_risk=Decimal(100_000),
            )  # fmt: skip
    receive(catalog, range(10, 12))
    blocked = answer(catalog, body("S10", 10))
    assert blocked["credit"]["institution"]["grade"] == SCHEME.grades[-1].name
    assert blocked["decision"] == "reject"
    assert "blacklisted_institution" in {h["pattern"] for h in blocked["hits"]}
    lost = account(catalog, "institution", "P001").lost
    assert account(catalog, "institution", "P001").events == 2  # the black list costs nothing
    later = T0 + timedelta(days=SCHEME.repair_days * 20)
    repaired = answer(catalog, body("S11", 11, at=later))
    assert repaired["credit"]["institution"]["score"] == min(
        SCHEME.maximum, SCHEME.start - lost + 20 * SCHEME.repair_points
    )
    assert repaired["decision"] == "pass"


def test_a_doctor_with_twelve_points_is_suspended_until_the_year_ends(catalog: Engine) -> None:
    answer(catalog, body("S1", 1, doctor="DR9"))  # rejected: a flag on the doctor
    with catalog.begin() as conn:
        applied = credit.record_verdict(
            conn, SCHEME, verdict_id="V1", entity_type="settlement", entity_id="S1",
            patterns=["resale_hub"], verdict="confirmed", decided_at=T0 + timedelta(days=1),
        )  # fmt: skip
    assert {c.party for c in applied.charges} == {Party.INSTITUTION, Party.PATIENT, Party.DOCTOR}
    receive(catalog, range(2, 4))
    suspended = answer(catalog, body("S2", 2, doctor="DR9", at=T0 + timedelta(days=2)))
    assert suspended["credit"]["doctor"] == {
        "id": "DR9", "grade": suspended["credit"]["doctor"]["grade"],
        "score": suspended["credit"]["doctor"]["score"], "year_points": 12, "suspended": True,
    }  # fmt: skip
    assert suspended["decision"] == "review"
    assert [h["pattern"] for h in suspended["hits"]] == ["suspended_doctor"]
    next_year = answer(
        catalog, body("S3", 3, doctor="DR9", at=datetime(2026, 1, 2, tzinfo=SHANGHAI))
    )
    assert next_year["credit"]["doctor"]["suspended"] is False
    assert "suspended_doctor" not in {h["pattern"] for h in next_year["hits"]}


def test_a_dismissed_case_gives_back_what_its_flags_cost_once(catalog: Engine) -> None:
    for n in range(1, 4):
        answer(catalog, body(f"S{n}", n, patient="U1"))  # three rejected settlements
    before = account(catalog, "institution", "P001").lost
    with catalog.begin() as conn:
        applied = credit.record_verdict(
            conn, SCHEME, verdict_id="V1", entity_type="settlement", entity_id="S2",
            patterns=["unpurchased_trace_code"], verdict="dismissed", decided_at=T0,
        )  # fmt: skip
        again = credit.record_verdict(
            conn, SCHEME, verdict_id="V1", entity_type="settlement", entity_id="S2",
            patterns=["unpurchased_trace_code"], verdict="dismissed", decided_at=T0,
        )  # fmt: skip
        twice = credit.record_verdict(
            conn, SCHEME, verdict_id="V2", entity_type="settlement", entity_id="S2",
            patterns=["unpurchased_trace_code"], verdict="dismissed", decided_at=T0,
        )  # fmt: skip
    assert not again.recorded
    assert again.charges == ()
    assert twice.recorded
    assert twice.charges == ()
    per_flag = before // 3
    assert {(c.party, c.points) for c in applied.charges} == {
        (Party.INSTITUTION, per_flag),
        (Party.PATIENT, account(catalog, "patient", "U1").restored),
    }
    after = account(catalog, "institution", "P001")
    assert (after.lost, after.restored) == (before - per_flag, per_flag)


def test_recompute_equals_the_online_updates(catalog: Engine) -> None:
    receive(catalog, range(20, 22))  # S22 sells a pack never received: a cost after repair
    days = SCHEME.repair_days
    for n in range(1, 6):  # rejected settlements spread over clean periods, two doctors
        answer(
            catalog, body(f"S{n}", n, doctor=f"DR{n % 2}", at=T0 + timedelta(days=n * days // 2))
        )
    with catalog.begin() as conn:
        credit.record_verdict(
            conn, SCHEME, verdict_id="V1", entity_type="settlement", entity_id="S1",
            patterns=["unpurchased_trace_code"], verdict="confirmed", decided_at=T0,
        )  # fmt: skip
        credit.record_verdict(
            conn, SCHEME, verdict_id="V2", entity_type="institution", entity_id="P001",
            patterns=["unpurchased_trace_code"], verdict="dismissed", decided_at=T0,
        )  # fmt: skip
    for n in range(20, 23):
        answer(catalog, body(f"S{n}", n, doctor="DR1", at=T0 + timedelta(days=4 * days + n)))
    online = credit.state(catalog)
    assert online[0]
    assert online[1]
    done = credit.recompute(catalog, SCHEME)
    assert (done.decisions, done.verdicts) == (6, 2)  # the decisions that were not a pass
    assert credit.state(catalog) == online


# --- the endpoint ---------------------------------------------------------------------------


@pytest.fixture
def client(catalog: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), engine=catalog)) as client:
        yield client


def test_get_credit_explains_score_grade_and_events(client: TestClient, catalog: Engine) -> None:
    settlement_key = bearer(catalog, "settlement")
    scored = client.post(
        "/v1/score", json=orjson.loads(body("S1", 1).model_dump_json()), headers=settlement_key
    ).json()
    assert scored["credit"]["institution"]["grade"] == "A"
    with catalog.begin() as conn:
        conn.execute(
            institutions.insert().values(
                institution_id="P001", name="P001", kind="pharmacy", level=0, region_code="320102"
            )
        )
    for role, regions in (("inspector", ("320102",)), ("settlement", ()), ("admin", ())):
        got = client.get(
            "/v1/credit/institution/P001",
            params={"at": "2025-03-02T00:00:00"},
            headers=bearer(catalog, role, *regions),
        )
        assert got.status_code == 200, got.text
    shown = got.json()
    assert shown["score"] < SCHEME.start
    assert shown["grade"] in {g.name for g in SCHEME.grades}
    assert [(e["kind"], e["source"]) for e in shown["events"]] == [("rejected", "S1")]
    assert "unpurchased_trace_code" in shown["events"][0]["reason"]
    assert "信用等级" in shown["summary"]
    assert shown["as_of"].startswith("2025-03-02T00:00:00+08")
    today = client.get("/v1/credit/institution/P001", headers=settlement_key).json()
    assert today["score"] == SCHEME.start  # long clean since: repaired (信用修复)
    assert today["repaired"] == shown["lost"] > 0
    untouched = client.get("/v1/credit/doctor/NOBODY", headers=settlement_key).json()
    assert (untouched["score"], untouched["events"]) == (SCHEME.start, [])
    assert client.get("/v1/credit/group/G1", headers=settlement_key).status_code == 422
    assert client.get("/v1/credit/institution/P001").status_code == 401
    elsewhere = bearer(catalog, "inspector", "110101")  # another region's inspector
    assert client.get("/v1/credit/institution/P001", headers=elsewhere).status_code == 404
    assert client.get("/v1/credit/patient/NOBODY", headers=elsewhere).status_code == 404
    with catalog.connect() as conn:
        stored = conn.execute(select(decisions.c.response, decisions.c.fund_paid)).one()
    assert orjson.loads(stored.response)["credit"] == scored["credit"]
    assert stored.fund_paid == Decimal("5.00")


def test_the_command_line_checks_shows_and_recomputes(
    catalog: Engine, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer(catalog, body("S1", 1))
    monkeypatch.setenv("FUNDGUARD_DATABASE_URL", store_url)
    runner = CliRunner()
    shown = runner.invoke(main, ["credit", "show", "institution", "P001"])
    assert shown.exit_code == 0, shown.output
    assert "rejected" in shown.output
    assert "S1" in shown.output
    before = credit.state(catalog)
    done = runner.invoke(main, ["credit", "recompute"])
    assert done.exit_code == 0, done.output
    assert "from 1 decision(s)" in done.output
    assert credit.state(catalog) == before
    bad = tmp_path / "bad.yaml"
    bad.write_text(SHIPPED_TEXT.replace("  clean_days: 90", "  clean_days: -1"))
    refused = runner.invoke(main, ["credit", "check", str(bad)])
    assert refused.exit_code != 0
    assert "repair.clean_days" in refused.output


def test_the_scorer_takes_the_credit_scheme_of_its_settings(
    catalog: Engine, tmp_path: Path
) -> None:
    shipped = resources.files("rules").joinpath("credit.yaml").read_text(encoding="utf-8")
    changed = shipped.replace('version: "2025.1"', 'version: "2026.test"').replace(
        "  start: 1000\n", "  start: 900\n"
    )
    assert changed != shipped
    path = tmp_path / "credit.yaml"
    path.write_text(changed, encoding="utf-8")
    with TestClient(create_app(Settings(credit_file=path), engine=catalog)) as client:
        shown = client.get("/v1/credit/doctor/NOBODY", headers=bearer(catalog, "admin")).json()
    assert shown["score"] == 900
