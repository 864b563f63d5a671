"""Settings of a fundguard installation.

They come from the environment (prefix ``FUNDGUARD_``), from a TOML settings file named
by ``FUNDGUARD_SETTINGS_FILE``, or from the embedded defaults: everything lives under the
data folder (``./fundguard-data`` unless set), with SQLite as the store and a local MLflow
store beside it. Settings are built on request (``Settings()``), never at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url

DEVELOPMENT_SECRET: Final = "development-only-not-a-secret"  # noqa: S105 - refused outside development
PLACEHOLDER_SECRETS: Final = frozenset(
    {DEVELOPMENT_SECRET, "", "changeme", "change-me", "secret", "password", "postgres", "admin"}
)


class Settings(BaseSettings):
    """Where fundguard keeps its state and how it runs."""

    model_config = SettingsConfigDict(env_prefix="FUNDGUARD_", extra="forbid")

    environment: Literal["development", "production"] = Field(
        default="development",
        description="outside development, placeholder secrets are refused at start",
    )
    secret_key: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_SECRET),
        description="signs inspectors' sessions and forms; 32+ random characters in production",
    )
    data_dir: Path = Field(default=Path("fundguard-data"), description="the data folder")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the store; SQLite in the data folder if unset"
    )
    rules_file: Path | None = Field(
        default=None, description="the rule base in force; the shipped rules/rulebase.yaml if unset"
    )
    credit_file: Path | None = Field(
        default=None,
        description="the credit scheme in force; the shipped rules/credit.yaml if unset",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; a local store in the data folder if unset"
    )
    model_name: str = Field(
        default="fundguard-settlement", description="the registered model the scorer uses"
    )
    model_review_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="a model score at or above it asks for review; the model's own if unset",
    )
    model_budget_ms: float = Field(
        default=10.0, gt=0, description="features and model score within it, or answer degraded"
    )
    model_cooloff_seconds: float = Field(
        default=10.0, ge=0, description="how long a model over its budget is set aside"
    )
    watch_review_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="a watch-list entry (screen --store) with this score or more asks for review",
    )
    model_refresh_seconds: float = Field(
        default=30.0, gt=0, description="how often the scorer looks for a newly promoted model"
    )
    session_minutes: int = Field(
        default=480,
        ge=1,
        le=10_080,
        description="how long an inspector's web session lasts after signing in (minutes)",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        settings_file = os.environ.get("FUNDGUARD_SETTINGS_FILE")
        if settings_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(settings_file)))
        return tuple(sources)

    @model_validator(mode="after")
    def _real_secrets_outside_development(self) -> Self:
        if self.environment == "development":
            return self
        problems = []
        secret = self.secret_key.get_secret_value()
        if secret.lower() in PLACEHOLDER_SECRETS or len(secret) < 32:
            problems.append("FUNDGUARD_SECRET_KEY is a placeholder or shorter than 32 characters")
        for name, url in (
            ("FUNDGUARD_DATABASE_URL", self.database_url),
            ("FUNDGUARD_MLFLOW_TRACKING_URI", self.mlflow_tracking_uri),
        ):
            if url and "://" in url:
                password = make_url(url).password
                if password is not None and str(password).lower() in PLACEHOLDER_SECRETS:
                    problems.append(f"{name} carries a placeholder password")
        if problems:
            raise ValueError(f"{self.environment} settings refused: " + "; ".join(problems))
        return self

    @property
    def store_url(self) -> str:
        """The store's URL: the configured one, or SQLite in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fundguard.db').resolve()}"

    @property
    def tracking_uri(self) -> str:
        """MLflow's tracking URI: the configured one, or a SQLite store in the data folder."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    def describe(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "store_url": self.store_url,
            "tracking_uri": self.tracking_uri,
        }
