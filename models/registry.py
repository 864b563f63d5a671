"""MLflow 3 tracking and registry for the settlement model.

Every training run is logged (parameters, validation metrics, the feature set's tag and
fingerprint, PR-curve plots) with the model itself, logged with ``name=``, a signature
(``mlflow.models.infer_signature``) and an input example. The model is an MLflow pyfunc
whose artifacts are LightGBM's text model and a small scoring JSON (calibration, review
threshold, feature set): any MLflow tool can load and call it, and the scorer reads the two
files directly, so no pickle is ever loaded on the scoring path.

Registered versions of ``fundguard-settlement`` carry aliases, never stages (deprecated in
MLflow 3): ``champion`` is what the scorer uses, ``challenger`` is scored in shadow.
:func:`load_alias` gives ``None`` when nothing is registered under the alias, so the scorer
runs without a model and says so; a corrupt artifact is an error naming the model.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlparse

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc.model import PythonModel
from sklearn.metrics import average_precision_score

from models.supervised import SettlementModel, TrainingResult

MODEL_NAME: Final = "fundguard-settlement"
EXPERIMENT: Final = "fundguard-settlement"
CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
MODEL_ARTIFACTS: Final = ("booster.txt", "scoring.json")


class ModelArtifactError(RuntimeError):
    """A registered model whose files cannot be read: named by model, version and alias."""


@dataclass(frozen=True)
class ScoringModel:
    """A registered settlement model as the scorer holds it: ``predict_row`` gives the
    calibrated probability of one settlement's feature vector."""

    name: str
    version: str
    alias: str
    model: SettlementModel

    @property
    def feature_set(self) -> str:
        """The feature set's tag (``name@version``) the model was trained on."""
        return self.model.feature_set.tag

    @property
    def fingerprint(self) -> str:
        return self.model.feature_set.fingerprint

    @property
    def review_threshold(self) -> float:
        return self.model.review_threshold

    def predict_row(self, row: np.ndarray) -> float:
        return self.model.predict_row(row)


