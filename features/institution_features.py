"""Features of an institution (定点医药机构) against its peer group, for the anomaly detector.

An institution is judged against its peers: the same kind (hospital, primary care, clinic,
pharmacy), level and region (统筹区). Where that group is too small to say what normal
is (fewer than :data:`MIN_PEERS` members), the institution is compared with a coarser
group: same kind and level, then same kind (``peer_group_level`` says which).

What a supervisor looks at, over the settlements before ``until``:

- what it sells: the share of its drug amount on high-value drugs (attractive for resale),
  its price index (unit price over the province's median price for the same item, line
  weighted) and its price-at-cap rate (share of its lines on items it prices at or above
  the 90th percentile of what institutions charge for the item);
- when and to whom: night sales (settled 22:00-06:00 local time), patients from another
  district (region code) and from another city (first four digits: the distance proxy),
  settlements per patient;
- the codes: the share of its coded packs whose previous sale, not reversed by then, was
  at another institution (dispensed elsewhere: 回流药), drug lines without a code, split
  sales;
- reversals, fund share, amount and lines per settlement;
- volume (settlements, patients, log scale): listed apart (:data:`VOLUME_COLUMNS`) since a
  large institution is not suspicious for being large; the detector should compare
  behaviour (:data:`BEHAVIOUR_COLUMNS`) and may use volume only as context.

Every numeric feature also comes as a robust z-score within the peer group
(``z_<feature>``: distance from the group's median in units of 1.4826 x MAD, the standard
deviation when the MAD is 0, at least half the province's scale, clipped to +-10).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import duckdb
import numpy as np
import pandas as pd

from features.featureset import FeatureSet
from features.tables import TIMEZONE
from traceability.batch import prepare

MIN_PEERS: Final = 5
"""A peer group smaller than this falls back to a coarser one."""

Z_CLIP: Final = 10.0
PROVINCE_SCALE_FLOOR: Final = 0.5
"""A peer group's scale is at least this fraction of the province's (robust) scale."""

VOLUME_COLUMNS: Final = ("log_settlements", "log_patients")
BEHAVIOUR_COLUMNS: Final = (
    "high_value_drug_share",
    "price_index",
    "price_at_cap_rate",
    "night_share",
    "other_district_patient_share",
    "other_city_patient_share",
    "settlements_per_patient",
    "dispensed_elsewhere_share",
    "uncoded_drug_line_share",
    "split_sale_share",
    "reversal_rate",
    "fund_paid_share",
    "log_amount_per_settlement",
    "lines_per_settlement",
)
BASE_COLUMNS: Final = (*VOLUME_COLUMNS, *BEHAVIOUR_COLUMNS)

INSTITUTION_FEATURES: Final = FeatureSet(
    name="institution",
    version="1",
    columns=(*BASE_COLUMNS, *(f"z_{c}" for c in BASE_COLUMNS)),
)
"""The institution feature set: the features, then their z-scores within the peer group."""

_UNTIL: Final = "($until IS NULL OR s.settled_at < $until)"

_SETTLEMENT_SQL: Final = f"""
SELECT s.institution_id,
       count(*)::DOUBLE AS n_settlements,
       count(DISTINCT s.patient_id)::DOUBLE AS n_patients,
       avg(CASE WHEN hour(s.settled_at AT TIME ZONE '{TIMEZONE}') >= 22
                  OR hour(s.settled_at AT TIME ZONE '{TIMEZONE}') < 6 THEN 1.0 ELSE 0.0 END)
           AS night_share,
       avg(CASE WHEN p.region_code <> i.region_code THEN 1.0 ELSE 0.0 END)
           AS other_district_patient_share,
       avg(CASE WHEN left(p.region_code, 4) <> left(i.region_code, 4) THEN 1.0 ELSE 0.0 END)
           AS other_city_patient_share,
       avg(CASE WHEN r.reversed_at IS NOT NULL AND ($until IS NULL OR r.reversed_at < $until)
                THEN 1.0 ELSE 0.0 END) AS reversal_rate,
       coalesce(sum(s.fund_paid)::DOUBLE / nullif(sum(s.total_amount)::DOUBLE, 0), 0)
           AS fund_paid_share,
       avg(s.total_amount::DOUBLE) AS amount_per_settlement
