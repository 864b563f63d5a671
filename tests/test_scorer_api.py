"""The scorer's HTTP API (CONTRACT.md §6), first slice: score, reversal, trace events, health.

Runs the real app (TestClient) over a real store, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import bearer
from fastapi.testclient import TestClient
from scoring_requests import purchase, reference_app, settlement
from sqlalchemy import Engine, func, select

from features.store import services
from rules.base import shipped_rulebase
from serve.app import create_app
from serve.settings import Settings
from serve.tables import blacklist, decisions, rule_executions
from traceability.codes import gs1_hri, gs1_raw
from traceability.store import drugs, ledger_entries, products

GTIN = "06901234567892"
C1 = "81000010000000010000"
C2 = "81000010000000020000"


@pytest.fixture
def client(store: Engine) -> Iterator[TestClient]:
    with store.begin() as conn:
        conn.execute(
            drugs.insert(),
            [
                {"drug_code": "D1", "generic_name": "阿莫西林胶囊", "pack_units": 24},
                {"drug_code": "D3", "generic_name": "奥希替尼片", "pack_units": 30},
            ],
        )
        conn.execute(
            products.insert(),
            [
                {"product_code": "8100001", "drug_code": "D1"},
                {"product_code": GTIN, "drug_code": "D3"},
            ],
        )
    with TestClient(
        create_app(Settings(), engine=store), headers=bearer(store, "settlement")
    ) as client:
        yield client


def test_a_clean_settlement_passes_and_consumes_its_codes(
    client: TestClient, store: Engine
) -> None:
    purchase(client, C1)
    answer = client.post("/v1/score", json=settlement("S1", C1)).json()
    assert answer["decision"] == "pass"
    assert answer["hits"] == []
    assert answer["degraded"] is True  # no model registered: rules and ledger alone
    assert answer["degraded_reason"] == "no model is registered as champion"
    assert answer["model"] == {"name": None, "version": None, "score": None}
    with store.connect() as conn:
        assert conn.execute(select(ledger_entries.c.canonical_code)).scalars().all() == [C1]


def test_scoring_again_answers_the_same_and_changes_nothing(
    client: TestClient, store: Engine
) -> None:
    purchase(client, C1)
    first = client.post("/v1/score", json=settlement("S1", C1))
    again = client.post("/v1/score", json=settlement("S1", C1))
    assert first.content == again.content
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(decisions)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(ledger_entries)).scalar() == 1


def test_a_pack_sold_twice_is_rejected_and_a_reversal_frees_it(client: TestClient) -> None:
    purchase(client, C1)
    assert client.post("/v1/score", json=settlement("S1", C1)).json()["decision"] == "pass"
    second = client.post("/v1/score", json=settlement("S2", C1)).json()
    assert second["decision"] == "reject"
    assert [(h["pattern"], h["rule_id"], h["line_no"]) for h in second["hits"]] == [
        ("duplicate_trace_code", "TC002", 1)
    ]
    reversal = client.post(
        "/v1/settlements/S1/reversal", json={"reversed_at": "2025-03-02T09:00:00+08:00"}
    )
    assert reversal.json()["released_codes"] == 1
    repeat = client.post(
        "/v1/settlements/S1/reversal", json={"reversed_at": "2025-03-03T09:00:00+08:00"}
    )
    assert repeat.json() == reversal.json()
    later = settlement("S3", C1, settled_at="2025-03-04T10:00:00+08:00")
    assert client.post("/v1/score", json=later).json()["decision"] == "pass"


def test_gs1_spellings_of_one_pack_are_one_code(client: TestClient) -> None:
    hri, raw = gs1_hri(GTIN, "AB12CD", lot="L7"), gs1_raw(GTIN, "AB12CD", order=("21", "01"))
    purchase(client, hri)
    body = settlement("S1", raw, drug="D3")
    body["items"][0]["quantity"] = 30
    assert client.post("/v1/score", json=body).json()["decision"] == "pass"
    body = settlement("S2", hri, drug="D3")
    body["items"][0]["quantity"] = 30
    assert client.post("/v1/score", json=body).json()["hits"][0]["pattern"] == (
        "duplicate_trace_code"
    )


def test_every_code_problem_is_a_hit_per_line(client: TestClient) -> None:
    purchase(client, C1)
    body = settlement("S1", C1)
    body["items"].append({**body["items"][0], "line_no": 2, "trace_codes": []})
    body["items"].append({**body["items"][0], "line_no": 3, "trace_codes": [C2]})
    answer = client.post("/v1/score", json=body).json()
    assert answer["decision"] == "reject"
    assert sorted((h["line_no"], h["pattern"]) for h in answer["hits"]) == [
        (2, "missing_trace_code"),
        (3, "unpurchased_trace_code"),
    ]


def test_a_rejected_settlement_consumes_nothing(client: TestClient) -> None:
    purchase(client, C1)
    body = settlement("S1", C1)
    body["items"].append({**body["items"][0], "line_no": 2, "trace_codes": []})
    assert client.post("/v1/score", json=body).json()["decision"] == "reject"
    assert client.post("/v1/score", json=settlement("S2", C1)).json()["decision"] == "pass"


BAD_INPUTS = [
    ("settlement_id", lambda b: b.pop("settlement_id"), ["body", "settlement_id"]),
    ("money with 3 decimals", lambda b: b.update(total_amount="1.001"), ["body", "total_amount"]),
    ("negative money", lambda b: b.update(fund_paid="-1"), ["body", "fund_paid"]),
    ("unknown field", lambda b: b.update(colour="red"), ["body", "colour"]),
    ("bad gender", lambda b: b["patient"].update(gender="X"), ["body", "patient", "gender"]),
    ("bad visit type", lambda b: b.update(visit_type="home"), ["body", "visit_type"]),
    ("unparseable time", lambda b: b.update(settled_at="yesterday"), ["body", "settled_at"]),
    ("no items", lambda b: b.update(items=[]), ["body", "items"]),
    ("zero quantity", lambda b: b["items"][0].update(quantity=0), ["body", "items", 0, "quantity"]),
    ("fund_paid above total", lambda b: b.update(fund_paid="99.00"), ["body"]),
    ("inpatient without dates", lambda b: b.update(visit_type="inpatient"), ["body"]),
]


@pytest.mark.parametrize(("name", "corrupt", "loc"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_422_naming_the_field_and_nothing_is_stored(
    client: TestClient, store: Engine, name: str, corrupt: Any, loc: list[Any]
) -> None:
    body = copy.deepcopy(settlement("S1", C1))
    corrupt(body)
    response = client.post("/v1/score", json=body)
    assert response.status_code == 422, name
    assert loc in [problem["loc"] for problem in response.json()["detail"]]
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(decisions)).scalar() == 0


def test_every_problem_is_named_at_once(client: TestClient) -> None:
    body = settlement("S1", C1, visit_type="home", total_amount="x")
    body["patient"]["gender"] = "X"
    locs = [p["loc"] for p in client.post("/v1/score", json=body).json()["detail"]]
    assert ["body", "visit_type"] in locs
    assert ["body", "total_amount"] in locs
    assert ["body", "patient", "gender"] in locs


def test_trace_events_are_validated_whole_and_recorded_once(client: TestClient) -> None:
    at = "2025-02-01T09:00:00+08:00"
    good = {"trace_code": C1, "event_type": "purchase", "institution_id": "P001", "event_at": at}
    bad = {**good, "trace_code": "(01)06901234567893(21)X"}
    response = client.post("/v1/trace-events", json=[good, bad])
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", 1, "trace_code"]
    assert "check digit" in response.json()["detail"][0]["msg"]
    assert client.post("/v1/trace-events", json=[good]).json() == {"received": 1, "recorded": 1}
    assert client.post("/v1/trace-events", json=[good]).json() == {"received": 1, "recorded": 0}


def test_a_reversal_of_an_unknown_settlement_is_a_404(client: TestClient) -> None:
    response = client.post("/v1/settlements/NOPE/reversal", json={"reversed_at": "2025-03-01"})
    assert response.status_code == 404
    assert "NOPE" in response.json()["detail"]


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"


def test_a_bad_code_hit_says_why_the_code_is_invalid(client: TestClient) -> None:
    body = settlement("S1", "(01)06901234567893(21)X1", drug="D3")
    hit = client.post("/v1/score", json=body).json()["hits"][0]
    assert hit["rule_id"] == "TC001"
    assert "check digit" in hit["message"]


def service_settlement(settlement_id: str, code: str, gender: str, at: str) -> dict[str, Any]:
    body = settlement(settlement_id, settled_at=at)
    body["patient"]["gender"] = gender
    body["visit_type"] = "outpatient"
    body["items"] = [
        {"line_no": 1, "item_type": "service", "item_code": code, "quantity": 1,
         "unit_price": "48.00", "amount": "48.00"}
    ]  # fmt: skip
    return body


@pytest.fixture
def knowledge(store: Engine) -> None:
    with store.begin() as conn:
        conn.execute(
            services.insert(),
            [
                {"service_code": "PSA", "name": "前列腺特异性抗原", "gender_restriction": "M",
                 "max_times": None, "period_days": None},
                {"service_code": "HBA1C", "name": "糖化血红蛋白", "gender_restriction": None,
                 "max_times": 1, "period_days": 90},
            ],
        )  # fmt: skip


@pytest.mark.usefixtures("knowledge")
def test_the_catalog_rules_run_online(client: TestClient) -> None:
    psa = client.post("/v1/score", json=service_settlement("S1", "PSA", "F", "2025-03-01")).json()
    assert psa["decision"] == "review"
    assert [(h["rule_id"], h["pattern"], h["action"]) for h in psa["hits"]] == [
        ("GR001", "gender_restriction", "review")
    ]
    first = service_settlement("S2", "HBA1C", "F", "2025-03-01T10:00:00+08:00")
    again = service_settlement("S3", "HBA1C", "F", "2025-05-29T10:00:00+08:00")  # 89 days
    later = service_settlement("S4", "HBA1C", "F", "2025-08-30T10:00:00+08:00")
    assert client.post("/v1/score", json=first).json()["decision"] == "pass"
    assert client.post("/v1/score", json=again).json()["hits"][0]["rule_id"] == "OF001"
    assert client.post("/v1/score", json=later).json()["decision"] == "pass"


def test_every_rule_execution_is_recorded_with_the_rule_base(
    client: TestClient, store: Engine
) -> None:
    purchase(client, C1)
    client.post("/v1/score", json=settlement("S1", C1))
    with store.connect() as conn:
        executions = conn.execute(
            select(rule_executions.c.rule_id, rule_executions.c.outcome)
        ).all()
        stamp = conn.execute(
            select(decisions.c.rulebase_version, decisions.c.rulebase_sha256)
        ).one()
    rulebase = shipped_rulebase()
    assert sorted(r for r, _ in executions) == sorted(r.id for r in rulebase.enabled)
    assert {o for _, o in executions} == {"no_hit"}
    assert stamp == (rulebase.version, rulebase.checksum)


def test_a_rule_that_errors_never_breaks_the_decision(
    client: TestClient, store: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("the knowledge base is unreachable")

    monkeypatch.setattr("rules.online._Evaluation._gender_facts", broken)
    purchase(client, C1)
    answer = client.post("/v1/score", json=settlement("S1", C1)).json()
    assert answer["decision"] == "pass"
    with store.connect() as conn:
        outcome, error = conn.execute(
            select(rule_executions.c.outcome, rule_executions.c.error).where(
                rule_executions.c.rule_id == "GR001"
            )
        ).one()
    assert outcome == "error"
    assert "unreachable" in error


def test_a_blacklisted_institution_is_rejected_and_takes_no_pack(
    client: TestClient, store: Engine
) -> None:
    purchase(client, C1)
    with store.begin() as conn:
        conn.execute(
            blacklist.insert().values(
                institution_id="P001", reason="暂停医保服务协议", added_at=datetime.now(UTC)
            )
        )
    answer = client.post("/v1/score", json=settlement("S1", C1)).json()
    assert answer["decision"] == "reject"
    assert [h["rule_id"] for h in answer["hits"]] == ["BL001"]
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ledger_entries)).scalar() == 0


def test_the_black_list_is_managed_by_the_admin_endpoints(
    client: TestClient, store: Engine
) -> None:
    admin = bearer(store, "admin")
    purchase(client, C1)
    listed = client.put(
        "/v1/admin/blacklist/P001", json={"reason": "暂停医保服务协议"}, headers=admin
    )
    assert listed.status_code == 200
    assert listed.json()["reason"] == "暂停医保服务协议"
    entries = client.get("/v1/admin/blacklist", headers=admin).json()
    assert [e["institution_id"] for e in entries] == ["P001"]
    assert client.post("/v1/score", json=settlement("S1", C1)).json()["decision"] == "reject"
    assert client.delete("/v1/admin/blacklist/P001", headers=admin).status_code == 204
    assert client.delete("/v1/admin/blacklist/P001", headers=admin).status_code == 404
    assert client.post("/v1/score", json=settlement("S2", C1)).json()["decision"] == "pass"
    bad = client.put("/v1/admin/blacklist/P001", json={"reason": ""}, headers=admin)
    assert bad.status_code == 422


def test_metrics_count_requests_decisions_and_rule_hits(client: TestClient) -> None:
    purchase(client, C1)
    client.post("/v1/score", json=settlement("S1", C1))
    client.post("/v1/score", json=settlement("S2", C1))  # a duplicate: TC002
    client.post("/v1/settlements/S1/reversal", json={"reversed_at": "2025-03-02T09:00:00+08:00"})
    text = client.get("/metrics").text
    assert 'fundguard_decisions_total{decision="pass"} 1.0' in text
    assert 'fundguard_decisions_total{decision="reject"} 1.0' in text
    assert 'fundguard_rule_hits_total{action="reject",rule_id="TC002"} 1.0' in text
    assert 'route="/v1/settlements/{settlement_id}/reversal"' in text  # the route, not the id
    assert 'fundguard_request_seconds_count{method="POST",route="/v1/score"} 2.0' in text


def test_a_past_decision_is_explained(client: TestClient) -> None:
    purchase(client, C1)
    answer = client.post("/v1/score", json=settlement("S1", C1)).json()
    client.post("/v1/score", json=settlement("S2", C1))  # the pack again: rejected
    client.post("/v1/settlements/S1/reversal", json={"reversed_at": "2025-03-02T09:00:00+08:00"})

    explained = client.get("/v1/decisions/S1").json()
    assert explained["answer"] == answer
    assert explained["reversal"]["released_codes"] == 1
    rulebase = shipped_rulebase()
    assert explained["rulebase"] == {"version": rulebase.version, "sha256": rulebase.checksum}
    assert {e["rule_id"] for e in explained["rule_executions"]} == {r.id for r in rulebase.enabled}
    assert explained["settled_at"] == "2025-03-01T10:00:00+08:00"
    rejected = client.get("/v1/decisions/S2").json()
    assert rejected["answer"]["decision"] == "reject"
    assert [e["outcome"] for e in rejected["rule_executions"] if e["rule_id"] == "TC002"] == ["hit"]
    assert rejected["reversal"] is None
    missing = client.get("/v1/decisions/S9")
    assert missing.status_code == 404
    assert "S9" in missing.json()["detail"]


def test_a_repeated_request_is_counted_apart_and_every_decision_is_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    purchase(client, C1)
    with caplog.at_level("INFO", logger="fundguard.scorer"):
        client.post("/v1/score", json=settlement("S1", C1))
        client.post("/v1/score", json=settlement("S1", C1))
    text = client.get("/metrics").text
    assert 'fundguard_decisions_total{decision="pass"} 1.0' in text
    assert "fundguard_replayed_answers_total 1.0" in text
    logged = [r for r in caplog.records if r.name == "fundguard.scorer"]
    assert [(r.settlement_id, r.replayed) for r in logged] == [("S1", False), ("S1", True)]  # type: ignore[attr-defined]
    assert logged[0].decision == "pass"  # type: ignore[attr-defined]


def test_the_log_lines_are_json_objects_naming_the_settlement() -> None:
    """The formatter ``fundguard serve`` configures, built as ``dictConfig`` builds it, on a
    logger of its own (the test leaves the process's logging as it found it)."""
    import importlib
    import io
    import json
    import logging

    from serve.logs import log_config

    options = dict(log_config()["formatters"]["json"])
    module, _, name = options.pop("()").rpartition(".")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(getattr(importlib.import_module(module), name)(**options))
    logger = logging.getLogger("fundguard.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    extra = {
        "settlement_id": "S1", "institution_id": "H320102 第一医院", "decision": "reject",
        "rules": ["TC002", "R7"], "degraded": True, "model_score": None,
    }  # fmt: skip
    try:
        logger.warning("decision", extra=extra)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert {k: record[k] for k in extra} == extra
    assert record["message"] == "decision"
    assert record["level"] == "WARNING"
    assert record["logger"] == "fundguard.test-json"
    assert "time" in record
    assert "process" in record


ENDPOINTS = [
    ("POST", "/v1/score", {"settlement"}),
    ("POST", "/v1/settlements/S1/reversal", {"settlement"}),
    ("POST", "/v1/trace-events", {"settlement"}),
    ("GET", "/v1/decisions/S1", {"settlement", "inspector"}),
    ("GET", "/v1/admin/blacklist", set()),
    ("PUT", "/v1/admin/blacklist/P001", set()),
    ("DELETE", "/v1/admin/blacklist/P001", set()),
]


@pytest.mark.parametrize(
    ("method", "path", "roles"), ENDPOINTS, ids=[e[1] + " " + e[0] for e in ENDPOINTS]
)
def test_every_endpoint_checks_the_callers_role(
    client: TestClient, store: Engine, method: str, path: str, roles: set[str]
) -> None:
    """No key: 401; a role the endpoint does not serve: 403; its roles and admin: not."""
    for role in ("settlement", "inspector", "admin"):
        headers = bearer(store, role, "320102") if role == "inspector" else bearer(store, role)
        status = client.request(method, path, headers=headers, json={}).status_code
        if role == "admin" or role in roles:
            assert status not in (401, 403), (role, status)
        else:
            assert status == 403, (role, status)
    anonymous = TestClient(client.app).request(method, path, json={})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    forged = client.request(method, path, headers={"Authorization": "Bearer fg_00000000_nope"})
    assert forged.status_code == 401


def test_a_revoked_key_stops_working(store: Engine) -> None:
    from serve.keys import revoke_key

    headers = bearer(store, "settlement")
    key_id = headers["Authorization"].split("_")[1]
    app = create_app(Settings(), engine=store)
    with TestClient(app, headers=headers) as client:
        client.app.state.keys.cache_seconds = 0  # type: ignore[attr-defined]
        assert client.post("/v1/trace-events", json=[]).status_code == 200
        assert revoke_key(store, key_id)
        assert client.post("/v1/trace-events", json=[]).status_code == 401


def _valid(settlement_id: str) -> bytes:
    return json.dumps(settlement(settlement_id, C1)).encode()


JSON_TYPE = "application/json"
RAW_BODIES = [  # name, content type, body
    ("not JSON", JSON_TYPE, lambda i: b"{bad}"),
    ("cut short", JSON_TYPE, lambda i: _valid(i)[:40]),
    ("trailing garbage", JSON_TYPE, lambda i: _valid(i) + b" x"),
    ("blank", JSON_TYPE, lambda i: b"   "),
    ("empty", JSON_TYPE, lambda i: b""),
    ("an array", JSON_TYPE, lambda i: b"[]"),
    ("a string", JSON_TYPE, lambda i: b'"S1"'),
    ("null", JSON_TYPE, lambda i: b"null"),
    ("an empty object", JSON_TYPE, lambda i: b"{}"),
    ("not UTF-8", JSON_TYPE, lambda i: b'{"settlement_id": "\xff"}'),
    ("a repeated key", JSON_TYPE, lambda i: _valid(i)[:-1] + b', "visit_type": "home"}'),
    ("an unknown field", JSON_TYPE, lambda i: _valid(i)[:-1] + b', "foo": 1}'),
    ("three problems", JSON_TYPE, lambda i: _valid(i).replace(b'"F"', b'"X"').replace(b'"pharmacy"', b'"home"').replace(b'"48.00"', b'"x"', 1)),
    ("a byte order mark", JSON_TYPE, lambda i: b"\xef\xbb\xbf" + _valid(i)),
    ("UTF-16", JSON_TYPE, lambda i: _valid(i).decode().encode("utf-16")),
    ("valid", JSON_TYPE, _valid),
    ("valid, charset", "application/json; charset=utf-8", _valid),
    ("valid, +json", "application/problem+json", _valid),
    ("valid, capitals", "Application/JSON", _valid),
    ("not JSON, charset", "application/json; charset=utf-8", lambda i: b"{bad}"),
    ("valid, text/plain", "text/plain", _valid),
    ("valid, no content type", None, _valid),
    ("empty, text/plain", "text/plain", lambda i: b""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content_type", "make"), RAW_BODIES, ids=[b[0] for b in RAW_BODIES]
)
def test_a_body_is_read_as_fastapi_reads_a_body_parameter(
    client: TestClient, name: str, content_type: str | None, make: Any
) -> None:
    """Same status as FastAPI's own reading of a ``SettlementIn`` parameter, and for a bad
    body the same answer: every problem, located under ``body`` as FastAPI locates it."""
    purchase(client, C1)
    headers = {"Content-Type": content_type} if content_type else {}
    content = make("S1")
    with TestClient(reference_app(), raise_server_exceptions=False) as reference:
        expected = reference.post("/v1/score", content=content, headers=headers)
    got = client.post("/v1/score", content=content, headers=headers)
    assert got.status_code == expected.status_code, (name, got.text, expected.text)
    if expected.status_code == 200:
        assert got.json()["settlement_id"] == "S1"
    else:
        assert got.json() == expected.json()
        assert got.headers["content-type"] == expected.headers["content-type"]


def test_the_request_sha256_is_of_the_bytes_sent(client: TestClient) -> None:
    purchase(client, C1)
    raw = b" " + json.dumps(settlement("S1", C1), indent=2, ensure_ascii=False).encode() + b"\n"
    sent = client.post("/v1/score", content=raw, headers={"Content-Type": JSON_TYPE})
    assert sent.status_code == 200
    stored = client.get("/v1/decisions/S1").json()["request_sha256"]
    assert stored == hashlib.sha256(raw).hexdigest()


def test_the_key_is_checked_before_the_body_is_read(client: TestClient, store: Engine) -> None:
    """No key: a 401, another role's key: a 403, whatever the body (even one that is not
    JSON): nothing of the request is read for a caller who may not make it."""
    inspector = bearer(store, "inspector", "320102")
    for body in (b"{bad}", b"", b"[]", b'{"settlement_id": "\xff"}', _valid("S1")):
        headers = {"Content-Type": JSON_TYPE}
        anonymous = TestClient(client.app).post("/v1/score", content=body, headers=headers)
        assert anonymous.status_code == 401, body
        assert anonymous.headers["www-authenticate"] == "Bearer"
        other = client.post("/v1/score", content=body, headers={**headers, **inspector})
        assert other.status_code == 403, body


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Basic dXNlcjpwYXNz", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        ("Bearer fg_00000000_nope", 401),
        ("Bearer nope", 401),
        ("bearer {key}", 200),
        ("BEARER {key}", 200),
        ("Bearer {key}  ", 200),
        ("Bearer {key}", 200),
    ],
)
def test_the_authorization_header_is_read_as_http_bearer_reads_it(
    client: TestClient, store: Engine, authorization: str | None, status: int
) -> None:
    key = bearer(store, "settlement")["Authorization"].removeprefix("Bearer ")
    headers = {} if authorization is None else {"Authorization": authorization.format(key=key)}
    purchase(client, C1)
    answer = TestClient(client.app).post("/v1/score", json=settlement("S1", C1), headers=headers)
    assert answer.status_code == status, answer.text
    if status == 401:
        assert answer.headers["www-authenticate"] == "Bearer"


