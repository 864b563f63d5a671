"""MLflow tracking and registry of the settlement model, on a temporary SQLite store.

A training run is logged with its parameters, metrics, feature set and plots, and the
model with a signature and an input example; a registered version is found by alias and
scores one row as the trained model does; nothing registered means no model (``None``);
the champion changes only for a better model; a corrupt artifact is an error naming the
model; ``fundguard train --promote`` does all of it from the command line.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from models import registry
from models.supervised import (
    TrainingResult,
    labelled_frame,
    train,
    validation_plots,
)
from serve.cli import main

pytestmark = pytest.mark.slow  # a fresh MLflow store takes ~10 s to create


@pytest.fixture(scope="module")
def logged(
    trained: TrainingResult, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> registry.LoggedRun:
    plots = validation_plots(trained, tmp_path_factory.mktemp("plots"))
    return registry.log_training_run(trained, tracking_uri=tracking_uri, plots=plots)


def test_no_store_means_no_model(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}"
    assert registry.load_alias(uri, "fundguard-settlement", "champion") is None
    assert not (tmp_path / "absent").exists()  # looking did not create a store


def test_a_run_is_tracked_with_its_feature_set_and_plots(
    logged: registry.LoggedRun, trained: TrainingResult, tracking_uri: str
) -> None:
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(logged.run_id)
    fs = trained.model.feature_set
    assert run.data.tags["feature_set"] == fs.tag
    assert run.data.tags["feature_set_fingerprint"] == fs.fingerprint
    assert run.data.metrics["auc"] == pytest.approx(trained.metrics["auc"])
    assert run.data.params["num_leaves"] == str(trained.params["num_leaves"])
    artifacts = {a.path for a in client.list_artifacts(logged.run_id, "plots")}
    assert artifacts == {"plots/pr_curve.png", "plots/calibration.png"}
    with registry.tracking(tracking_uri):
        info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature is not None
    assert info.signature.inputs.input_names() == list(fs.columns)
    assert info.saved_input_example_info is not None
    # the artifacts live beside the database, not in the working directory
    assert Path(tracking_uri.removeprefix("sqlite:///")).parent.joinpath("mlartifacts").is_dir()


def test_a_registered_version_scores_like_the_trained_model(
    logged: registry.LoggedRun, trained: TrainingResult, tracking_uri: str
) -> None:
    name = "test-scores"
    assert registry.load_alias(tracking_uri, name, "challenger") is None
    version = registry.register(logged, tracking_uri=tracking_uri, model_name=name)
    assert registry.load_alias(tracking_uri, name, "champion") is None
    model = registry.load_alias(tracking_uri, name, "challenger")
    assert model is not None
    assert (model.name, model.version, model.alias) == (name, version, "challenger")
    assert model.feature_set == trained.model.feature_set.tag
    rows = trained.valid.features[:20]
    online = np.array([model.predict_row(row) for row in rows])
    np.testing.assert_allclose(online, trained.valid_scores[:20], rtol=1e-12)
    # the pyfunc flavour any MLflow tool loads gives the same probabilities
    with registry.tracking(tracking_uri):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@challenger")
    columns = list(trained.model.feature_set.columns)
    predicted = pyfunc.predict(trained.valid.frame[columns].head(20))
    np.testing.assert_allclose(np.asarray(predicted), trained.valid_scores[:20], rtol=1e-12)


def test_the_champion_changes_only_for_a_better_model(
    logged: registry.LoggedRun, trained: TrainingResult, tracking_uri: str
) -> None:
    name = "test-promotion"
    x, y = trained.valid.features, trained.valid.labels
    first = registry.register(logged, tracking_uri=tracking_uri, model_name=name)
    decision = registry.promote_if_better(tracking_uri, first, x, y, model_name=name)
    assert decision.promoted
    assert decision.reason == "no champion yet"
    # the same model again is not better
    second = registry.register(logged, tracking_uri=tracking_uri, model_name=name)
    decision = registry.promote_if_better(tracking_uri, second, x, y, model_name=name)
    assert not decision.promoted
    assert decision.champion_version == first
    # a model that learned from shuffled verdicts is worse
    everything = pd.concat([trained.train.frame, trained.valid.frame], ignore_index=True)
    shuffled = np.random.default_rng(3).permutation(everything["label"].to_numpy())
    worse = train(
        labelled_frame(
            everything.drop(columns=["label", "decided_at"]),
            everything[["settlement_id", "decided_at"]].assign(label=shuffled),
            trained.model.feature_set,
        ),
        params={"n_estimators": 5},
    )
    worse_run = registry.log_training_run(worse, tracking_uri=tracking_uri)
    third = registry.register(worse_run, tracking_uri=tracking_uri, model_name=name)
    decision = registry.promote_if_better(tracking_uri, third, x, y, model_name=name)
    assert not decision.promoted
    assert decision.candidate < decision.champion
    champion = registry.load_alias(tracking_uri, name, "champion")
    assert champion is not None
    assert champion.version == first


def test_a_corrupt_artifact_is_an_error_naming_the_model(
    trained: TrainingResult, tracking_uri: str
) -> None:
    name = "test-corrupt"
    own = registry.log_training_run(trained, tracking_uri=tracking_uri)  # not shared
    version = registry.register(own, tracking_uri=tracking_uri, model_name=name)
    assert registry.load_alias(tracking_uri, name, "challenger") is not None
    model_id = own.model_uri.removeprefix("models:/")
    root = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    (booster,) = [p for p in root.rglob("booster.txt") if model_id in p.parts]
    booster.write_text("not a LightGBM model\n")
    with pytest.raises(registry.ModelArtifactError, match=f"model {name} version {version}"):
        registry.load_alias(tracking_uri, name, "challenger")


def test_cli_trains_registers_and_promotes(
    province: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUNDGUARD_MLFLOW_TRACKING_URI", tracking_uri)
    runner = CliRunner()
    first = runner.invoke(main, ["train", "--data", str(province), "--promote"])
    assert first.exit_code == 0, first.output
    assert "promoted to champion: no champion yet" in first.output
    assert "average_precision" in first.output
    second = runner.invoke(main, ["train", "--data", str(province), "--promote"])
    assert second.exit_code == 0, second.output
    assert "not promoted to champion" in second.output
    champion = registry.load_alias(tracking_uri, registry.MODEL_NAME, "champion")
    challenger = registry.load_alias(tracking_uri, registry.MODEL_NAME, "challenger")
    assert champion is not None
    assert challenger is not None
    assert int(challenger.version) == int(champion.version) + 1


def test_cli_refuses_a_folder_without_verdicts(
    province: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking_uri: str
) -> None:
    monkeypatch.setenv("FUNDGUARD_MLFLOW_TRACKING_URI", tracking_uri)
    folder = tmp_path / "no-labels"
    folder.mkdir()
    for table in province.glob("*.parquet"):
        if table.name != "labels.parquet":
            (folder / table.name).write_bytes(table.read_bytes())
    result = CliRunner().invoke(main, ["train", "--data", str(folder)])
    assert result.exit_code != 0
    assert "too few" in result.output