FROM settlements s
JOIN institutions i USING (institution_id)
LEFT JOIN patients p USING (patient_id)
LEFT JOIN reversals r USING (settlement_id)
WHERE {_UNTIL}
GROUP BY s.institution_id
"""  # noqa: S608 - a constant zone name

_LINES_SQL: Final = f"""
WITH lines AS (
    SELECT s.institution_id, i.item_type, i.item_code, i.unit_price::DOUBLE AS unit_price,
           i.amount::DOUBLE AS amount, len(coalesce(i.trace_codes, [])) AS n_codes,
           coalesce(i.split_sale, false) AS split_sale,
           coalesce(d.high_value, false) AND i.item_type = 'drug' AS high_value
    FROM settlement_items i JOIN settlements s USING (settlement_id)
    LEFT JOIN drugs d ON d.drug_code = i.item_code AND i.item_type = 'drug'
    WHERE {_UNTIL}
),
inst_item AS (  -- what each institution charges for each item
    SELECT institution_id, item_type, item_code, median(unit_price) AS price
    FROM lines WHERE unit_price IS NOT NULL GROUP BY ALL
),
item AS (  -- what the province charges for it: the median and the cap (90th percentile)
    SELECT item_type, item_code, median(price) AS median_price,
           quantile_cont(price, 0.9) AS cap_price
    FROM inst_item GROUP BY ALL
),
priced AS (
    SELECT l.*, l.unit_price / nullif(it.median_price, 0) AS price_ratio,
           CASE WHEN ii.price >= it.cap_price THEN 1.0 ELSE 0.0 END AS at_cap
    FROM lines l
    JOIN inst_item ii USING (institution_id, item_type, item_code)
    JOIN item it USING (item_type, item_code)
)
SELECT institution_id,
       count(*)::DOUBLE AS n_lines,
       coalesce(sum(amount) FILTER (WHERE high_value)
                / nullif(sum(amount) FILTER (WHERE item_type = 'drug'), 0), 0) AS high_value_drug_share,
       coalesce(avg(price_ratio), 1) AS price_index,
       avg(at_cap) AS price_at_cap_rate,
       coalesce(avg(CASE WHEN n_codes = 0 THEN 1.0 ELSE 0.0 END)
                FILTER (WHERE item_type = 'drug'), 0) AS uncoded_drug_line_share,
       coalesce(avg(CASE WHEN split_sale THEN 1.0 ELSE 0.0 END)
                FILTER (WHERE item_type = 'drug'), 0) AS split_sale_share
FROM priced GROUP BY institution_id
"""  # noqa: S608 - our own fragments

_ELSEWHERE_SQL: Final = """
WITH sales AS (
    SELECT r.institution_id, r.settled_at, r.canonical,
           lag(r.institution_id) OVER w AS previous_institution,
           lag(r.reversed_at) OVER w AS previous_reversed_at,
           lag(r.settled_at) OVER w AS previous_settled_at
    FROM resolved r
    WHERE r.canonical IS NOT NULL AND ($until IS NULL OR r.settled_at < $until)
    WINDOW w AS (PARTITION BY r.canonical ORDER BY r.settled_at, r.settlement_id, r.line_no, r.pos)
)
SELECT institution_id,
       avg(CASE WHEN previous_institution IS NOT NULL
                 AND previous_institution <> institution_id
                 AND previous_settled_at < settled_at
                 AND (previous_reversed_at IS NULL OR previous_reversed_at > settled_at)
                THEN 1.0 ELSE 0.0 END) AS dispensed_elsewhere_share
