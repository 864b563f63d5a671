"""Unsupervised anomaly detectors behind one wrapper of ours, and one per peer group.

:class:`AnomalyDetector` puts any PyOD detector (named by its class: ``"IForest"``,
``"ECOD"``, ``"KNN"``...) behind the scikit-learn outlier-detector API, with one promise the
flag functions and the scorer rely on: ``score_samples`` is higher for a more anomalous row
and lies in [0, 1], where it reads as "the share of the training rows this row is more
anomalous than" (the training scores' empirical CDF, interpolated between quantiles). A row
beyond the training range still gets a distinct score (an exponential tail towards 0 or 1),
so the wrapper is a strictly increasing transform of the detector's raw score and ranks
rows exactly as the detector does.

:class:`PeerGroupDetector` fits one such detector per peer group (institutions of one kind
and level, say) so each entity is judged against its peers; a group with too few members
falls back to the model fitted on all rows. Its scores are on the same [0, 1] scale.

Conventions of scikit-learn's outlier detectors that hold here: ``predict`` gives -1 for an
outlier and 1 for an inlier; ``decision_function`` is negative for an outlier. The one
deliberate difference: scikit-learn's ``score_samples`` is higher for a *normal* row, ours
for an *anomalous* one (CONVENTIONS.md), so ``decision_function = offset_ - score_samples``.

PyOD's ECOD and COPOD score a batch against the training rows *and the batch itself*, so a
row's score depends on its batch; the wrapper scores through a copy of the fitted detector
so the fitted model never changes while scoring, but the batch dependence stays: use them
in batch screening, not on the synchronous path.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Mapping
from typing import Any, Final, Self

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.preprocessing import MinMaxScaler, RobustScaler
from sklearn.utils.validation import check_is_fitted, validate_data

#: PyOD detectors the wrapper knows, by class name -> module.
PYOD_DETECTORS: Final[Mapping[str, str]] = {
    "ABOD": "pyod.models.abod",
    "CBLOF": "pyod.models.cblof",
    "COF": "pyod.models.cof",
    "COPOD": "pyod.models.copod",
    "ECOD": "pyod.models.ecod",
    "GMM": "pyod.models.gmm",
    "HBOS": "pyod.models.hbos",
    "IForest": "pyod.models.iforest",
    "INNE": "pyod.models.inne",
    "KDE": "pyod.models.kde",
    "KNN": "pyod.models.knn",
    "LODA": "pyod.models.loda",
    "LOF": "pyod.models.lof",
    "MAD": "pyod.models.mad",
    "MCD": "pyod.models.mcd",
    "OCSVM": "pyod.models.ocsvm",
    "PCA": "pyod.models.pca",
    "SOD": "pyod.models.sod",
}

#: Quantile levels of the training scores kept for the empirical CDF (at most this many).
N_QUANTILES: Final = 1001


def make_pyod(name: str, params: Mapping[str, Any] | None, random_state: Any) -> Any:
    """A fresh, unfitted PyOD detector of class ``name``; ``random_state`` goes to it if it
    takes one."""
    module = PYOD_DETECTORS.get(name)
    if module is None:
        known = ", ".join(sorted(PYOD_DETECTORS))
        msg = f"unknown detector {name!r}; known PyOD detectors: {known}"
        raise ValueError(msg)
    cls = getattr(importlib.import_module(module), name)
    kwargs = dict(params or {})
    if (
        "random_state" in inspect.signature(cls.__init__).parameters
        and "random_state" not in kwargs
    ):
        kwargs["random_state"] = random_state
    return cls(**kwargs)


def _feature_labels(X: Any, n_features: int) -> list[str]:
    columns = getattr(X, "columns", None)
    if columns is not None and len(columns) == n_features:
        return [str(c) for c in columns]
    return [f"column {j}" for j in range(n_features)]


def _row_label(X: Any, i: int) -> str:
    index = getattr(X, "index", None)
    if isinstance(index, pd.Index) and not isinstance(index, pd.RangeIndex):
        return f"row {i} (index {index[i]!r})"
    return f"row {i}"


def check_finite(X: Any, values: NDArray[np.float64]) -> None:
    """Raise a ValueError naming the first row and column that hold NaN or inf."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    rows, cols = np.nonzero(bad)
    labels = _feature_labels(X, values.shape[1])
    per_column = bad.sum(axis=0)
    columns = ", ".join(f"{labels[j]!r} ({per_column[j]})" for j in np.flatnonzero(per_column))
    msg = (
        f"X contains NaN or inf in {int(bad.sum())} cell(s), first at {_row_label(X, rows[0])}, "
        f"column {labels[cols[0]]!r}; columns affected (cells): {columns}"
    )
    raise ValueError(msg)


