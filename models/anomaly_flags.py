"""The peer-group anomaly flags: ``anomalous_institution`` and ``anomalous_settlement``.

An institution is judged on its behaviour against its peers (the ``z_`` columns of
``features.institution_features``: robust z-scores within the peer group, so institutions of
every group share one scale and one detector can be fitted on the whole province; a peer
group with at least ``min_group_size`` members gets a detector of its own). Volume is left
out on purpose: a big hospital is not suspicious for being big (the benign
``volume_outlier`` look-alikes).

A settlement is judged on the shape of its bill (prices and quantities against the items'
reference, amount, item mix) against settlements of the same visit type. Settlements a rule
already explains (``explained``: ids the rules or code checks flagged) are not flagged
again: ``anomalous_settlement`` is for what no single rule explains.

Models are fitted on one history (``fit_*_model``) and flag another; how many are flagged
comes from the training scores (a row is flagged when it scores above the training
province's ``1 - contamination`` quantile of its peer detector), never from the truth of the
province being scored. Every flag carries the detector, the peer group, its score and the
features that make it anomalous (largest robust z-scores, with the value and the peer
median).
"""

from __future__ import annotations

from collections.abc import Collection
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

import numpy as np
import pandas as pd

from features.flags import Flag
from features.institution_features import BEHAVIOUR_COLUMNS
from models.anomaly import PeerGroupDetector

INSTITUTION_COLUMNS: Final = tuple(f"z_{c}" for c in BEHAVIOUR_COLUMNS)
"""What the institution detector sees: behaviour against the peer group, not volume."""

SETTLEMENT_COLUMNS: Final = (
    "log_total_amount",
    "price_ratio_max",
    "price_ratio_mean",
    "quantity_ratio_max",
    "service_quantity_ratio_max",
    "n_service_lines",
    "service_amount_share",
)
"""What the settlement detector sees: the shape of the bill."""

CENT: Final = Decimal("0.01")


def _yuan(value: float) -> Decimal:
    return Decimal(repr(max(float(value), 0.0))).quantize(CENT, rounding=ROUND_HALF_UP)


def visit_group(features: pd.DataFrame) -> pd.Series:
    """The settlement's peer group: its visit type, from the ``visit_*`` columns."""
    group = np.select(
        [features["visit_inpatient"] > 0, features["visit_pharmacy"] > 0],
        ["inpatient", "pharmacy"],
        "outpatient",
    )
    return pd.Series(group, index=features.index, name="peer_group")


def _peer_stats(values: pd.DataFrame, groups: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per row, its peer group's median and robust scale (1.4826 MAD, else the standard
    deviation, else 1) of every column."""
    keys = groups.to_numpy()
    median = values.groupby(keys).transform("median")
    mad = (values - median).abs().groupby(keys).transform("median") * 1.4826
    std = values.groupby(keys).transform("std", ddof=0).fillna(0.0)
    scale = mad.where(mad > 0, std).where(lambda s: s > 0, 1.0)
    return median, scale


def _top_features(
    row: int, z: pd.DataFrame, values: pd.DataFrame, median: pd.DataFrame, n: int
) -> list[dict[str, object]]:
    zs = z.iloc[row]
    order = zs.abs().sort_values(ascending=False, kind="stable").index[:n]
    return [
        {
            "feature": str(c),
            "value": round(float(values.iloc[row][c]), 4),
            "peer_median": round(float(median.iloc[row][c]), 4),
            "z": round(float(zs[c]), 2),
        }
        for c in order
    ]


# ---------------------------------------------------------------- institutions


def fit_institution_model(
    features: pd.DataFrame,
    *,
    detector: str = "IForest",
    detector_params: dict[str, object] | None = None,
    contamination: float = 0.05,
    min_group_size: int = 30,
    random_state: int = 0,
) -> PeerGroupDetector:
    """A peer-group detector fitted on one province's institution features."""
    return PeerGroupDetector(
        detector,
        detector_params if detector_params is not None else {"n_estimators": 300},
        contamination=contamination,
        random_state=random_state,
        min_group_size=min_group_size,
    ).fit(features[list(INSTITUTION_COLUMNS)], groups=features["peer_group"])


def institution_scores(features: pd.DataFrame, model: PeerGroupDetector) -> np.ndarray:
    """Anomaly score in [0, 1] of every institution of the frame."""
    return model.score_samples(features[list(INSTITUTION_COLUMNS)], groups=features["peer_group"])


