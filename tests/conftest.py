"""Shared fixtures: a store on SQLite and on PostgreSQL, each a fresh database.

PostgreSQL is the one at ``FUNDGUARD_TEST_POSTGRES_URL`` (default: the local server,
trust auth, user ``postgres``); each test that asks for it gets a database of its own,
created from scratch and dropped after, so tests run in parallel without meeting.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from models.supervised import TrainingResult
from serve.settings import Settings
from serve.store import create_store_engine, upgrade

POSTGRES_ADMIN_URL = os.environ.get(
    "FUNDGUARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def _settings_of_the_test_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``Settings()`` in a test reads nothing of the user's: not the settings' variables
    of the shell, and not ``./fundguard-data``, where ``fundguard demo`` leaves a store and a
    champion model (a test expecting "no model" would find the demo's). The tests' own
    variables (``FUNDGUARD_TEST_POSTGRES_URL``, ``FUNDGUARD_SCREENSHOTS`` …) stay."""
    names = {f"FUNDGUARD_{field.upper()}" for field in Settings.model_fields}
    for name in names | {"FUNDGUARD_SETTINGS_FILE"}:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FUNDGUARD_DATA_DIR", str(tmp_path_factory.mktemp("fundguard-data")))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"fundguard_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty store: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Engine]:
    engine = create_store_engine(store_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def province(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated province (seed 7) with its truth, made once per test process."""
    from features.simulate import simulate

    folder = tmp_path_factory.mktemp("province")
    simulate(folder, seed=7, scale="small")
    return folder


@pytest.fixture(scope="session")
def province_flags(province: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The province screened by the rule base alone: the folder holding flags.parquet."""
    from serve.screening import screen

    out = tmp_path_factory.mktemp("screened")
    screen(province, out, models=False)
    return out


@pytest.fixture(scope="session")
def province_screened(province: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The province screened as ``fundguard screen`` does it (rules, graphs, models)."""
    from serve.screening import screen

    out = tmp_path_factory.mktemp("screened-all")
    screen(province, out)
    return out


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh embedded MLflow store (SQLite, artifacts beside it) for the module."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def trained(province: Path) -> TrainingResult:
    """The settlement model trained on the small province (made once per test process)."""
    from models.supervised import train_on_history

    return train_on_history(province)


def bearer(engine: Engine, role: str, *regions: str) -> dict[str, str]:
    """The Authorization header of a new key of ``role``."""
    from serve.keys import Role, create_key

    return {"Authorization": f"Bearer {create_key(engine, Role(role), regions)}"}
