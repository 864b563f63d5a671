"""The anomaly-detector wrapper (models.anomaly): scikit-learn's estimator checks, our own
contract ([0, 1], higher = more anomalous, monotone in the detector's raw score, clear
errors), ADBench floors beside raw PyOD, and the peer-group flags on simulated provinces."""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.utils.estimator_checks import parametrize_with_checks

from models.anomaly import AnomalyDetector, PeerGroupDetector

ROOT = Path(__file__).resolve().parents[1]
ADBENCH = ROOT.parent / "shared/benchmarks/adbench"

# ---------------------------------------------------------------- scikit-learn's checks

#: Checks our wrapper fails on purpose, and why.
SIGN = (
    "score_samples is higher for an ANOMALOUS row (CONVENTIONS.md), scikit-learn's for a "
    "normal one, so decision_function = offset_ - score_samples, not score_samples - offset_; "
    "test_outlier_contract checks the rest of check_outliers_train"
)
BATCH = "ECOD/COPOD score a row against the training rows and its own batch (PyOD design)"
NEIGHBOURS = (
    "KNN/LOF leave a training row out of its own neighbourhood when fitting, not when "
    "predicting the same rows (scikit-learn's LOF makes predict novelty-only for this reason)"
)


def expected_failures(estimator: AnomalyDetector) -> dict[str, str]:
    failures = {"check_outliers_train": SIGN}
    if estimator.detector in {"ECOD", "COPOD"}:
        failures["check_methods_subset_invariance"] = BATCH
    if estimator.detector in {"KNN", "LOF"}:
        failures["check_outliers_fit_predict"] = NEIGHBOURS
    return failures


@parametrize_with_checks(
    [
        AnomalyDetector("IForest", random_state=0),
        AnomalyDetector("ECOD"),
        AnomalyDetector("KNN"),
    ],
    expected_failed_checks=expected_failures,
    xfail_strict=False,  # ECOD passes the batch checks on some data: not a failure to expect
)
def test_sklearn_checks(estimator: AnomalyDetector, check: Callable[[Any], None]) -> None:
    check(estimator)


# ---------------------------------------------------------------- our contract


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    X, _ = make_blobs(n_samples=300, centers=3, n_features=4, random_state=0)
    return X


@pytest.mark.parametrize("name", ["IForest", "ECOD", "HBOS", "KNN", "PCA"])
def test_outlier_contract(name: str, blobs: np.ndarray) -> None:
    """check_outliers_train with our sign: scores in [0, 1], predict agrees with
    decision_function, contamination sets the training share of outliers."""
    model = AnomalyDetector(name, contamination=0.1, random_state=0).fit(blobs)
    far = blobs[:20] * 50.0  # well outside the training cloud
    X = np.vstack([blobs, far])
    scores = model.score_samples(X)
    assert scores.dtype == np.float64
    assert scores.shape == (len(X),)
    assert ((scores >= 0.0) & (scores <= 1.0)).all()
    decision = model.decision_function(X)
    np.testing.assert_allclose(decision, model.offset_ - scores)
    assert ((decision >= 0) == (model.predict(X) == 1)).all()
    assert scores[len(blobs) :].min() > np.median(scores[: len(blobs)])
    labels = AnomalyDetector(name, contamination=0.1, random_state=0).fit_predict(blobs)
    assert abs(int((labels == -1).sum()) - 30) <= 2


@pytest.mark.parametrize("name", ["IForest", "ECOD", "HBOS", "KNN"])
def test_scores_are_monotone_in_raw_score(name: str, blobs: np.ndarray) -> None:
    """The [0, 1] score ranks rows exactly as the detector's raw score, in and beyond the
    training range (no ties made at the top)."""
    rng = np.random.default_rng(1)
    model = AnomalyDetector(name, random_state=0).fit(blobs)
    X = np.vstack([blobs, rng.normal(0.0, 15.0, (200, blobs.shape[1]))])
    raw, scores = model.raw_scores(X), model.score_samples(X)
    order = np.argsort(raw, kind="stable")
    raw_sorted, scores_sorted = raw[order], scores[order]
    rising = np.diff(raw_sorted) > 0
    assert (np.diff(scores_sorted)[rising] > 0).all()
    assert (np.diff(scores_sorted)[~rising] == 0).all()
    assert raw.max() > model.quantiles_[-1]  # some rows were beyond the training range


def test_training_scores_are_uniform(blobs: np.ndarray) -> None:
    model = AnomalyDetector("IForest", random_state=0).fit(blobs)
    median = float(np.median(model.training_scores_))
    assert abs(median - 0.5) < 0.02
    assert model.training_scores_.max() <= 1.0 - model.tail_mass_ + 1e-12