FROM sales s GROUP BY institution_id
"""


def peer_groups(institutions: pd.DataFrame, *, min_peers: int = MIN_PEERS) -> pd.DataFrame:
    """``peer_group`` and ``peer_group_level`` of each institution (``kind``, ``level``,
    ``region_code`` columns): kind|level|region where that group has ``min_peers`` members,
    else kind|level, else kind."""
    kind = institutions["kind"].astype(str)
    level = institutions["level"].astype("Int64").astype(str)
    region = institutions["region_code"].astype(str)
    candidates = (
        ("kind_level_region", kind + "|" + level + "|" + region),
        ("kind_level", kind + "|" + level),
        ("kind", kind),
    )
    group = pd.Series(pd.NA, index=institutions.index, dtype=object)
    which = pd.Series(pd.NA, index=institutions.index, dtype=object)
    for name, key in candidates:
        size = key.map(key.value_counts())
        take = group.isna() & ((size >= min_peers) | (name == "kind"))
        group[take] = key[take]
        which[take] = name
    return pd.DataFrame(
        {"peer_group": group.astype(str), "peer_group_level": which.astype(str)},
        index=institutions.index,
    )


def _robust_scale(values: pd.DataFrame, groups: np.ndarray) -> pd.DataFrame:
    median = values.groupby(groups).transform("median")
    mad = (values - median).abs().groupby(groups).transform("median") * 1.4826
    std = values.groupby(groups).transform("std", ddof=0).fillna(0.0)
    scale: pd.DataFrame = mad.where(mad > 0, std)
    return scale


def peer_z_scores(values: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """Each column's robust z-score within its peer group (``groups``): (x - the group's
    median) / scale, clipped to +-Z_CLIP. The scale is 1.4826 MAD of the group (its
    standard deviation when the MAD is 0), but never less than half the province's own
    (a tight group does not make a small difference look large); 0 when all are 0."""
    keys = groups.to_numpy()
    median = values.groupby(keys).transform("median")
    local = _robust_scale(values, keys)
    province = _robust_scale(values, np.zeros(len(values), dtype=np.int64))
    scale = np.maximum(local, PROVINCE_SCALE_FLOOR * province)
    z = (values - median) / scale.where(scale > 0)
    return z.fillna(0.0).clip(-Z_CLIP, Z_CLIP).astype(np.float64)


def institution_features(
    con: duckdb.DuckDBPyConnection, until: datetime | None = None
) -> pd.DataFrame:
    """One row per institution of the history behind ``con`` (``features.batch`` views),
    from the settlements before ``until`` (all when None): ``institution_id, kind, level,
    region_code, peer_group, peer_group_level``, then ``INSTITUTION_FEATURES.columns``
    (float64). An institution without settlements has zero features."""
    params = {"until": until}
    institutions = (
        con.sql(
            "SELECT institution_id, kind, level, region_code FROM institutions ORDER BY institution_id"
        )
        .to_arrow_table()
        .to_pandas()
    )
    per_settlement = con.sql(_SETTLEMENT_SQL, params=params).to_arrow_table().to_pandas()
    per_line = con.sql(_LINES_SQL, params=params).to_arrow_table().to_pandas()
    prepare(con)  # the resolved codes (traceability.batch)
    elsewhere = con.sql(_ELSEWHERE_SQL, params=params).to_arrow_table().to_pandas()
    frame = (
        institutions.merge(per_settlement, on="institution_id", how="left")
        .merge(per_line, on="institution_id", how="left")
        .merge(elsewhere, on="institution_id", how="left")
    )
    n_settlements = frame["n_settlements"].fillna(0.0)
    values = pd.DataFrame(index=frame.index)
    values["log_settlements"] = np.log1p(n_settlements)
    values["log_patients"] = np.log1p(frame["n_patients"].fillna(0.0))
    for c in (
        "high_value_drug_share",
        "price_index",
        "price_at_cap_rate",
        "night_share",
        "other_district_patient_share",
        "other_city_patient_share",
    ):
        values[c] = frame[c]
    values["settlements_per_patient"] = n_settlements / frame["n_patients"].where(
        frame["n_patients"] > 0
    )
    for c in (
        "dispensed_elsewhere_share",
        "uncoded_drug_line_share",
        "split_sale_share",
        "reversal_rate",
        "fund_paid_share",
    ):
        values[c] = frame[c]
    values["log_amount_per_settlement"] = np.log1p(frame["amount_per_settlement"].clip(lower=0))
    values["lines_per_settlement"] = frame["n_lines"] / n_settlements.where(n_settlements > 0)
    values = values.astype(np.float64).fillna(0.0)
    values.loc[n_settlements == 0, "price_index"] = 1.0

    groups = peer_groups(institutions)
    z = peer_z_scores(values, groups["peer_group"]).add_prefix("z_")
    head = institutions[["institution_id", "kind", "level", "region_code"]].copy()
    head["kind"] = head["kind"].astype(str)
    head["region_code"] = head["region_code"].astype(str)
    return pd.concat([head, groups, values, z], axis=1)[
        [
            "institution_id",
            "kind",
            "level",
            "region_code",
            "peer_group",
            "peer_group_level",
            *INSTITUTION_FEATURES.columns,
        ]
    ].reset_index(drop=True)
