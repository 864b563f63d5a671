"""The champion model in ``/v1/score``: its score in every answer, a high one turned into
``review``, the challenger in shadow, and degraded answers when the model is missing,
corrupt, trained on other features or over its time budget.

A model is trained on the small simulated province and registered in a temporary MLflow
store once for the module; the scorer runs over a real store (SQLite and PostgreSQL).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import bearer
from fastapi.testclient import TestClient
from scoring_requests import purchase, settlement
from sqlalchemy import Engine, select

from features.featureset import FeatureSet
from features.settlement_features import SETTLEMENT_FEATURES
from models import registry
from models.supervised import TrainingResult
from serve.app import create_app
from serve.settings import Settings
from serve.tables import decisions
from traceability.store import drugs, ledger_entries, products

pytestmark = pytest.mark.slow  # a fresh MLflow store takes ~10 s to create

CODE = "81000010000000010000"


@pytest.fixture(scope="module")
def champion(trained: TrainingResult, tracking_uri: str) -> str:
    """The version registered and promoted as ``champion`` of fundguard-settlement."""
    logged = registry.log_training_run(trained, tracking_uri=tracking_uri, plots={})
    version = registry.register(logged, tracking_uri=tracking_uri)
    registry.promote(registry.MODEL_NAME, version, tracking_uri=tracking_uri)
    return version


def scorer(store: Engine, tracking_uri: str, **settings: Any) -> TestClient:
    with store.begin() as conn:
        if conn.execute(select(drugs.c.drug_code)).first() is None:
            conn.execute(
                drugs.insert(),
                [{"drug_code": "D1", "generic_name": "阿莫西林胶囊", "pack_units": 24}],
            )
            conn.execute(products.insert(), [{"product_code": "8100001", "drug_code": "D1"}])
    # a generous budget (this machine is shared): only the budget test sets a tight one
    settings = {"model_budget_ms": 2000.0, **settings}
    app = create_app(Settings(mlflow_tracking_uri=tracking_uri, **settings), engine=store)
    return TestClient(app, headers=bearer(store, "settlement"))


@pytest.fixture
def client(store: Engine, tracking_uri: str, champion: str) -> Iterator[TestClient]:
    with scorer(store, tracking_uri) as client:
        yield client


def test_the_champion_scores_every_settlement_and_the_decision_records_it(
    client: TestClient, store: Engine, champion: str, trained: TrainingResult
) -> None:
    assert f"version {champion}" in client.get("/readyz").json()["model"]
    purchase(client, CODE)
    answer = client.post("/v1/score", json=settlement("S1", CODE)).json()
    assert answer["degraded_reason"] is None
    assert answer["degraded"] is False
    assert answer["model"]["name"] == registry.MODEL_NAME
    assert answer["model"]["version"] == champion
    score = answer["model"]["score"]
    assert 0.0 <= score <= 1.0
    assert answer["risk_score"] == pytest.approx(round(score, 4))
    # a small bill, its code received and sold once: the model does not ask for review
    assert score < trained.model.review_threshold
    assert answer["decision"] == "pass"
    with store.connect() as conn:
        row = conn.execute(select(decisions).where(decisions.c.settlement_id == "S1")).one()
    assert (row.model_name, row.model_version, row.feature_set) == (
        registry.MODEL_NAME,
        champion,
        SETTLEMENT_FEATURES.tag,
    )
    assert float(row.model_score) == pytest.approx(score, abs=1e-4)
    assert row.degraded is False
    assert client.post("/v1/score", json=settlement("S1", CODE)).json() == answer


def test_a_score_over_the_threshold_asks_for_review_and_says_why(
    store: Engine, tracking_uri: str, champion: str
) -> None:
    with scorer(store, tracking_uri, model_review_threshold=0.0) as client:
        purchase(client, CODE)
        answer = client.post("/v1/score", json=settlement("S1", CODE)).json()
    assert answer["decision"] == "review"
    (hit,) = answer["hits"]
    assert (hit["rule_id"], hit["action"], hit["pattern"]) == (
        "MODEL",
        "review",
        "anomalous_settlement",
    )
    assert f"v{champion}" in hit["message"]
    assert "=" in hit["message"]  # the features behind the score, with their values
    with store.connect() as conn:  # review pays: the pack is taken
        assert conn.execute(select(ledger_entries.c.canonical_code)).scalars().all() == [CODE]


def test_a_hard_fact_still_rejects_whatever_the_model_says(client: TestClient) -> None:
    purchase(client, CODE)
    client.post("/v1/score", json=settlement("S1", CODE))
    answer = client.post("/v1/score", json=settlement("S2", CODE)).json()
    assert answer["decision"] == "reject"
    assert answer["risk_score"] == 1.0
    assert answer["model"]["score"] is not None


def test_a_model_over_its_budget_is_set_aside_and_the_answers_say_so(
    store: Engine, tracking_uri: str, champion: str
) -> None:
    """Each answer over the budget is degraded; three in a row set the model aside."""
    codes = [f"8100001000000{n:03d}0000" for n in range(4)]
    with scorer(store, tracking_uri, model_budget_ms=0.001, model_cooloff_seconds=60) as client:
        purchase(client, *codes)
        answers = [
            client.post("/v1/score", json=settlement(f"S{n}", code)).json()
            for n, code in enumerate(codes)
        ]
        metrics = client.get("/metrics").text
    for answer in answers[:3]:
        assert answer["degraded"] is True
        assert "over its 0.001 ms budget" in answer["degraded_reason"]
        assert answer["model"] == {"name": registry.MODEL_NAME, "version": champion, "score": None}
        assert answer["decision"] == "pass"  # rules and ledger alone still decide
    assert answers[3]["degraded"] is True
    assert "set aside" in answers[3]["degraded_reason"]
    assert 'fundguard_degraded_answers_total{reason="over_budget"} 3.0' in metrics
    assert 'fundguard_degraded_answers_total{reason="set_aside"} 1.0' in metrics


def test_a_model_trained_on_other_features_is_refused(
    store: Engine, tracking_uri: str, champion: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = FeatureSet("settlement", "999", SETTLEMENT_FEATURES.columns)
    monkeypatch.setattr("serve.model.SETTLEMENT_FEATURES", other)
    with scorer(store, tracking_uri) as client:
        answer = client.post("/v1/score", json=settlement("S1")).json()
    assert answer["degraded"] is True
    assert "settlement@999" in answer["degraded_reason"]
    assert answer["model"]["score"] is None


def test_a_corrupt_model_file_degrades_the_answers_and_loses_nothing(
    store: Engine, tracking_uri: str, trained: TrainingResult
) -> None:
    name = "test-corrupt"
    root = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    before = set(root.rglob("booster.txt"))
    logged = registry.log_training_run(trained, tracking_uri=tracking_uri, plots={})
    (booster,) = set(root.rglob("booster.txt")) - before
    booster.write_text("tree\nthis is not a LightGBM model\n")
    version = registry.register(logged, tracking_uri=tracking_uri, model_name=name)
    registry.promote(name, version, tracking_uri=tracking_uri)
    with scorer(store, tracking_uri, model_name=name) as client:
        assert "answers are degraded" in client.get("/readyz").json()["model"]
        purchase(client, CODE)
        answer = client.post("/v1/score", json=settlement("S1", CODE))
        again = client.post("/v1/score", json=settlement("S1", CODE))
    body = answer.json()
    assert body["degraded"] is True
    assert f"model {name} version {version}" in body["degraded_reason"]
    assert body["decision"] == "pass"
    assert again.content == answer.content
    with store.connect() as conn:
        assert len(conn.execute(select(decisions.c.settlement_id)).all()) == 1
        assert conn.execute(select(ledger_entries.c.canonical_code)).scalars().all() == [CODE]


def test_a_promotion_is_picked_up_and_the_challenger_is_scored_in_shadow(
    store: Engine, tracking_uri: str, trained: TrainingResult
) -> None:
    name = f"test-shadow-{uuid.uuid4().hex[:8]}"  # aliases of its own: other tests unmoved
    logged = registry.log_training_run(trained, tracking_uri=tracking_uri, plots={})
    first = registry.register(logged, tracking_uri=tracking_uri, model_name=name, alias=None)
    registry.promote(name, first, tracking_uri=tracking_uri)
    with scorer(store, tracking_uri, model_name=name) as client:
        model = client.app.state.model  # type: ignore[attr-defined]
        assert model.challenger is None
        second = registry.register(logged, tracking_uri=tracking_uri, model_name=name)
        model.refresh()
        assert model.challenger.version == second
        purchase(client, CODE, "81000010000000020000")
        client.post("/v1/score", json=settlement("S1", CODE))
        with store.connect() as conn:
            row = conn.execute(select(decisions).where(decisions.c.settlement_id == "S1")).one()
        assert row.model_version == first
        assert row.challenger_version == second
        assert float(row.challenger_score) == pytest.approx(float(row.model_score), abs=1e-4)
        registry.promote(name, second, tracking_uri=tracking_uri)
        model.refresh()
        answer = client.post("/v1/score", json=settlement("S2", "81000010000000020000")).json()
    assert answer["model"]["version"] == second
