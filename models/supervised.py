"""A supervised model of fraud on settlements, learned from inspectors' verdicts.

The ``labels`` table holds the verdicts of inspections (1 confirmed, 0 cleared). Every
settlement with a verdict becomes one training example: its label is 1 when any of its
verdicts confirmed fraud, and it is known from the moment its last verdict was decided.
Verdicts arrive weeks after the settlement, so validation is time-ordered: the model learns
from the earlier verdicts and is measured on the later ones, never shuffled.

The model is a LightGBM classifier on the settlement feature set (``features``), its
scores calibrated into probabilities on the validation fold (Platt's sigmoid, through
scikit-learn's ``CalibratedClassifierCV`` around the frozen classifier: the validation fold
is small, and a sigmoid does not overfit it as isotonic regression would). Every score it
gives comes with its reasons: the features that pushed it up most, from LightGBM's own
SHAP contributions (``pred_contrib``).

:class:`SettlementModel` is what the scorer needs and nothing more: the booster, the two
calibration numbers and the feature set; ``predict_row`` scores one settlement's feature
vector with one thread and no DataFrame.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import math
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from features.featureset import FeatureSet
from features.flags import Flag

if TYPE_CHECKING:
    import duckdb

MODEL_PATTERN: Final = "anomalous_settlement"  # CONTRACT.md §4: no single rule explains it
DEFAULT_PARAMS: Final[Mapping[str, Any]] = {
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 10,
    "subsample": 0.9,
    "subsample_freq": 1,
    "colsample_bytree": 0.9,
    "reg_lambda": 1.0,
    "random_state": 7,
    "deterministic": True,
    "n_jobs": 1,  # two cores shared with the scorer and the batch jobs
    "verbose": -1,
}
PRECISION_AT: Final = (10, 20, 50)


@dataclass(frozen=True)
class Reason:
    """One feature behind a model score: its value and how far it moved the score
    (SHAP contribution, in log-odds)."""

    feature: str
    value: float
    contribution: float

    def as_dict(self) -> dict[str, object]:
        return {
            "feature": self.feature,
            "value": _json_number(self.value),
            "contribution": round(self.contribution, 6),
        }


def _json_number(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)


class _SingleRow:
    """LightGBM's own single-row predictor (``LGBM_BoosterPredictForMatSingleRowFast``):
    the booster's configuration for one float64 row of ``ncol`` features is prepared once,
    so a settlement's raw score costs a few µs of C instead of ``Booster.predict``'s
    Python checks (the Python package wraps the C API but not this call, which LightGBM
    documents for serving one row at a time). One call at a time per predictor."""

    def __init__(self, booster: lgb.Booster, ncol: int) -> None:
        from lightgbm.basic import _LIB, _safe_call

        self._lib, self._safe_call = _LIB, _safe_call
        self._booster = booster  # the configuration refers to it: keep it alive
        self._config = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(1),  # C_API_PREDICT_RAW_SCORE
                ctypes.c_int(0),  # from the first iteration
                ctypes.c_int(booster.best_iteration if booster.best_iteration > 0 else -1),
                ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
                ctypes.c_int32(ncol),
                b"num_threads=1",
                ctypes.byref(self._config),
            )
        )
        self._out = np.zeros(1, dtype=np.float64)
        self._out_len = ctypes.c_int64(0)
        self._lock = threading.Lock()

    def raw(self, row: np.ndarray) -> float:
        data = np.ascontiguousarray(row, dtype=np.float64)
        with self._lock:
            self._safe_call(
                self._lib.LGBM_BoosterPredictForMatSingleRowFast(
                    self._config,
                    data.ctypes.data_as(ctypes.c_void_p),
                    ctypes.byref(self._out_len),
                    self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                )
            )
            return float(self._out[0])

    def __del__(self) -> None:
        if getattr(self, "_config", None) is not None and self._config.value:
            self._lib.LGBM_FastConfigFree(self._config)


@dataclass(frozen=True)
class SettlementModel:
    """A trained settlement model: LightGBM booster, sigmoid calibration of its raw score
    (log-odds, what scikit-learn calibrates: LightGBM's ``decision_function``)
    ``p = 1 / (1 + exp(a * raw + b))`` and the feature set it was trained on.
    ``review_threshold``: a calibrated probability at or above it asks for review."""

    booster: lgb.Booster
    calibration_a: float
    calibration_b: float
    feature_set: FeatureSet
    review_threshold: float = 0.5

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(expit(-(self.calibration_a * raw + self.calibration_b)))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of fraud, one per row of ``features``."""
        raw = self.booster.predict(np.asarray(features, dtype=np.float64), raw_score=True)
        return self._calibrate(np.asarray(raw))

    @functools.cached_property
    def _single_row(self) -> _SingleRow:
        return _SingleRow(self.booster, len(self.feature_set.columns))

    def predict_row(self, row: np.ndarray) -> float:
        """The calibrated probability of one settlement's feature vector (the online path:
        LightGBM's single-row predictor, one thread, no DataFrame); equal to
        :meth:`predict` of that row."""
        raw = self._single_row.raw(row)
        return 1.0 / (1.0 + math.exp(self.calibration_a * raw + self.calibration_b))

    def reasons(self, features: np.ndarray, top: int = 3) -> list[list[Reason]]:
        """For each row, the ``top`` features that pushed its score up most."""
        matrix = np.asarray(features, dtype=np.float64)
        contrib = np.asarray(self.booster.predict(matrix, pred_contrib=True))[:, :-1]
        names = self.feature_set.columns
        out: list[list[Reason]] = []
        for values, row in zip(matrix, contrib, strict=True):
            order = np.argsort(-row, kind="stable")[:top]
            out.append([Reason(names[i], float(values[i]), float(row[i])) for i in order])
        return out

    def scoring_config(self) -> dict[str, object]:
        """What, beside the booster, the model needs to score (stored with it as JSON)."""
        return {
            "calibration": {
                "method": "sigmoid",
                "input": "raw_score",
                "a": self.calibration_a,
                "b": self.calibration_b,
            },
            "review_threshold": self.review_threshold,
            "feature_set": self.feature_set.to_dict(),
        }

    @classmethod
    def from_files(cls, booster_file: Path, scoring_file: Path) -> SettlementModel:
        """The model stored as LightGBM's text model and the scoring JSON."""
        config = json.loads(scoring_file.read_text(encoding="utf-8"))
        calibration = config["calibration"]
        if calibration.get("method") != "sigmoid":
            raise ValueError(f"unknown calibration {calibration.get('method')!r}")
        feature_set = FeatureSet.from_dict(config["feature_set"])
        booster = lgb.Booster(model_file=str(booster_file))
        if booster.num_feature() != len(feature_set.columns):
            raise ValueError(
                f"the booster takes {booster.num_feature()} features, the feature set "
                f"{feature_set.tag} has {len(feature_set.columns)}"
            )
        return cls(
            booster=booster,
            calibration_a=float(calibration["a"]),
            calibration_b=float(calibration["b"]),
            feature_set=feature_set,
            review_threshold=float(config["review_threshold"]),
        )

    def save(self, folder: Path) -> tuple[Path, Path]:
        """Write ``booster.txt`` and ``scoring.json`` into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        booster_file, scoring_file = folder / "booster.txt", folder / "scoring.json"
        self.booster.save_model(str(booster_file))
        scoring_file.write_text(json.dumps(self.scoring_config(), indent=2), encoding="utf-8")
        return booster_file, scoring_file


@dataclass(frozen=True)
class LabelledFrame:
    """Settlements with a verdict: their features, label and when the label was known."""

    frame: pd.DataFrame  # settlement_id, settled_at, decided_at, label, feature columns
    feature_set: FeatureSet

    @property
    def features(self) -> np.ndarray:
        return self.frame[list(self.feature_set.columns)].to_numpy(dtype=np.float64)

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy(dtype=np.int64)


def settlement_labels(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """One row per settlement with a verdict: label 1 if any verdict confirmed fraud, and
    ``decided_at``, when its last verdict was decided (null if no verdict says when)."""
    frame: pd.DataFrame = (
        con.sql(
            """
        SELECT entity_id AS settlement_id,
               max(label)::INTEGER AS label,
               max(decided_at) AS decided_at
        FROM labels
        WHERE entity_type = 'settlement' AND label IN (0, 1)
        GROUP BY entity_id
        """
        )
        .to_arrow_table()
        .to_pandas()
    )
    return frame


def labelled_frame(
    features: pd.DataFrame, labels: pd.DataFrame, feature_set: FeatureSet
) -> LabelledFrame:
    """The settlement feature frame joined with the settlements' verdicts, oldest verdict
    first (a verdict without a time counts as the oldest: it can train, never validate)."""
    frame = features.merge(labels, on="settlement_id", how="inner", validate="one_to_one")
    frame = frame.sort_values(
        ["decided_at", "settlement_id"], na_position="first", kind="stable"
    ).reset_index(drop=True)
    return LabelledFrame(frame=frame, feature_set=feature_set)


def time_split(
    data: LabelledFrame, validation_share: float = 0.3
) -> tuple[LabelledFrame, LabelledFrame]:
    """The earlier verdicts to train on, the later ones to validate on (no shuffling).
    Verdicts decided at the same moment stay on one side."""
    frame = data.frame
    n = len(frame)
    cut = round(n * (1.0 - validation_share))
    if n < 20 or cut <= 0 or cut >= n:
        raise ValueError(f"{n} labelled settlement(s): too few to train and validate")
    decided = frame["decided_at"]
    boundary = decided.iloc[cut]
    if pd.notna(boundary):
        while cut > 0 and decided.iloc[cut - 1] == boundary:
            cut -= 1
    train, valid = frame.iloc[:cut], frame.iloc[cut:]
    for name, part in (("training", train), ("validation", valid)):
        if part["label"].nunique() < 2:
            raise ValueError(
                f"the {name} fold ({len(part)} verdicts) holds only one class: "
                "more verdicts are needed to train"
            )
    return LabelledFrame(train.reset_index(drop=True), data.feature_set), LabelledFrame(
        valid.reset_index(drop=True), data.feature_set
    )


def precision_at_k(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of true cases among the ``k`` highest scores (fewer when there are fewer)."""
    order = np.argsort(-scores, kind="stable")[:k]
    return float(labels[order].mean()) if len(order) else float("nan")


def validation_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUC, average precision, Brier score and precision@k of scores against labels."""
    metrics = {
        "auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "brier": float(brier_score_loss(labels, scores)),
        "positive_rate": float(labels.mean()),
    }
    for k in PRECISION_AT:
        metrics[f"precision_at_{k}"] = precision_at_k(labels, scores, k)
    return metrics


@dataclass(frozen=True)
class TrainingResult:
    """A trained model with the data and figures of its training."""

    model: SettlementModel
    params: dict[str, Any]
    metrics: dict[str, float]
    train: LabelledFrame
    valid: LabelledFrame
    valid_scores: np.ndarray
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def train(
    data: LabelledFrame,
    *,
    params: Mapping[str, Any] | None = None,
    validation_share: float = 0.3,
    review_threshold: float = 0.5,
) -> TrainingResult:
    """Train LightGBM on the earlier verdicts, calibrate and measure on the later ones."""
    started = time.perf_counter()
    train_part, valid_part = time_split(data, validation_share)
    chosen = {**DEFAULT_PARAMS, **(params or {})}
    y_train = train_part.labels
    positives = int(y_train.sum())
    # class weights when confirmed frauds are rare among the verdicts
    if "class_weight" not in chosen and positives * 3 < len(y_train) - positives:
        chosen["class_weight"] = "balanced"
    classifier = lgb.LGBMClassifier(**chosen)
    classifier.fit(train_part.features, y_train, feature_name=list(data.feature_set.columns))
    calibrated = CalibratedClassifierCV(FrozenEstimator(classifier), method="sigmoid")
    with warnings.catch_warnings():
        # the classifier knows its feature names (LightGBM keeps them in the booster); the
        # calibration hands it numpy rows of the same columns
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        calibrated.fit(valid_part.features, valid_part.labels)
    sigmoid = calibrated.calibrated_classifiers_[0].calibrators[0]
    model = SettlementModel(
        booster=classifier.booster_,
        calibration_a=float(sigmoid.a_),
        calibration_b=float(sigmoid.b_),
        feature_set=data.feature_set,
        review_threshold=review_threshold,
    )
    valid_scores = model.predict(valid_part.features)
    metrics = validation_metrics(valid_part.labels, valid_scores)
    metrics["train_rows"] = float(len(train_part.frame))
    metrics["valid_rows"] = float(len(valid_part.frame))
    seconds = time.perf_counter() - started
    metrics["training_seconds"] = seconds
    return TrainingResult(
        model=model,
        params=chosen,
        metrics=metrics,
        train=train_part,
        valid=valid_part,
        valid_scores=valid_scores,
        seconds=seconds,
        extra={"calibrated_sklearn": calibrated},
    )


def validation_plots(result: TrainingResult, folder: Path) -> dict[str, Path]:
    """PNG pictures of the validation fold: the precision-recall curve and the calibration
    curve (reliability diagram) of the calibrated scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import PrecisionRecallDisplay

    folder.mkdir(parents=True, exist_ok=True)
    labels, scores = result.valid.labels, result.valid_scores
    out: dict[str, Path] = {}
    for name, draw in (
        ("pr_curve", PrecisionRecallDisplay.from_predictions),
        ("calibration", CalibrationDisplay.from_predictions),
    ):
        fig, ax = plt.subplots(figsize=(4.5, 4))
        try:
            if name == "calibration":
                draw(labels, scores, ax=ax, n_bins=5, name="settlement model")
            else:
                draw(labels, scores, ax=ax, name="settlement model")
            ax.set_title(f"validation fold ({len(labels)} verdicts): {name.replace('_', ' ')}")
            fig.tight_layout()
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=80)
            out[name] = path
        finally:
            plt.close(fig)
    return out


