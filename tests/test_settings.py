"""Settings: placeholder secrets are refused outside development, with a clear message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve.settings import Settings

STRONG = "k" * 20 + "3fT9xQ2mZr7LpW8v"


def test_development_runs_on_the_embedded_defaults() -> None:
    settings = Settings(_env_file=None)
    assert settings.environment == "development"
    assert settings.store_url.startswith("sqlite:///")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({}, "FUNDGUARD_SECRET_KEY"),
        ({"secret_key": "changeme"}, "FUNDGUARD_SECRET_KEY"),
        ({"secret_key": "short-but-not-a-word"}, "FUNDGUARD_SECRET_KEY"),
        (
            {"secret_key": STRONG, "database_url": "postgresql+psycopg://fg:changeme@db/fg"},
            "FUNDGUARD_DATABASE_URL",
        ),
        (
            {"secret_key": STRONG, "mlflow_tracking_uri": "postgresql://ml:password@db/ml"},
            "FUNDGUARD_MLFLOW_TRACKING_URI",
        ),
    ],
)
def test_production_refuses_placeholder_secrets(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(environment="production", **overrides)


def test_production_takes_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNDGUARD_ENVIRONMENT", "production")
    monkeypatch.setenv("FUNDGUARD_SECRET_KEY", STRONG)
    monkeypatch.setenv("FUNDGUARD_DATABASE_URL", "postgresql+psycopg://fg:Xq7-long-pass@db/fg")
    settings = Settings()
    assert settings.environment == "production"
    assert STRONG not in repr(settings)  # the secret key is never printed
