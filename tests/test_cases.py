"""Cases for inspectors (CONTRACT.md §6): filing from a screening and from online decisions,
the queue, the workflow, verdicts into labels and credit, the labels export, and who sees
what (role x region) on every case endpoint. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import bearer
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from features.batch import open_history
from features.flags import Flag, GroupMember
from features.load import read_table
from features.store import load_history
from serve import cases
from serve.app import create_app
from serve.cli import main
from serve.loading import load_parties
from serve.schemas import CaseStatus
from serve.settings import Settings
from serve.tables import calibration, case_events, case_flags, credit_verdicts, institutions, labels
from serve.tables import cases as cases_table
from traceability.store import drugs, products

REGION_A, REGION_B = "320102", "320205"
C1 = "81000010000000010000"
C2 = "81000010000000020000"


def _everyone(_region: str) -> bool:
    return True


# --- a screening of the province ------------------------------------------------------------


def read_screening(folder: Path) -> tuple[list[Flag], list[GroupMember]]:
    """The flags and group members a screening wrote (``flags.parquet``, ``groups.parquet``)."""
    frame = pd.read_parquet(folder / "flags.parquet")
    flags = [
        Flag(r.entity_type, r.entity_id, r.pattern, float(r.score), r.action,
             Decimal(r.amount_at_risk), json.loads(r.evidence))
        for r in frame.itertuples(index=False)
    ]  # fmt: skip
    groups = pd.read_parquet(folder / "groups.parquet")
    members = [GroupMember(*row) for row in groups.itertuples(index=False)]
    return flags, members


@pytest.mark.slow
def test_a_screening_files_one_case_per_entity_and_a_second_one_adds_nothing(
    store: Engine, province: Path, province_screened: Path
) -> None:
    con = open_history(province)
    try:
        with store.begin() as conn:  # the regions: institutions, patients, visits
            loaded = load_parties(con, conn)
            load_history(con, conn)
        with store.begin() as conn:  # loading them again changes nothing
            assert load_parties(con, conn) == loaded
            assert conn.execute(select(func.count()).select_from(institutions)).scalar_one() == 64
    finally:
        con.close()
    flags, members = read_screening(province_screened)
    entities = {(f.entity_type, f.entity_id) for f in flags}
    with store.begin() as conn:
        first = cases.file_screening(conn, flags, members)
    assert (first.cases_opened, first.flags_added) == (len(entities), len(flags))
    with store.begin() as conn:
        again = cases.file_screening(conn, flags, members)
    assert (again.cases_opened, again.flags_added, again.cases_touched) == (0, 0, 0)
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(cases_table)).scalar_one() == len(
            entities
        )
        assert conn.execute(select(func.count()).select_from(case_flags)).scalar_one() == len(flags)
        known = set(conn.execute(select(institutions.c.region_code)).scalars())
        rows = conn.execute(select(cases_table)).all()
        assert {r.region_code for r in rows} <= known  # every case has a region we know
        queue = cases.queue(conn, regions=None, limit=500)
        stored = {
            r.case_id: r
            for r in conn.execute(select(case_flags.c.case_id, case_flags.c.score,
                                         case_flags.c.amount_at_risk))
        }  # fmt: skip
        assert stored
        flags_of: dict[str, list[tuple[Decimal, Decimal]]] = {}
        for r in conn.execute(select(case_flags)):
            flags_of.setdefault(r.case_id, []).append((Decimal(r.score), Decimal(r.amount_at_risk)))
        one_region = cases.queue(conn, regions=frozenset({REGION_A}), limit=500)
    priorities = [c.priority for c in queue]
    assert priorities == sorted(priorities, reverse=True)  # the queue: highest expected loss first
    for case in queue:
        assert case.priority == cases.expected_loss(flags_of[case.case_id])[2]
        assert case.priority <= case.amount_at_risk
    assert one_region
    assert {c.region_code for c in one_region} == {REGION_A}
    groups = [c for c in queue if c.entity_type == "group"]
    assert groups
    assert all(c.patterns == ["group_admission"] for c in groups)


def test_expected_loss_combines_flags_as_independent_evidence() -> None:
    probability, amount, priority = cases.expected_loss(
        [(Decimal("0.5"), Decimal("100.00")), (Decimal("0.5"), Decimal("40.00"))]
    )
    assert (probability, amount, priority) == (Decimal("0.7500"), Decimal("100.00"),
                                               Decimal("75.00"))  # fmt: skip
    assert cases.expected_loss([(Decimal(1), Decimal("12.34"))])[2] == Decimal("12.34")
    assert cases.expected_loss([]) == (Decimal(0), Decimal(0), Decimal(0))


# --- online decisions and the API -----------------------------------------------------------


def settlement(settlement_id: str, institution: str, *codes: str, hour: int = 10) -> dict[str, Any]:
    return {
        "settlement_id": settlement_id,
        "institution_id": institution,
        "patient": {"patient_id": "U1", "gender": "F", "birth_date": "1960-05-01"},
        "settled_at": f"2025-03-01T{hour:02d}:00:00+08:00",
        "visit_type": "pharmacy",
        "total_amount": "48.00",
        "fund_paid": "30.00",
        "items": [
            {
                "line_no": 1,
                "item_type": "drug",
                "item_code": "D1",
                "quantity": 24 * len(codes),
                "unit_price": "2.00",
                "amount": "48.00",
                "trace_codes": list(codes),
            }
        ],
    }


@pytest.fixture
def world(store: Engine) -> Iterator[dict[str, Any]]:
    """Pharmacy P001 in region A received C1 and sold it (S1, passed); P002 in region B
    sold C1 again (S2: rejected, a case in B); P001 sold C2 it never received (S3:
    rejected, a case in A). Clients: settlement, inspectors of A and of B, admin."""
    with store.begin() as conn:
        conn.execute(drugs.insert(), [{"drug_code": "D1", "generic_name": "阿莫西林胶囊",
                                       "pack_units": 24}])  # fmt: skip
        conn.execute(products.insert(), [{"product_code": "8100001", "drug_code": "D1"}])
        conn.execute(
            institutions.insert(),
            [
                {"institution_id": "P001", "name": "玄武区药店", "kind": "pharmacy", "level": 0,
                 "region_code": REGION_A},
                {"institution_id": "P002", "name": "锡山区药店", "kind": "pharmacy", "level": 0,
                 "region_code": REGION_B},
            ],
        )  # fmt: skip
    app = create_app(Settings(), engine=store)
    with TestClient(app) as client:
        keys = {
            "settlement": bearer(store, "settlement"),
            "a": bearer(store, "inspector", REGION_A),
            "b": bearer(store, "inspector", REGION_B),
            "admin": bearer(store, "admin"),
        }
        event = {"trace_code": C1, "event_type": "purchase", "institution_id": "P001",
                 "event_at": "2025-02-01T09:00:00+08:00"}  # fmt: skip
        assert client.post("/v1/trace-events", json=[event], headers=keys["settlement"]).is_success
        decided = {}
        for hour, (sid, institution, code) in enumerate(
            (("S1", "P001", C1), ("S2", "P002", C1), ("S3", "P001", C2)), start=10
        ):
            answer = client.post(
                "/v1/score",
                json=settlement(sid, institution, code, hour=hour),
                headers=keys["settlement"],
            )
            assert answer.status_code == 200, answer.text
            decided[sid] = answer.json()["decision"]
        assert decided == {"S1": "pass", "S2": "reject", "S3": "reject"}
        yield {
            "client": client,
            "keys": keys,
            "A": cases.case_id_of("settlement", "S3"),
            "B": cases.case_id_of("settlement", "S2"),
        }


def test_online_decisions_file_settlement_cases_once(world: dict[str, Any], store: Engine) -> None:
    client, keys = world["client"], world["keys"]
    again = client.post(
        "/v1/score", json=settlement("S2", "P002", C1, hour=11), headers=keys["settlement"]
    )
    assert again.json()["decision"] == "reject"  # a replay: nothing filed twice
    with store.connect() as conn:
        rows = {r.entity_id: r for r in conn.execute(select(cases_table))}
        flags = conn.execute(select(case_flags).where(case_flags.c.case_id == world["B"])).all()
    assert set(rows) == {"S2", "S3"}  # S1 passed: no case
    assert (rows["S2"].region_code, rows["S3"].region_code) == (REGION_B, REGION_A)
    assert {f.pattern for f in flags} == {"duplicate_trace_code", "unpurchased_trace_code"}
    assert {f.source for f in flags} == {"online"}
    assert rows["S2"].priority == Decimal("48.00")  # rules: probability 1 x the line's amount
    # a screening finding the same settlement and pattern adds nothing; a new pattern is added
    same = Flag("settlement", "S2", "duplicate_trace_code", 1.0, "reject", Decimal("48.00"), {})
    other = Flag("settlement", "S2", "anomalous_settlement", 0.5, "review", Decimal(90), {})
    with store.begin() as conn:
        filed = cases.file_screening(conn, [same, other])
    assert (filed.cases_opened, filed.flags_added) == (0, 1)
    with store.connect() as conn:
        case = conn.execute(select(cases_table).where(cases_table.c.case_id == world["B"])).one()
    assert case.patterns == "anomalous_settlement|duplicate_trace_code|unpurchased_trace_code"
    assert case.priority == Decimal("90.00")  # noisy-OR 1.0 x the largest amount


def test_a_case_shows_its_codes_timeline_and_earlier_settlements(world: dict[str, Any]) -> None:
    client, keys = world["client"], world["keys"]
    detail = client.get(f"/v1/cases/{world['B']}", headers=keys["b"])
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["entity_id"] == "S2"
    assert body["status"] == "new"
    assert {f["pattern"] for f in body["flags"]} == {"duplicate_trace_code",
                                                   "unpurchased_trace_code"}  # fmt: skip
    assert all(f["words"] for f in body["flags"])
    [timeline] = body["trace_codes"]
    steps = [(s["event"], s["institution_id"], s["settlement_id"]) for s in timeline["steps"]]
    assert steps == [("received", "P001", None), ("sold", "P001", "S1"), ("billed", "P002", "S2")]
    assert timeline["steps"][-1]["elsewhere"] is True  # P002 never received the pack
    assert [s["settlement_id"] for s in body["earlier_settlements"]] == ["S1"]
    assert [e["kind"] for e in body["events"]] == ["filed"]


def test_the_workflow_a_verdict_becomes_a_label_and_moves_credit(
    world: dict[str, Any], store: Engine, store_url: str, tmp_path: Path
) -> None:
    client, a = world["client"], world["keys"]["a"]
    url = f"/v1/cases/{world['A']}"
    assert (
        client.post(f"{url}/status", json={"status": "in_review"}, headers=a).json()["status"]
        == "in_review"
    )
    assert client.post(f"{url}/status", json={"status": "in_review"}, headers=a).status_code == 409
    assert (
        client.post(f"{url}/assign", json={"assignee": "王稽核"}, headers=a).json()["assignee"]
        == "王稽核"
    )
    assert client.post(f"{url}/notes", json={"note": "电话核实"}, headers=a).status_code == 200
    assert (
        client.post(f"{url}/verdict", json={"verdict": "dismissed"}, headers=a).status_code == 422
    )
    confirmed = client.post(f"{url}/verdict", json={"verdict": "confirmed"}, headers=a)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "confirmed"
    assert (
        client.post(f"{url}/verdict", json={"verdict": "confirmed"}, headers=a).status_code == 409
    )
    assert client.post(f"{url}/status", json={"status": "new"}, headers=a).status_code == 409
    with store.connect() as conn:
        first = conn.execute(select(labels)).all()
    assert [(r.entity_id, r.pattern, r.label) for r in first] == [
        ("S3", "unpurchased_trace_code", 1)
    ]
    reopened = client.post(f"{url}/status", json={"status": "in_review", "reason": "申诉"},
                           headers=a)  # fmt: skip
    assert reopened.json()["status"] == "in_review"
    dismissed = client.post(f"{url}/verdict", json={"verdict": "dismissed", "note": "已补录进货"},
                            headers=a)  # fmt: skip
    assert dismissed.json()["status"] == "dismissed"
    with store.connect() as conn:
        after = conn.execute(select(labels)).all()
        kinds = conn.execute(
            select(case_events.c.kind).where(case_events.c.case_id == world["A"])
            .order_by(case_events.c.event_id)
        ).scalars().all()  # fmt: skip
        verdicts = conn.execute(select(credit_verdicts.c.verdict)).scalars().all()
    assert [(r.pattern, r.label) for r in after] == [("unpurchased_trace_code", 0)]  # latest wins
    assert kinds == ["filed", "status_changed", "assigned", "note", "verdict", "reopened",
                     "verdict"]  # fmt: skip
    assert sorted(verdicts) == ["confirmed", "dismissed"]  # credit received both
    out = tmp_path / "export" / "labels.parquet"
    assert cases.export_labels(store, out) == 1
    exported = read_table(out.parent, "labels")  # the contract's validation
    assert exported[["entity_type", "entity_id", "pattern", "label"]].values.tolist() == [
        ["settlement", "S3", "unpurchased_trace_code", 0]
    ]
    assert str(exported["decided_at"].dt.tz) == "Asia/Shanghai"
    csv = tmp_path / "csv" / "labels.csv"
    ran = CliRunner().invoke(
        main, ["cases", "labels", "--out", str(csv)], env={"FUNDGUARD_DATABASE_URL": store_url}
    )
    assert ran.exit_code == 0, ran.output
    assert read_table(csv.parent, "labels")["label"].tolist() == [0]


def test_the_service_refuses_illegal_moves(world: dict[str, Any], store: Engine) -> None:
    with pytest.raises(cases.IllegalTransition):
        cases.set_status(store, world["B"], CaseStatus.NEW, actor="t", visible=_everyone)
    with pytest.raises(cases.UnknownCase):
        cases.set_status(store, world["B"], CaseStatus.IN_REVIEW, actor="t",
                         visible=lambda region: region == REGION_A)  # fmt: skip
    with pytest.raises(cases.UnknownCase):
        cases.add_note(store, "C-nothing", "x", actor="t", visible=_everyone)


def test_taking_a_case_up_moves_and_assigns_it_together(
    world: dict[str, Any], store: Engine
) -> None:
    taken = cases.take(store, world["B"], actor="wang", visible=_everyone)
    assert (taken.status, taken.assignee) == (CaseStatus.IN_REVIEW, "wang")
    with pytest.raises(cases.IllegalTransition):  # in review already: neither step happens
        cases.take(store, world["B"], actor="li", visible=_everyone)
    with store.connect() as conn:
        row = conn.execute(select(cases_table).where(cases_table.c.case_id == world["B"])).one()
    assert (row.status, row.assignee) == ("in_review", "wang")


CASE_CALLS = (
    ("get", "/v1/cases/{case}", None),
    ("post", "/v1/cases/{case}/status", {"status": "in_review"}),
    ("post", "/v1/cases/{case}/assign", {"assignee": "x"}),
    ("post", "/v1/cases/{case}/notes", {"note": "x"}),
    ("post", "/v1/cases/{case}/verdict", {"verdict": "confirmed"}),
)
SEES = {"settlement": set(), "a": {"A"}, "b": {"B"}, "admin": {"A", "B"}}


def test_who_sees_what_on_every_case_endpoint(world: dict[str, Any]) -> None:
    client, keys = world["client"], world["keys"]
    for who, header in keys.items():
        listed = client.get("/v1/cases", headers=header)
        if who == "settlement":
            assert listed.status_code == 403
        else:
            mine = {c["case_id"] for c in listed.json()}
            assert mine == {world[r] for r in SEES[who]}, who
            other = REGION_B if who == "a" else REGION_A
            filtered = client.get("/v1/cases", params={"region": other}, headers=header).json()
            assert (filtered != []) == (who == "admin")  # outside the key's regions: empty
        for region in ("A", "B"):
            for method, path, body in CASE_CALLS:
                response = client.request(method, path.format(case=world[region]), json=body,
                                          headers=header)  # fmt: skip
                expected = 403 if who == "settlement" else 200 if region in SEES[who] else 404
                assert response.status_code == expected, (who, region, method, path)
        for sid, region in (("S2", "B"), ("S3", "A")):
            response = client.get(f"/v1/decisions/{sid}", headers=header)
            expected = 200 if who == "settlement" or region in SEES[who] else 404
            assert response.status_code == expected, (who, sid)
    assert client.get("/v1/cases").status_code == 401


def test_the_queue_filters_by_status_and_pattern(world: dict[str, Any]) -> None:
    client, admin = world["client"], world["keys"]["admin"]
    by_pattern = client.get("/v1/cases", params={"pattern": "duplicate_trace_code"},
                            headers=admin).json()  # fmt: skip
    assert [c["entity_id"] for c in by_pattern] == ["S2"]
    client.post(f"/v1/cases/{world['A']}/status", json={"status": "in_review"}, headers=admin)
    new = client.get("/v1/cases", params={"status": "new"}, headers=admin).json()
    assert [c["entity_id"] for c in new] == ["S2"]
    page = client.get("/v1/cases", params={"limit": 1, "offset": 1}, headers=admin).json()
    assert len(page) == 1
    assert client.get("/v1/cases", params={"region": "32"}, headers=admin).status_code == 422
    for case in client.get("/v1/cases", headers=admin).json():
        assert set(case) >= {"case_id", "entity_type", "entity_id", "patterns", "priority",
                             "amount_at_risk", "region_code", "status", "created_at"}  # fmt: skip


# --- probabilities calibrated by the verdicts -----------------------------------------------


def test_calibration_shrinks_the_verdicts_toward_the_flags_score() -> None:
    few = cases.fit_calibration([("anomalous_settlement", Decimal("0.99"), 0)] * 2)
    # two dismissals against a prior of 10 verdicts at 0.99: (9.9 + 0) / 12
    assert few.probability("anomalous_settlement", Decimal("0.99")) == Decimal("0.8250")
    many = cases.fit_calibration(
        [("anomalous_settlement", Decimal("0.99"), 1)] * 10
        + [("anomalous_settlement", Decimal("0.99"), 0)] * 90
    )
    assert many.probability("anomalous_settlement", Decimal("0.99")) == Decimal(
        "0.1809"
    )  # (9.9 + 10) / 110
    assert many.probability("duplicate_trace_code", Decimal(1)) == Decimal(1)  # no verdicts
    weak = cases.fit_calibration([("x", Decimal("0.5"), 1)] * 2, prior_strength=1)
    assert weak.probability("x", Decimal("0.5")) == Decimal("0.8333")  # (0.5 + 2) / 3
    with pytest.raises(ValueError, match="prior_strength"):
        cases.fit_calibration([], prior_strength=0)
    with pytest.raises(ValueError, match="label 2"):
        cases.fit_calibration([("x", Decimal(1), 2)])


def test_a_pattern_with_enough_verdicts_is_calibrated_per_score_bin() -> None:
    low = [("resale_hub", Decimal("0.6000"), 0)] * 40  # low scores: dismissed
    high = [("resale_hub", Decimal("0.9000"), 1)] * 35 + [("resale_hub", Decimal("0.9500"), 1)] * 5
    fitted = cases.fit_calibration(low + high, min_bin_verdicts=30)
    bins = fitted.bins["resale_hub"]
    assert [(b.low, b.verdicts, b.confirmed) for b in bins] == [
        (Decimal(0), 40, 0),
        (Decimal("0.9000"), 40, 40),
    ]  # two bins of 40 (a third would hold under 30, and ties are never split)
    assert fitted.probability("resale_hub", Decimal("0.6")) == Decimal("0.1200")  # 6 / 50
    assert fitted.probability("resale_hub", Decimal("0.95")) == Decimal("0.9900")  # 49.5 / 50
    one = cases.fit_calibration(low + high, min_bin_verdicts=41)
    assert [b.verdicts for b in one.bins["resale_hub"]] == [80]


def _flag(entity: str, pattern: str, score: float, amount: str) -> Flag:
    return Flag("settlement", entity, pattern, score, "review", Decimal(amount), {})


def test_recalibrate_reprioritises_the_open_cases_by_the_verdicts(
    store: Engine, store_url: str
) -> None:
    anomalous = [_flag(f"A{i:02d}", "anomalous_settlement", 0.999, "900.00") for i in range(30)]
    dup = [_flag(f"D{i:02d}", "duplicate_trace_code", 1.0, "500.00") for i in range(5)]
    with store.begin() as conn:
        cases.file_screening(conn, anomalous + dup)
        assert cases.recalibrate(conn).reprioritised == 0  # no verdict yet: nothing moves
        top = cases.queue(conn, regions=None, limit=5)
    assert {c.entity_id[0] for c in top} == {"A"}  # by amount, the anomalies come first
    for flag in anomalous[:20]:  # inspectors dismiss 19 of the first 20 anomalies
        verdict = CaseStatus.CONFIRMED if flag.entity_id == "A00" else CaseStatus.DISMISSED
        cases.record_verdict(store, cases.case_id_of("settlement", flag.entity_id), verdict,
                             "核查", actor="t", visible=_everyone, scheme=None)  # fmt: skip
    with store.connect() as conn:
        closed_before = conn.execute(
            select(cases_table.c.case_id, cases_table.c.priority, cases_table.c.updated_at)
            .where(cases_table.c.status.in_(("confirmed", "dismissed")))
        ).all()  # fmt: skip
    with store.begin() as conn:
        done = cases.recalibrate(conn)
    assert (done.open_cases, done.reprioritised) == (15, 10)  # the duplicates keep 1.0
    [only] = done.calibration.bins["anomalous_settlement"]
    assert (only.verdicts, only.confirmed, only.prior_strength) == (20, 1, Decimal(10))
    expected = Decimal("0.3663")  # (10 x 0.999 + 1) / (10 + 20)
    with store.connect() as conn:
        queue = cases.queue(conn, regions=None, status=CaseStatus.NEW, limit=50)
        closed_after = conn.execute(
            select(cases_table.c.case_id, cases_table.c.priority, cases_table.c.updated_at)
            .where(cases_table.c.status.in_(("confirmed", "dismissed")))
        ).all()  # fmt: skip
        stored = conn.execute(select(calibration)).all()
    assert sorted(closed_after) == sorted(closed_before)  # a decided case keeps its figures
    assert [c.entity_id[0] for c in queue] == ["D"] * 5 + ["A"] * 10  # now the rules first
    for case in queue:
        if case.entity_id.startswith("A"):
            assert (Decimal(str(case.probability)), case.priority) == (expected,
                                                                       Decimal("329.67"))  # fmt: skip
    assert [(r.pattern, r.verdicts, r.confirmed) for r in stored] == [
        ("anomalous_settlement", 20, 1)
    ]
    with store.begin() as conn:  # again, with nothing new: nothing moves
        assert cases.recalibrate(conn).reprioritised == 0
        # a flag filed after the calibration is calibrated on filing
        cases.file_screening(conn, [_flag("A99", "anomalous_settlement", 0.999, "1000.00")])
        new = conn.execute(
            select(cases_table).where(cases_table.c.entity_id == "A99")
        ).one()  # fmt: skip
    assert (new.probability, new.priority) == (expected, Decimal("366.30"))
    ran = CliRunner().invoke(main, ["cases", "recalibrate", "--prior-strength", "1"],
                             env={"FUNDGUARD_DATABASE_URL": store_url})  # fmt: skip
    assert ran.exit_code == 0, ran.output
    assert "anomalous_settlement\t0.0000\t20\t1\t0.0952" in ran.output  # (0.999 + 1) / 21
    assert "11 of 16 open case(s) re-prioritised" in ran.output
    refused = CliRunner().invoke(main, ["cases", "recalibrate", "--prior-strength", "0"],
                                 env={"FUNDGUARD_DATABASE_URL": store_url})  # fmt: skip
    assert refused.exit_code == 2
    assert "--prior-strength" in refused.output