def history_frame(con: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, FeatureSet]:
    """The settlement feature frame of a whole history and its feature set."""
    from features.settlement_features import SETTLEMENT_FEATURES, settlement_features

    return settlement_features(con), SETTLEMENT_FEATURES


def labelled_history(
    data_dir: Path, *, memory_limit: str = "4GB"
) -> tuple[pd.DataFrame, LabelledFrame]:
    """The settlement feature frame of the whole history in ``data_dir``, and its
    settlements with a verdict (:func:`labelled_frame`)."""
    from features.batch import open_history

    con = open_history(data_dir, memory_limit=memory_limit)
    try:
        features, feature_set = history_frame(con)
        labels = settlement_labels(con)
    finally:
        con.close()
    return features, labelled_frame(features, labels, feature_set)


def train_on_history(
    data_dir: Path,
    *,
    params: Mapping[str, Any] | None = None,
    validation_share: float = 0.3,
    memory_limit: str = "4GB",
    max_review_rate: float = 0.01,
) -> TrainingResult:
    """Features and verdicts of the history in ``data_dir``, then :func:`train`; the review
    threshold bounds the share of the history's settlements the model alone sends to
    review (:func:`review_threshold_for`)."""
    features, data = labelled_history(data_dir, memory_limit=memory_limit)
    result = train(data, params=params, validation_share=validation_share)
    matrix = features[list(data.feature_set.columns)].to_numpy(dtype=np.float64)
    threshold = review_threshold_for(result.model, matrix, max_review_rate=max_review_rate)
    model = dataclasses.replace(result.model, review_threshold=threshold)
    metrics = {**result.metrics, "review_threshold": threshold}
    metrics["history_review_rate"] = float(np.mean(model.predict(matrix) >= threshold))
    return dataclasses.replace(result, model=model, metrics=metrics)