def test_errors_name_the_row_and_column(blobs: np.ndarray) -> None:
    frame = pd.DataFrame(blobs, columns=["fund_paid", "night_share", "far_share", "price"])
    bad = frame.copy()
    bad.loc[7, "night_share"] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf.*row 7.*'night_share'"):
        AnomalyDetector().fit(bad)
    model = AnomalyDetector(random_state=0).fit(frame)
    bad = frame.head(5).copy()
    bad.loc[3, "price"] = np.inf
    with pytest.raises(ValueError, match=r"row 3.*'price'"):
        model.score_samples(bad)
    with pytest.raises(ValueError, match="X has 3 features, but AnomalyDetector is expecting 4"):
        AnomalyDetector(random_state=0).fit(blobs).score_samples(blobs[:, :3])
    with pytest.raises(ValueError, match="unknown detector 'Nope'"):
        AnomalyDetector("Nope").fit(blobs)
    with pytest.raises(ValueError, match="contamination"):
        AnomalyDetector(contamination=0.7).fit(blobs)
    with pytest.raises(ValueError, match="scale must be"):
        AnomalyDetector(scale="zscore").fit(blobs)


def test_deterministic_and_picklable(blobs: np.ndarray) -> None:
    a = AnomalyDetector("IForest", random_state=3).fit(blobs)
    b = AnomalyDetector("IForest", random_state=3).fit(blobs)
    c = AnomalyDetector("IForest", random_state=4).fit(blobs)
    np.testing.assert_array_equal(a.score_samples(blobs), b.score_samples(blobs))
    assert not np.array_equal(a.score_samples(blobs), c.score_samples(blobs))
    again = pickle.loads(pickle.dumps(a))  # noqa: S301 - our own object
    np.testing.assert_array_equal(again.score_samples(blobs), a.score_samples(blobs))


def test_scoring_does_not_change_the_model(blobs: np.ndarray) -> None:
    """ECOD writes to itself while scoring; the wrapper scores through a copy."""
    model = AnomalyDetector("ECOD").fit(blobs)
    before = pickle.dumps(model)
    model.score_samples(blobs[:10] * 3.0)
    assert pickle.dumps(model) == before


def test_peer_groups_judge_against_peers() -> None:
    """A row ordinary in the pool but far from its own group scores high only with groups;
    a group too small to have a model of its own is judged by the pooled one."""
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (150, 3))
    b = rng.normal(10.0, 1.0, (150, 3))
    X = np.vstack([a, b, rng.normal(0.0, 1.0, (4, 3))])
    groups = np.array(["a"] * 150 + ["b"] * 150 + ["tiny"] * 4)
    model = PeerGroupDetector("IForest", random_state=0, min_group_size=20).fit(X, groups=groups)
    assert set(model.detectors_) == {"a", "b"}
    assert model.model_for("tiny")[0] == "*pooled*"
    probe = np.array([[10.0, 10.0, 10.0]])  # typical of b, far from a
    as_a = model.score_samples(probe, groups=["a"])[0]
    as_b = model.score_samples(probe, groups=["b"])[0]
    assert as_a > 0.99
    assert as_b < 0.8
    scores = model.score_samples(X, groups=groups)
    assert ((scores >= 0) & (scores <= 1)).all()
    with pytest.raises(ValueError, match="one peer group per row"):
        model.score_samples(X, groups=groups[:-1])
    again = pickle.loads(pickle.dumps(model))  # noqa: S301 - our own object
    np.testing.assert_array_equal(again.score_samples(X, groups=groups), scores)


# ---------------------------------------------------------------- ADBench


