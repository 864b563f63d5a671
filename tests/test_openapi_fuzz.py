"""schemathesis against the scorer's own ``/openapi.json`` (CONTRACT.md §6: part of the
contract): every operation, with schema-valid and schema-breaking requests.

Checks: no server error; every status code and response body as documented; a request
that breaks the schema is refused; and every 422 names each problem's field and reason.
Not checked: that every schema-valid request is accepted — the API refuses, with a 422
naming the fields, what OpenAPI cannot say (an inpatient settlement without its dates,
``fund_paid`` above ``total_amount``, a repeated ``line_no``, an invalid trace code).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from conftest import bearer
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from scoring_requests import reference_app

from serve.app import create_app
from serve.settings import Settings
from serve.store import create_store_engine, upgrade


@schemathesis.check
def a_422_names_its_fields(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """A 422 lists every problem with where it is (``loc``) and why (``msg``)."""
    if response.status_code != 422:
        return
    problems = response.json()["detail"]
    if not problems or not all(p.get("loc") and p.get("msg") for p in problems):
        raise AssertionError(f"a 422 that does not name its fields: {response.text[:300]}")


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    negative_data_rejection,
    a_422_names_its_fields,
]


def test_the_score_body_is_documented_as_a_fastapi_body_parameter(sqlite_url: str) -> None:
    """``POST /v1/score`` reads its body itself; its document says what FastAPI says of a
    ``SettlementIn`` body parameter: the request body, the 422, and the schemas of the
    models (``SettlementIn`` and what it nests) among the components."""
    upgrade(sqlite_url)
    engine = create_store_engine(sqlite_url)
    try:
        with TestClient(create_app(Settings(), engine=engine)) as client:
            ours = client.get("/openapi.json").json()
    finally:
        engine.dispose()
    theirs = reference_app().openapi()
    operation, expected = ours["paths"]["/v1/score"]["post"], theirs["paths"]["/v1/score"]["post"]
    assert operation["requestBody"] == expected["requestBody"]
    assert operation["responses"]["422"] == expected["responses"]["422"]
    assert "description" not in operation
    assert {"SettlementIn", "PatientIn", "ItemIn"} <= set(theirs["components"]["schemas"])
    for name, schema in theirs["components"]["schemas"].items():
        assert ours["components"]["schemas"][name] == schema, name
    assert list(ours["components"]["schemas"]) == sorted(ours["components"]["schemas"])


@pytest.mark.slow
def test_every_operation_survives_generated_requests(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    engine = create_store_engine(sqlite_url)
    app = create_app(Settings(), engine=engine)
    headers = bearer(engine, "admin")
    failures: list[tuple[str, str]] = []
    operations = []
    with TestClient(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            operation = result.ok()
            operations.append(operation.label)

            @given(case=operation.as_strategy())
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except Exception as error:
                failures.append((operation.label, str(error)[:2000]))
    engine.dispose()
    assert "POST /v1/score" in operations
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures)