def test_metrics_count_every_answer_with_its_route_and_status(store: Engine) -> None:
    """Whatever answered it: a route (templated), no route (``unmatched``), a validation
    error, an error the app did not handle (Starlette's 500); and none stays in flight."""
    app = create_app(Settings(), engine=store)

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/v1/broken/{n}", broken)
    with TestClient(app, raise_server_exceptions=False, headers=bearer(store, "settlement")) as c:
        assert c.get("/v1/nowhere").status_code == 404
        assert c.post("/v1/score", content=b"{bad}").status_code == 422
        assert c.get("/v1/broken/1").status_code == 500
        assert c.get("/v1/broken/2").status_code == 500
        assert c.get("/healthz").status_code == 200
        text = c.get("/metrics").text
    for sample in (
        'fundguard_requests_total{method="GET",route="unmatched",status="404"} 1.0',
        'fundguard_requests_total{method="POST",route="/v1/score",status="422"} 1.0',
        'fundguard_requests_total{method="GET",route="/v1/broken/{n}",status="500"} 2.0',
        'fundguard_requests_total{method="GET",route="/healthz",status="200"} 1.0',
        'fundguard_request_seconds_count{method="GET",route="/v1/broken/{n}"} 2.0',
        'fundguard_request_seconds_bucket{le="2.5",method="POST",route="/v1/score"} 1.0',
        "fundguard_requests_in_flight 1.0",  # the scrape itself
    ):
        assert sample in text, sample