def _adbench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("adbench", ROOT / "benchmarks/adbench.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("adbench", module)  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["4_breastw", "6_cardio", "38_thyroid"])
@pytest.mark.parametrize("detector", ["IForest", "ECOD"])
def test_adbench_matches_pyod_reference(dataset: str, detector: str) -> None:
    """On ADBench's protocol the wrapper ranks as well as raw PyOD: ROC-AUC within 0.02 of
    the published reference, and equal to its own raw scores' ROC-AUC."""
    adbench = _adbench_module()
    reference = json.loads((ADBENCH / "reference_pyod_defaults.json").read_text())
    X, y = adbench.load_set(ADBENCH, dataset)
    auroc, _, raw_auroc = adbench.evaluate(X, y, detector)
    assert auroc == pytest.approx(reference[dataset][detector][0], abs=0.02)
    assert auroc == pytest.approx(raw_auroc, abs=1e-12)


# ---------------------------------------------------------------- flags on simulated provinces
# Fitted on the small seed-7 province (the ``province`` fixture), scored on seed 11.


def _features(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from features.batch import open_history
    from features.institution_features import institution_features
    from features.settlement_features import settlement_features

    con = open_history(folder)
    try:
        return institution_features(con), settlement_features(con)
    finally:
        con.close()


@pytest.fixture(scope="module")
def train_features(province: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _features(province)


@pytest.fixture(scope="module")
def eval_province(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from features.simulate import simulate

    folder = tmp_path_factory.mktemp("province11")
    simulate(folder, seed=11, scale="small")
    return folder


@pytest.fixture(scope="module")
def eval_features(eval_province: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _features(eval_province)


def _truth(folder: Path, pattern: str) -> set[str]:
    flags = pd.read_parquet(folder / "truth/flags.parquet")
    return set(flags.loc[flags["pattern"] == pattern, "entity_id"])


@pytest.mark.slow
def test_anomalous_institutions_across_provinces(
    train_features: tuple[pd.DataFrame, pd.DataFrame],
    eval_features: tuple[pd.DataFrame, pd.DataFrame],
    eval_province: Path,
) -> None:
    """Fitted on seed 7, scored on seed 11: precision@k >= 0.8 (k = planted count), the
    benign volume outliers are not flagged, and each flag says why."""
    from models.anomaly_flags import (
        anomalous_institution_flags,
        fit_institution_model,
        institution_scores,
    )

    model = fit_institution_model(train_features[0])
    frame = eval_features[0]
    planted = _truth(eval_province, "anomalous_institution")
    scores = institution_scores(frame, model)
    top_k = set(frame["institution_id"].to_numpy()[np.argsort(-scores)[: len(planted)]])
    assert len(top_k & planted) / len(planted) >= 0.8

    flags = anomalous_institution_flags(frame, model=model)
    flagged = {f.entity_id for f in flags}
    benign = pd.read_parquet(eval_province / "truth/benign.parquet")
    volume = set(benign.loc[benign["kind"] == "volume_outlier", "entity_id"])
    assert volume
    assert not flagged & volume
    assert planted <= flagged
    for f in flags:
        assert f.action == "review"
        assert 0.0 <= f.score <= 1.0
        assert f.amount_at_risk >= 0
        assert f.evidence["top_features"]
        json.dumps(f.evidence)
    first = next(f for f in flags if f.entity_id in planted)
    top = first.evidence["top_features"][0]  # type: ignore[index]
    assert abs(top["z"]) >= 3  # the planted institution is far from its peers somewhere
    again = anomalous_institution_flags(frame, model=fit_institution_model(train_features[0]))
    assert again == flags  # deterministic (random_state)


@pytest.mark.slow
def test_anomalous_settlements_across_provinces(
    train_features: tuple[pd.DataFrame, pd.DataFrame],
    eval_features: tuple[pd.DataFrame, pd.DataFrame],
    eval_province: Path,
) -> None:
    """The planted inflated bills of seed 11 rank on top once what the rules explain (the
    truth's other settlement patterns, standing in for the rule flags) is set aside."""
    from models.anomaly_flags import (
        anomalous_settlement_flags,
        fit_settlement_model,
        settlement_scores,
    )

    model = fit_settlement_model(train_features[1])
    frame = eval_features[1]
    truth = pd.read_parquet(eval_province / "truth/flags.parquet")
    planted = _truth(eval_province, "anomalous_settlement")
    explained = set(
        truth.loc[
            (truth["entity_type"] == "settlement") & (truth["pattern"] != "anomalous_settlement"),
            "entity_id",
        ]
    )
    keep = ~frame["settlement_id"].isin(explained).to_numpy()
    scores = settlement_scores(frame, model)[keep]
    ids = frame["settlement_id"].to_numpy()[keep]
    top_k = set(ids[np.argsort(-scores)[: len(planted)]])
    assert len(top_k & planted) / len(planted) >= 0.8

    flags = anomalous_settlement_flags(frame, model=model, explained=explained)
    flagged = {f.entity_id for f in flags}
    assert planted <= flagged
    assert not flagged & explained
    paid = frame.set_index("settlement_id")
    f = next(f for f in flags if f.entity_id in planted)
    row = paid.loc[f.entity_id]
    assert float(f.amount_at_risk) == pytest.approx(
        row["total_amount"] * row["fund_paid_share"], abs=0.01
    )
    assert f.evidence["peer_group"] == "outpatient"