def review_threshold_for(
    model: SettlementModel, history: np.ndarray, *, max_review_rate: float, floor: float = 0.5
) -> float:
    """The score at or above which the model asks for review: at least ``floor``, and high
    enough that at most ``max_review_rate`` of the settlements of ``history`` would be sent
    to review by the model alone. The probabilities mean "confirmed, once inspected" (the
    verdicts exist only for settlements someone found suspicious), so over every
    settlement a probability threshold alone would send far too many to review."""
    scores = model.predict(history)
    if not len(scores):
        return floor
    return float(max(floor, np.quantile(scores, 1.0 - max_review_rate, method="higher")))


def model_flags(
    model: SettlementModel,
    features: pd.DataFrame,
    *,
    threshold: float | None = None,
    amounts: Mapping[str, Decimal] | None = None,
    model_name: str = "",
    model_version: str = "",
) -> list[Flag]:
    """A ``review`` flag for every settlement of the feature frame whose calibrated
    probability reaches the threshold, with the three features behind it (SHAP)."""
    limit = model.review_threshold if threshold is None else threshold
    matrix = features[list(model.feature_set.columns)].to_numpy(dtype=np.float64)
    scores = model.predict(matrix)
    chosen = np.flatnonzero(scores >= limit)
    reasons = model.reasons(matrix[chosen]) if len(chosen) else []
    ids = features["settlement_id"].astype(str).to_numpy()
    flags = []
    for i, why in zip(chosen, reasons, strict=True):
        flags.append(
            Flag(
                entity_type="settlement",
                entity_id=str(ids[i]),
                pattern=MODEL_PATTERN,
                score=round(float(scores[i]), 6),
                action="review",
                amount_at_risk=(amounts or {}).get(str(ids[i]), Decimal("0.00")),
                evidence={
                    "model": model_name,
                    "version": model_version,
                    "feature_set": model.feature_set.tag,
                    "probability": round(float(scores[i]), 6),
                    "reasons": [r.as_dict() for r in why],
                },
            )
        )
    return flags