def anomalous_institution_flags(
    features: pd.DataFrame,
    *,
    model: PeerGroupDetector | None = None,
    top_features: int = 5,
) -> list[Flag]:
    """``anomalous_institution`` flags over an institution feature frame
    (``features.institution_features``): an institution above its detector's training
    threshold. ``model``: fitted on another (earlier) province; fitted on this one when None.

    ``amount_at_risk``: the fund paid beyond what the peer median per settlement would
    have paid for its settlements (settlements x (fund paid per settlement - peer median)).
    """
    model = model if model is not None else fit_institution_model(features)
    frame = features.reset_index(drop=True)
    scores = institution_scores(frame, model)
    groups = frame["peer_group"].astype(str)
    raw = frame[list(BEHAVIOUR_COLUMNS)]
    median, _ = _peer_stats(raw, groups)
    z = frame[list(INSTITUTION_COLUMNS)].set_axis(list(BEHAVIOUR_COLUMNS), axis=1)
    n_settlements = np.expm1(frame["log_settlements"].to_numpy(np.float64))
    fund_per = np.expm1(frame["log_amount_per_settlement"].to_numpy(np.float64)) * frame[
        "fund_paid_share"
    ].to_numpy(np.float64)
    peer_fund_per = pd.Series(fund_per).groupby(groups.to_numpy()).transform("median").to_numpy()
    flags = []
    for i in np.flatnonzero(scores > 0):
        judged_by, detector = model.model_for(groups.iloc[i])
        if scores[i] <= detector.offset_:
            continue
        flags.append(
            Flag(
                entity_type="institution",
                entity_id=str(frame["institution_id"].iloc[i]),
                pattern="anomalous_institution",
                score=round(float(scores[i]), 6),
                action="review",
                amount_at_risk=_yuan(n_settlements[i] * (fund_per[i] - peer_fund_per[i])),
                evidence={
                    "detector": model.detector,
                    "peer_group": groups.iloc[i],
                    "peer_group_level": str(frame["peer_group_level"].iloc[i]),
                    "judged_by": judged_by,
                    "score": round(float(scores[i]), 6),
                    "threshold": round(float(detector.offset_), 6),
                    "top_features": _top_features(int(i), z, raw, median, top_features),
                },
            )
        )
    return flags


# ---------------------------------------------------------------- settlements


def fit_settlement_model(
    features: pd.DataFrame,
    *,
    detector: str = "IForest",
    detector_params: dict[str, object] | None = None,
    contamination: float = 0.002,
    min_group_size: int = 200,
    random_state: int = 0,
) -> PeerGroupDetector:
    """A detector per visit type fitted on one province's settlement features."""
    return PeerGroupDetector(
        detector,
        detector_params if detector_params is not None else {"n_estimators": 200},
        contamination=contamination,
        random_state=random_state,
        min_group_size=min_group_size,
    ).fit(features[list(SETTLEMENT_COLUMNS)], groups=visit_group(features))


def settlement_scores(features: pd.DataFrame, model: PeerGroupDetector) -> np.ndarray:
    """Anomaly score in [0, 1] of every settlement of the frame."""
    return model.score_samples(features[list(SETTLEMENT_COLUMNS)], groups=visit_group(features))


def anomalous_settlement_flags(
    features: pd.DataFrame,
    *,
    model: PeerGroupDetector | None = None,
    explained: Collection[str] = (),
    top_features: int = 5,
) -> list[Flag]:
    """``anomalous_settlement`` flags over a settlement feature frame
    (``features.settlement_features``): a settlement above its visit type's training
    threshold that no rule explains (``explained``: settlement ids already flagged).
    ``amount_at_risk``: its fund paid."""
    model = model if model is not None else fit_settlement_model(features)
    frame = features.reset_index(drop=True)
    scores = settlement_scores(frame, model)
    groups = visit_group(frame)
    values = frame[list(SETTLEMENT_COLUMNS)]
    median, scale = _peer_stats(values, groups)
    z = (values - median) / scale
    skip = set(explained)
    fund_paid = frame["total_amount"].to_numpy(np.float64) * frame["fund_paid_share"].to_numpy(
        np.float64
    )
    flags = []
    for i in np.flatnonzero(scores > 0):
        sid = str(frame["settlement_id"].iloc[i])
        judged_by, detector = model.model_for(groups.iloc[i])
        if scores[i] <= detector.offset_ or sid in skip:
            continue
        flags.append(
            Flag(
                entity_type="settlement",
                entity_id=sid,
                pattern="anomalous_settlement",
                score=round(float(scores[i]), 6),
                action="review",
                amount_at_risk=_yuan(fund_paid[i]),
                evidence={
                    "detector": model.detector,
                    "peer_group": groups.iloc[i],
                    "judged_by": judged_by,
                    "institution_id": str(frame["institution_id"].iloc[i]),
                    "score": round(float(scores[i]), 6),
                    "threshold": round(float(detector.offset_), 6),
                    "top_features": _top_features(int(i), z, values, median, top_features),
                },
            )
        )
    return flags