class AnomalyDetector(OutlierMixin, BaseEstimator):  # type: ignore[misc]
    """One PyOD detector, robustly scaled input, scores in [0, 1] (higher = more anomalous).

    Parameters
    ----------
    detector:
        Name of a PyOD detector class (:data:`PYOD_DETECTORS`).
    detector_params:
        Keyword arguments for it (PyOD defaults otherwise).
    contamination:
        Share of training rows that ``predict`` calls outliers, in (0, 0.5].
    random_state:
        Seed for detectors that draw at random (IForest, LODA...).
    scale:
        How each feature is scaled on the training rows before the detector sees it:
        ``"robust"`` (median and interquartile range, ``RobustScaler``: outliers do not set
        the scale), ``"minmax"`` (``MinMaxScaler``, ADBench's protocol; HBOS's density
        regulariser assumes it) or ``"none"``.

    A feature constant over the training rows is left out (``used_features_``): it tells the
    detector nothing, and some detectors (PCA) divide by its zero variance.
    """

    def __init__(
        self,
        detector: str = "IForest",
        detector_params: Mapping[str, Any] | None = None,
        *,
        contamination: float = 0.1,
        random_state: int | np.random.RandomState | None = None,
        scale: str = "robust",
    ) -> None:
        self.detector = detector
        self.detector_params = detector_params
        self.contamination = contamination
        self.random_state = random_state
        self.scale = scale

    # ------------------------------------------------------------------ fitting
    def fit(self, X: ArrayLike, y: object = None) -> Self:
        """Fit the scaler and the detector on the rows of ``X``; keep the training scores'
        quantiles (the [0, 1] scale) and the ``contamination`` threshold."""
        if not (isinstance(self.contamination, int | float) and 0.0 < self.contamination <= 0.5):
            msg = f"contamination must be a number in (0, 0.5], got {self.contamination!r}"
            raise ValueError(msg)
        values = self._validate(X, reset=True, min_rows=2)
        varying = np.flatnonzero(np.ptp(values, axis=0) > 0)
        self.used_features_ = varying if varying.size else np.arange(values.shape[1])
        values = values[:, self.used_features_]
        self.scaler_ = _scaler(self.scale)
        if self.scaler_ is not None:
            self.scaler_.fit(values)
        model = make_pyod(self.detector, self.detector_params, self.random_state)
        model.fit(self._scaled(values))
        self.detector_ = model
        raw = np.asarray(model.decision_scores_, dtype=np.float64)
        if not np.isfinite(raw).all():
            msg = (
                f"detector {self.detector} gave {int((~np.isfinite(raw)).sum())} non-finite "
                f"training scores (PCA does on a rank-deficient matrix: set its n_components "
                f"below the rank, or use another detector)"
            )
            raise ValueError(msg)
        levels = np.linspace(0.0, 1.0, min(N_QUANTILES, raw.size))
        quantiles = np.quantile(raw, levels)
        # equal quantiles (tied training scores) share one level: their mean (a mid-rank)
        self.quantiles_, inverse = np.unique(quantiles, return_inverse=True)
        self.levels_ = np.bincount(inverse, weights=levels) / np.bincount(inverse)
        spread = float(self.quantiles_[-1] - self.quantiles_[0])
        self.tail_scale_ = spread if spread > 0 else 1.0
        self.tail_mass_ = 0.5 / (raw.size + 1)
        self.training_scores_ = self._to_unit(raw)
        self.offset_ = float(np.quantile(self.training_scores_, 1.0 - self.contamination))
        return self

    # ------------------------------------------------------------------ scoring
    def raw_scores(self, X: ArrayLike) -> NDArray[np.float64]:
        """The PyOD detector's own anomaly scores of ``X`` (higher = more anomalous)."""
        check_is_fitted(self)
        values = self._validate(X, reset=False)[:, self.used_features_]
        model = copy.copy(self.detector_)  # ECOD/COPOD write to themselves while scoring
        return np.asarray(model.decision_function(self._scaled(values)), dtype=np.float64)

    def score_samples(self, X: ArrayLike) -> NDArray[np.float64]:
        """Anomaly score in [0, 1] per row, higher = more anomalous: where the detector's raw
        score falls among the training rows' scores."""
        return self._to_unit(self.raw_scores(X))

    def decision_function(self, X: ArrayLike) -> NDArray[np.float64]:
        """``offset_ - score_samples(X)``: negative for an outlier (scikit-learn's sign)."""
        check_is_fitted(self)
        return self.offset_ - self.score_samples(X)

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        """-1 for a row scoring above the training ``contamination`` quantile, else 1."""
        return np.where(self.decision_function(X) < 0, -1, 1).astype(np.int64)

    def fit_predict(self, X: ArrayLike, y: object = None, **kwargs: Any) -> NDArray[np.int64]:
        """Fit, then label the training rows by their training scores (for KNN or LOF these
        leave each row out of its own neighbourhood, unlike ``predict`` on the same rows)."""
        self.fit(X, y, **kwargs)
        return np.where(self.training_scores_ > self.offset_, -1, 1).astype(np.int64)

    # ------------------------------------------------------------------ internals
    def _validate(self, X: ArrayLike, *, reset: bool, min_rows: int = 1) -> NDArray[np.float64]:
        values = validate_data(
            self,
            X,
            reset=reset,
            dtype=np.float64,
            ensure_all_finite=False,
            ensure_min_samples=min_rows,
        )
        check_finite(X, values)
        return np.asarray(values, dtype=np.float64)

    def _scaled(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        if self.scaler_ is None:
            return values
        return np.asarray(self.scaler_.transform(values), dtype=np.float64)

    def _to_unit(self, raw: NDArray[np.float64]) -> NDArray[np.float64]:
        """Training-score ECDF inside the training range, shrunk to [m, 1 - m]; exponential
        tails beyond it, so the map is strictly increasing and stays inside [0, 1]."""
        q, lv, m, s = self.quantiles_, self.levels_, self.tail_mass_, self.tail_scale_
        if q.size == 1:
            inside = np.full(raw.shape, 0.5)
        else:
            inside = m + (1.0 - 2.0 * m) * np.interp(raw, q, lv)
        above = 1.0 - m * np.exp(-np.maximum(raw - q[-1], 0.0) / s)
        below = m * np.exp(np.minimum(raw - q[0], 0.0) / s)
        out = np.where(raw > q[-1], above, np.where(raw < q[0], below, inside))
        return np.clip(out, 0.0, 1.0)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class PeerGroupDetector(BaseEstimator):  # type: ignore[misc]
    """One :class:`AnomalyDetector` per peer group, each entity scored against its peers.

    ``fit(X, groups=...)`` fits a pooled detector on every row and one detector per group
    with at least ``min_group_size`` rows; ``score_samples(X, groups=...)`` scores each row
    with its group's detector, or the pooled one when its group was too small or unseen.
    Scores are in [0, 1], higher = more anomalous, each on its own detector's training scale.
    """

    def __init__(
        self,
        detector: str = "IForest",
        detector_params: Mapping[str, Any] | None = None,
        *,
        contamination: float = 0.1,
        random_state: int | None = None,
        scale: str = "robust",
        min_group_size: int = 10,
    ) -> None:
        self.detector = detector
        self.detector_params = detector_params
        self.contamination = contamination
        self.random_state = random_state
        self.scale = scale
        self.min_group_size = min_group_size

    def _member(self) -> AnomalyDetector:
        return AnomalyDetector(
            self.detector,
            self.detector_params,
            contamination=self.contamination,
            random_state=self.random_state,
            scale=self.scale,
        )

    def fit(self, X: ArrayLike, y: object = None, *, groups: ArrayLike) -> Self:
        """Fit the pooled detector and one detector per large enough peer group."""
        labels = self._groups(X, groups)
        self.pooled_ = self._member().fit(X)
        self.n_features_in_ = self.pooled_.n_features_in_
        if hasattr(self.pooled_, "feature_names_in_"):
            self.feature_names_in_ = self.pooled_.feature_names_in_
        self.detectors_: dict[str, AnomalyDetector] = {}
        self.group_sizes_: dict[str, int] = {}
        for group in sorted(set(labels)):
            rows = np.flatnonzero(labels == group)
            self.group_sizes_[group] = int(rows.size)
            if rows.size >= self.min_group_size:
                self.detectors_[group] = self._member().fit(_take(X, rows))
        return self

    def model_for(self, group: str) -> tuple[str, AnomalyDetector]:
        """The detector that judges a member of ``group``: its own, else ``("*pooled*", ...)``."""
        check_is_fitted(self)
        if group in self.detectors_:
            return group, self.detectors_[group]
        return "*pooled*", self.pooled_

    def score_samples(self, X: ArrayLike, *, groups: ArrayLike) -> NDArray[np.float64]:
        """Anomaly score in [0, 1] per row against its peer group (higher = more anomalous)."""
        check_is_fitted(self)
        labels = self._groups(X, groups)
        out = np.empty(labels.size, dtype=np.float64)
        for group in sorted(set(labels)):
            rows = np.flatnonzero(labels == group)
            out[rows] = self.model_for(group)[1].score_samples(_take(X, rows))
        return out

    def predict(self, X: ArrayLike, *, groups: ArrayLike) -> NDArray[np.int64]:
        """-1 for a row above its peer detector's ``contamination`` threshold, else 1."""
        labels = self._groups(X, groups)
        scores = self.score_samples(X, groups=labels)
        offsets = np.array([self.model_for(g)[1].offset_ for g in labels])
        return np.where(scores > offsets, -1, 1).astype(np.int64)

    @staticmethod
    def _groups(X: ArrayLike, groups: ArrayLike) -> NDArray[np.str_]:
        labels = np.asarray(groups).astype(str)
        n_rows = len(X)  # type: ignore[arg-type]
        if labels.ndim != 1 or labels.size != n_rows:
            msg = f"groups must hold one peer group per row: {labels.size} groups for {n_rows} rows"
            raise ValueError(msg)
        return labels


def _scaler(scale: str) -> RobustScaler | MinMaxScaler | None:
    if scale == "robust":
        return RobustScaler()
    if scale == "minmax":
        return MinMaxScaler()
    if scale == "none":
        return None
    msg = f"scale must be 'robust', 'minmax' or 'none', got {scale!r}"
    raise ValueError(msg)


def _take(X: ArrayLike, rows: NDArray[np.intp]) -> Any:
    if isinstance(X, pd.DataFrame):
        return X.iloc[rows]
    return np.asarray(X)[rows]