@dataclass(frozen=True)
class LoggedRun:
    """A tracked training run and the model logged in it."""

    run_id: str
    model_uri: str
    experiment_id: str


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote_if_better` decided and why."""

    promoted: bool
    version: str
    metric: str
    candidate: float
    champion: float | None
    champion_version: str | None
    reason: str


class SettlementPyfunc(PythonModel):
    """The settlement model as an MLflow pyfunc: calibrated probabilities of fraud for a
    DataFrame of settlement features (columns of the model's feature set)."""

    def load_context(self, context: Any) -> None:
        self._model = SettlementModel.from_files(
            Path(context.artifacts["booster"]), Path(context.artifacts["scoring"])
        )

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> np.ndarray:
        columns = list(self._model.feature_set.columns)
        return self._model.predict(model_input[columns].to_numpy(dtype=np.float64))


def _model_code(folder: Path) -> Path:
    """The model as MLflow "models from code": a two-line file naming our pyfunc class, so
    that nothing is pickled into the model."""
    path = folder / "settlement_model.py"
    path.write_text(
        "import mlflow.models\n\nfrom models.registry import SettlementPyfunc\n\n"
        "mlflow.models.set_model(SettlementPyfunc())\n",
        encoding="utf-8",
    )
    return path


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a local SQLite tracking store; None for other stores."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite" or parsed.path in ("", "/", "/:memory:"):
        return None
    return Path(unquote(parsed.path[1:]))  # sqlite:///rel.db, sqlite:////abs/path.db


def artifact_root(tracking_uri: str) -> str | None:
    """Where a local SQLite tracking store keeps its artifacts: ``mlartifacts`` beside the
    database (MLflow's default would be the current directory). None for other stores."""
    db = sqlite_path(tracking_uri)
    return None if db is None else (db.parent / "mlartifacts").resolve().as_uri()


@contextlib.contextmanager
def tracking(tracking_uri: str) -> Iterator[None]:
    """MLflow's tracking and registry URIs set to ``tracking_uri`` for the block."""
    before_tracking = mlflow.get_tracking_uri()
    before_registry = mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before_tracking)
        mlflow.set_registry_uri(before_registry)


def _experiment_id(tracking_uri: str, name: str) -> str:
    db = sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    root = artifact_root(tracking_uri)
    location = f"{root}/{name}" if root else None
    return str(client.create_experiment(name, artifact_location=location))


def _requirements() -> list[str]:
    return [
        f"{pkg}=={package_version(pkg)}"
        for pkg in ("mlflow", "lightgbm", "numpy", "pandas", "scikit-learn", "scipy")
    ]


def log_training_run(
    result: TrainingResult,
    *,
    tracking_uri: str,
    experiment: str = EXPERIMENT,
    plots: Mapping[str, Path] | None = None,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
) -> LoggedRun:
    """Log one training run: parameters, metrics, the feature set (tag and fingerprint),
    plots, and the model with its signature and input example."""
    feature_set = result.model.feature_set
    experiment_id = _experiment_id(tracking_uri, experiment)
    columns = list(feature_set.columns)
    example = result.valid.frame[columns].head(5).astype("float64").reset_index(drop=True)
    signature = infer_signature(example, result.model.predict(example.to_numpy()))
    with tracking(tracking_uri), tempfile.TemporaryDirectory(prefix="fundguard-model-") as tmp:
        booster_file, scoring_file = result.model.save(Path(tmp))
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            mlflow.log_params({k: str(v) for k, v in result.params.items()})
            mlflow.log_params(
                {
                    "validation": "time-ordered by decided_at",
                    "calibration": "sigmoid on the validation fold",
                    "review_threshold": result.model.review_threshold,
                }
            )
            mlflow.log_metrics({k: float(v) for k, v in result.metrics.items() if np.isfinite(v)})
            mlflow.set_tags(
                {
                    "feature_set": feature_set.tag,
                    "feature_set_fingerprint": feature_set.fingerprint,
                    **(tags or {}),
                }
            )
            mlflow.log_dict(feature_set.to_dict(), "feature_set.json")
            for path in (plots or {}).values():
                mlflow.log_artifact(str(path), artifact_path="plots")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(_model_code(Path(tmp))),
                artifacts={"booster": str(booster_file), "scoring": str(scoring_file)},
                signature=signature,
                input_example=example,
                pip_requirements=_requirements(),
                tags={"feature_set": feature_set.tag},
            )
    return LoggedRun(run_id=run.info.run_id, model_uri=info.model_uri, experiment_id=experiment_id)


def register(
    logged: LoggedRun,
    *,
    tracking_uri: str,
    model_name: str = MODEL_NAME,
    alias: str | None = CHALLENGER,
    feature_set: str | None = None,
) -> str:
    """Register the run's model as a new version of ``model_name`` (with the feature set
    as a version tag) and point ``alias`` at it; the version number."""
    with tracking(tracking_uri):
        version = mlflow.register_model(logged.model_uri, model_name)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if feature_set:
        client.set_model_version_tag(model_name, version.version, "feature_set", feature_set)
    if alias:
        client.set_registered_model_alias(model_name, alias, str(version.version))
    return str(version.version)


def promote(model_name: str, version: str, alias: str = CHAMPION, *, tracking_uri: str) -> None:
    """Point ``alias`` (``champion`` by default) at ``version`` of ``model_name``."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias(model_name, alias, str(version))


def _alias_version(tracking_uri: str, model_name: str, alias: str) -> Any | None:
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _download(tracking_uri: str, model_name: str, version: str, who: str) -> SettlementModel:
    """The files of one registered version, read into a model (no pickle involved)."""
    try:
        with tracking(tracking_uri), tempfile.TemporaryDirectory(prefix="fundguard-load-") as tmp:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{model_name}/{version}", dst_path=tmp
                )
            )
            files = {name: next(iter(local.rglob(name)), None) for name in MODEL_ARTIFACTS}
            missing = [name for name, path in files.items() if path is None]
            if missing:
                raise ModelArtifactError(f"{who}: artifact(s) {', '.join(missing)} missing")
            return SettlementModel.from_files(
                local / str(files["booster.txt"]), local / str(files["scoring.json"])
            )
    except ModelArtifactError:
        raise
    except Exception as error:
        raise ModelArtifactError(f"{who}: the model's artifact is unreadable: {error}") from error


def load_alias(
    tracking_uri: str, model_name: str = MODEL_NAME, alias: str = CHAMPION
) -> ScoringModel | None:
    """The version of ``model_name`` that ``alias`` points at, ready to score; ``None``
    when no version carries the alias (the scorer then runs without a model). A version
    whose files are missing or corrupt raises :class:`ModelArtifactError` naming it."""
    local_db = sqlite_path(tracking_uri)
    if local_db is not None and not local_db.exists():
        return None  # no tracking store at all: nothing was ever registered
    found = _alias_version(tracking_uri, model_name, alias)
    if found is None:
        return None
    who = f"model {model_name} version {found.version} (alias {alias})"
    model = _download(tracking_uri, model_name, str(found.version), who)
    return ScoringModel(name=model_name, version=str(found.version), alias=alias, model=model)


def promote_if_better(
    tracking_uri: str,
    version: str,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    model_name: str = MODEL_NAME,
    candidate_score: float | None = None,
) -> Promotion:
    """Make ``version`` the champion if it beats the current champion's average precision
    on the same validation data (``features``, ``labels``), or if there is no champion (or
    the champion was trained on another feature set and cannot score these features)."""
    metric = "average_precision"
    candidate = load_version(tracking_uri, model_name, version)
    cand_ap = (
        candidate_score
        if candidate_score is not None
        else float(average_precision_score(labels, candidate.predict(features)))
    )
    try:
        champion = load_alias(tracking_uri, model_name, CHAMPION)
    except ModelArtifactError as error:
        champion, broken = None, str(error)
    else:
        broken = ""
    if champion is None:
        promote(model_name, version, CHAMPION, tracking_uri=tracking_uri)
        reason = f"no usable champion ({broken})" if broken else "no champion yet"
        return Promotion(True, version, metric, cand_ap, None, None, reason)
    if champion.fingerprint != candidate.feature_set.fingerprint:
        promote(model_name, version, CHAMPION, tracking_uri=tracking_uri)
        return Promotion(
            True,
            version,
            metric,
            cand_ap,
            None,
            champion.version,
            f"the champion uses feature set {champion.feature_set}, not "
            f"{candidate.feature_set.tag}",
        )
    champ_ap = float(average_precision_score(labels, champion.model.predict(features)))
    if cand_ap > champ_ap:
        promote(model_name, version, CHAMPION, tracking_uri=tracking_uri)
        return Promotion(
            True, version, metric, cand_ap, champ_ap, champion.version, "better than the champion"
        )
    return Promotion(
        False,
        version,
        metric,
        cand_ap,
        champ_ap,
        champion.version,
        "not better than the champion on the same validation data",
    )


def load_version(tracking_uri: str, model_name: str, version: str) -> SettlementModel:
    """One registered version's model (for comparisons; the scorer uses :func:`load_alias`)."""
    return _download(tracking_uri, model_name, version, f"model {model_name} version {version}")
