"""Point-in-time features of a settlement (结算), one definition for batch and online.

A settlement's features use only what was known before it:

- the settlement itself: amounts, fund share, item mix, unit prices and quantities against
  the item's reference price and typical quantity, high-value drug units against the
  catalog's ``max_units_per_day``, trace-code facts (codes per drug line, drug lines
  without a code, units sold against the packs the codes stand for), visit type, the
  patient's age and gender;
- the patient's earlier settlements in the 30, 90 and 365 days before it (strictly before
  ``settled_at``): visits, distinct institutions, amount billed, fund paid, visits at this
  institution, days since the previous settlement, and the high-value drug units against
  plausible use (units of a drug in the window, this settlement's included, over
  ``max_units_per_day`` x window days; the largest over the patient's high-value drugs).
  History semantics are those of ``features.store``: an earlier settlement counts for
  every later settlement of the patient, at any institution, until it is reversed (a
  reversal counts from its ``reversed_at`` on).

Reference prices: the median unit price and the median quantity per line of every item
over a training history (``features.store.compute_item_reference``), rounded as the store
keeps them. Batch uses the table it is given (by default the one of the whole history in
``con``); online reads the store's ``item_reference``, which is loaded with the model's
feature set (``features.store.load_item_reference``). A point-in-time median per item
would be exact but costs a running median per item; a reference fixed at training time is
what an auditor's price list is, and it cannot leak the settlement being scored.

The per-line facts and their aggregation per settlement are one numpy function
(:func:`_line_block`) that both executors call; the patient windows are one SQL per
executor (DuckDB in batch, the store online), and a parity test replays a history through
the online path and demands the batch values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import Connection, and_, bindparam, case, distinct, func, or_, select
from sqlalchemy.sql import Select

from features.featureset import FeatureSet
from features.knowledge import KnowledgeBase, knowledge_base
from features.settlement import SettlementView
from features.store import (
    compute_item_reference,
    patient_history,
    patient_visits,
)
from features.tables import TIMEZONE
from traceability.batch import materialise
from traceability.store import MergedRead, drugs

WINDOWS: Final = (30, 90, 365)
"""The patient's look-back windows, in days before the settlement."""

NO_PREVIOUS_DAYS: Final = 365.0
"""``p_days_since_previous`` when the patient had no settlement in the last 365 days."""

_LINE_COLUMNS: Final = (
    "n_lines",
    "n_drug_lines",
    "n_service_lines",
    "n_material_lines",
    "drug_amount_share",
    "service_amount_share",
    "material_amount_share",
    "price_ratio_max",
    "price_ratio_mean",
    "quantity_ratio_max",
    "service_quantity_ratio_max",
    "high_value_amount_share",
    "high_value_days_supply_max",
    "codes_per_drug_line",
    "uncoded_drug_line_share",
    "units_per_code_pack_max",
    "split_sale_line_share",
)
_HEAD_COLUMNS: Final = (
    "total_amount",
    "log_total_amount",
    "fund_paid_share",
    "visit_outpatient",
    "visit_inpatient",
    "visit_pharmacy",
    "inpatient_days",
    "patient_age",
    "patient_female",
)
_WINDOW_COLUMNS: Final = (
    *(
        f"p_{what}_{w}d"
        for w in WINDOWS
        for what in ("visits", "institutions", "amount", "fund_paid", "high_value_supply_ratio")
    ),
    "p_visits_here_365d",
    "p_days_since_previous",
)

SETTLEMENT_FEATURES: Final = FeatureSet(
    name="settlement",
    version="1",
    columns=(*_HEAD_COLUMNS, *_LINE_COLUMNS, *_WINDOW_COLUMNS),
)
"""The settlement feature set (columns in vector order)."""

_INDEX: Final = {c: i for i, c in enumerate(SETTLEMENT_FEATURES.columns)}
_ITEM_TYPES: Final = {"drug": 0, "service": 1, "material": 2}
_VISIT_TYPES: Final = ("outpatient", "inpatient", "pharmacy")
_ZONE: Final = ZoneInfo(TIMEZONE)


# ---------------------------------------------------------------- per-line facts (shared)


def _group_sum(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(group, weights=values, minlength=n).astype(np.float64)


def _group_max(values: np.ndarray, group: np.ndarray, n: int, default: float) -> np.ndarray:
    """The largest value per group, NaN left out; ``default`` where a group has none."""
    out = np.full(n, -np.inf)
    ok = ~np.isnan(values)
    np.maximum.at(out, group[ok], values[ok])
    out[np.isneginf(out)] = default
    return out


def _ratio(num: np.ndarray, den: np.ndarray, default: float) -> np.ndarray:
    out = np.full(len(num), default, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _line_block(lines: dict[str, np.ndarray], group: np.ndarray, n: int) -> np.ndarray:
    """The line features (``_LINE_COLUMNS``) of ``n`` settlements, from their lines.

    ``lines`` holds one array per line fact: ``item_type`` (0 drug, 1 service, 2 material,
    3 other), ``quantity``, ``unit_price``, ``amount``, ``ref_price`` and ``ref_quantity``
    (NaN: no reference), ``high_value`` (0/1), ``max_units_per_day`` and ``pack_units``
    (NaN: not in the catalog), ``n_codes``, ``split_sale`` (0/1); ``group`` gives each
    line's settlement (0..n-1). This is the batch executor; :func:`_one_line_block` is
    the same definition for one settlement (numpy costs microseconds per call on a few
    lines: plain floats are ten times faster there); the parity test holds them equal.
    """
    t = lines["item_type"]
    qty = lines["quantity"]
    amount = lines["amount"]
    drug = (t == 0).astype(np.float64)
    service = (t == 1).astype(np.float64)
    material = (t == 2).astype(np.float64)
    hv = lines["high_value"] * drug

    n_lines = np.bincount(group, minlength=n).astype(np.float64)
    n_drug = _group_sum(drug, group, n)
    amount_total = _group_sum(amount, group, n)

    with np.errstate(divide="ignore", invalid="ignore"):
        price_ratio = np.where(
            lines["ref_price"] > 0, lines["unit_price"] / lines["ref_price"], np.nan
        )
        qty_ratio = np.where(lines["ref_quantity"] > 0, qty / lines["ref_quantity"], np.nan)
        days_supply = np.where(
            (hv > 0) & (lines["max_units_per_day"] > 0), qty / lines["max_units_per_day"], np.nan
        )
        pack_units = lines["n_codes"] * lines["pack_units"]
        per_code = np.where((drug > 0) & (pack_units > 0), qty / pack_units, np.nan)
    priced = ~np.isnan(price_ratio)

    block = np.empty((n, len(_LINE_COLUMNS)))
    block[:, 0] = n_lines
    block[:, 1] = n_drug
    block[:, 2] = _group_sum(service, group, n)
    block[:, 3] = _group_sum(material, group, n)
    block[:, 4] = _ratio(_group_sum(amount * drug, group, n), amount_total, 0.0)
    block[:, 5] = _ratio(_group_sum(amount * service, group, n), amount_total, 0.0)
    block[:, 6] = _ratio(_group_sum(amount * material, group, n), amount_total, 0.0)
    block[:, 7] = _group_max(price_ratio, group, n, 1.0)
    block[:, 8] = _ratio(
        _group_sum(np.where(priced, price_ratio, 0.0), group, n),
        _group_sum(priced.astype(np.float64), group, n),
        1.0,
    )
    block[:, 9] = _group_max(qty_ratio, group, n, 1.0)
    block[:, 10] = _group_max(np.where(service > 0, qty_ratio, np.nan), group, n, 0.0)
    block[:, 11] = _ratio(_group_sum(amount * hv, group, n), amount_total, 0.0)
    block[:, 12] = _group_max(days_supply, group, n, 0.0)
    block[:, 13] = _ratio(_group_sum(lines["n_codes"] * drug, group, n), n_drug, 0.0)
    block[:, 14] = _ratio(
        _group_sum(((lines["n_codes"] == 0) * drug).astype(np.float64), group, n), n_drug, 0.0
    )
    block[:, 15] = _group_max(per_code, group, n, 0.0)
    block[:, 16] = _ratio(_group_sum(lines["split_sale"] * drug, group, n), n_drug, 0.0)
    return block


LineFacts = tuple[int, float, float, float, float, float, bool, float, float, int, bool]
"""One line for :func:`_one_line_block`: item type (0 drug, 1 service, 2 material, 3
other), quantity, unit price, amount, reference price, reference quantity, high value,
max units per day, pack units, number of codes, split sale (NaN: unknown)."""


def _one_line_block(lines: Sequence[LineFacts]) -> list[float]:
    """:func:`_line_block` of one settlement, in plain floats (the online executor)."""
    counts = [0, 0, 0, 0]
    amounts = [0.0, 0.0, 0.0, 0.0]
    amount_hv = 0.0
    price_max = qty_max = service_qty_max = supply_max = per_code_max = -math.inf
    price_sum = 0.0
    priced = 0
    codes = uncoded = split = 0
    for (
        item_type,
        qty,
        unit_price,
        amount,
        ref_price,
        ref_qty,
        hv,
        max_upd,
        pack,
        n_codes,
        sp,
    ) in lines:
        counts[item_type] += 1
        amounts[item_type] += amount
        if ref_price > 0:
            price_ratio = unit_price / ref_price
            if price_ratio == price_ratio:
                price_max = max(price_max, price_ratio)
                price_sum += price_ratio
                priced += 1
        if ref_qty > 0:
            qty_ratio = qty / ref_qty
            qty_max = max(qty_max, qty_ratio)
            if item_type == 1:
                service_qty_max = max(service_qty_max, qty_ratio)
        if item_type == 0:
            codes += n_codes
            uncoded += n_codes == 0
            split += sp
            if hv:
                amount_hv += amount
                if max_upd > 0:
                    supply_max = max(supply_max, qty / max_upd)
            pack_units = n_codes * pack
            if pack_units > 0:
                per_code_max = max(per_code_max, qty / pack_units)
    total = sum(amounts)
    n_drug = counts[0]

    def share(x: float) -> float:
        return x / total if total > 0 else 0.0

    def per_drug_line(x: float) -> float:
        return x / n_drug if n_drug > 0 else 0.0

    def top(x: float, default: float) -> float:
        return default if x == -math.inf else x

    return [
        float(len(lines)),
        float(n_drug),
        float(counts[1]),
        float(counts[2]),
        share(amounts[0]),
        share(amounts[1]),
        share(amounts[2]),
        top(price_max, 1.0),
        price_sum / priced if priced else 1.0,
        top(qty_max, 1.0),
        top(service_qty_max, 0.0),
        share(amount_hv),
        top(supply_max, 0.0),
        per_drug_line(codes),
        per_drug_line(uncoded),
        top(per_code_max, 0.0),
        per_drug_line(split),
    ]


def _supply_ratio(units: float, max_units_per_day: float, days: int) -> float:
    """High-value drug units against plausible use over ``days`` days."""
    return units / (max_units_per_day * days)


# ------------------------------------------------------------------------------- batch

_SETTLEMENTS_SQL: Final = f"""
CREATE OR REPLACE TEMP TABLE sf_settlements AS
SELECT (row_number() OVER (ORDER BY s.settled_at, s.settlement_id) - 1)::BIGINT AS sidx,
       s.settlement_id, s.institution_id, s.patient_id, s.settled_at, s.visit_type,
       s.total_amount::DOUBLE AS total_amount, s.fund_paid::DOUBLE AS fund_paid,
       coalesce(date_diff('day', s.admit_date, s.discharge_date), 0)::DOUBLE AS inpatient_days,
       (date_diff('day', p.birth_date, (s.settled_at AT TIME ZONE '{TIMEZONE}')::DATE)
           / 365.25)::DOUBLE AS patient_age,
       CASE WHEN p.gender = 'F' THEN 1.0 ELSE 0.0 END AS patient_female
FROM settlements s LEFT JOIN patients p USING (patient_id)
"""  # noqa: S608 - a constant zone name

_LINES_SQL: Final = """
SELECT s.sidx,
       CASE i.item_type WHEN 'drug' THEN 0 WHEN 'service' THEN 1 WHEN 'material' THEN 2
            ELSE 3 END::DOUBLE AS item_type,
       i.quantity::DOUBLE AS quantity,
       coalesce(i.unit_price::DOUBLE, i.amount::DOUBLE / nullif(i.quantity, 0)) AS unit_price,
       i.amount::DOUBLE AS amount,
       coalesce(r.ref_unit_price::DOUBLE, 'NaN'::DOUBLE) AS ref_price,
       coalesce(r.ref_quantity::DOUBLE, 'NaN'::DOUBLE) AS ref_quantity,
       CASE WHEN i.item_type = 'drug' AND d.high_value THEN 1.0 ELSE 0.0 END AS high_value,
       CASE WHEN i.item_type = 'drug' THEN coalesce(d.max_units_per_day::DOUBLE, 'NaN'::DOUBLE)
            ELSE 'NaN'::DOUBLE END AS max_units_per_day,
       CASE WHEN i.item_type = 'drug' THEN coalesce(d.pack_units::DOUBLE, 'NaN'::DOUBLE)
            ELSE 'NaN'::DOUBLE END AS pack_units,
       len(coalesce(i.trace_codes, []))::DOUBLE AS n_codes,
       CASE WHEN i.split_sale THEN 1.0 ELSE 0.0 END AS split_sale
FROM settlement_items i JOIN sf_settlements s USING (settlement_id)
LEFT JOIN sf_reference r ON r.item_type = i.item_type AND r.item_code = i.item_code
LEFT JOIN drugs d ON d.drug_code = i.item_code
"""

_VISITS_SQL: Final = """
WITH v AS (
    SELECT s.patient_id, s.institution_id, s.settled_at, s.total_amount AS amount,
           s.fund_paid, r.reversed_at
    FROM settlements s LEFT JOIN reversals r USING (settlement_id)
)
SELECT s.sidx,
       {windows},
       count(*) FILTER (WHERE v.institution_id = s.institution_id)::DOUBLE AS here,
       epoch(s.settled_at - max(v.settled_at)) / 86400.0 AS since_previous
FROM sf_settlements s JOIN v
  ON v.patient_id = s.patient_id AND v.settled_at < s.settled_at
 AND v.settled_at > s.settled_at - INTERVAL 365 DAY
 AND (v.reversed_at IS NULL OR v.reversed_at > s.settled_at)
GROUP BY s.sidx, s.settled_at
"""

_WINDOW_SQL: Final = """
count(*) FILTER (WHERE {inw})::DOUBLE AS visits_{w},
count(DISTINCT v.institution_id) FILTER (WHERE {inw})::DOUBLE AS institutions_{w},
coalesce(sum(v.amount) FILTER (WHERE {inw}), 0)::DOUBLE AS amount_{w},
coalesce(sum(v.fund_paid) FILTER (WHERE {inw}), 0)::DOUBLE AS fund_paid_{w}
"""

_SUPPLY_SQL: Final = """
WITH h AS (
    SELECT s.patient_id, s.settled_at, r.reversed_at, i.settlement_id, i.item_code,
           i.quantity::DOUBLE AS quantity, d.max_units_per_day::DOUBLE AS max_units_per_day
    FROM settlement_items i JOIN settlements s USING (settlement_id)
    JOIN drugs d ON d.drug_code = i.item_code
    LEFT JOIN reversals r USING (settlement_id)
    WHERE i.item_type = 'drug' AND d.high_value AND d.max_units_per_day > 0
),
prior AS (
    SELECT s.sidx, h.item_code, any_value(h.max_units_per_day) AS max_units_per_day,
           {prior_sums}
    FROM sf_settlements s JOIN h
      ON h.patient_id = s.patient_id AND h.settled_at < s.settled_at
     AND h.settled_at > s.settled_at - INTERVAL 365 DAY
     AND (h.reversed_at IS NULL OR h.reversed_at > s.settled_at)
    GROUP BY s.sidx, h.item_code
),
own AS (
    SELECT s.sidx, h.item_code, any_value(h.max_units_per_day) AS max_units_per_day,
           sum(h.quantity) AS units
    FROM sf_settlements s JOIN h USING (settlement_id)
    GROUP BY s.sidx, h.item_code
)
SELECT coalesce(p.sidx, o.sidx) AS sidx,
       {ratios}
FROM prior p FULL OUTER JOIN own o ON o.sidx = p.sidx AND o.item_code = p.item_code
GROUP BY ALL
"""


def _batch_windows(con: duckdb.DuckDBPyConnection, n: int) -> np.ndarray:
    """The window features (``_WINDOW_COLUMNS``) of every settlement, by ``sidx``."""
    out = np.zeros((n, len(_WINDOW_COLUMNS)))
    out[:, -1] = NO_PREVIOUS_DAYS
    cols = {c: i for i, c in enumerate(_WINDOW_COLUMNS)}
    windows = ",\n".join(
        _WINDOW_SQL.format(w=w, inw=f"v.settled_at > s.settled_at - INTERVAL {w} DAY")
        for w in WINDOWS
    )
    visits = con.execute(_VISITS_SQL.format(windows=windows)).fetchnumpy()
    sidx = np.asarray(visits["sidx"], dtype=np.int64)
    for w in WINDOWS:
        for what in ("visits", "institutions", "amount", "fund_paid"):
            out[sidx, cols[f"p_{what}_{w}d"]] = np.asarray(visits[f"{what}_{w}"], np.float64)
    out[sidx, cols["p_visits_here_365d"]] = np.asarray(visits["here"], np.float64)
    out[sidx, cols["p_days_since_previous"]] = np.minimum(
        np.asarray(visits["since_previous"], np.float64), NO_PREVIOUS_DAYS
    )
    prior_sums = ",\n".join(
        f"sum(h.quantity) FILTER (WHERE h.settled_at > s.settled_at - INTERVAL {w} DAY) "
        f"AS units_{w}"
        for w in WINDOWS
    )
    ratios = ",\n".join(
        f"max((coalesce(p.units_{w}, 0) + coalesce(o.units, 0)) / "
        f"(coalesce(p.max_units_per_day, o.max_units_per_day) * {w})) AS ratio_{w}"
        for w in WINDOWS
    )
    supply = con.execute(_SUPPLY_SQL.format(prior_sums=prior_sums, ratios=ratios)).fetchnumpy()
    sidx = np.asarray(supply["sidx"], dtype=np.int64)
    for w in WINDOWS:
        out[sidx, cols[f"p_high_value_supply_ratio_{w}d"]] = np.asarray(
            supply[f"ratio_{w}"], np.float64
        )
    return out


def settlement_features(
    con: duckdb.DuckDBPyConnection, *, reference: pa.Table | None = None
) -> pd.DataFrame:
    """The features of every settlement of the history behind ``con`` (``features.batch``
    views), in ``settled_at`` order (ties by id): ``settlement_id, institution_id,
    patient_id, settled_at`` then ``SETTLEMENT_FEATURES.columns`` (float64).

    ``reference``: the item reference table (``features.store.compute_item_reference``)
    the model is trained with; by default the one of the whole history behind ``con``.
    """
    if reference is None:
        reference = compute_item_reference(con)
    materialise(con, "sf_reference", reference)
    con.execute(_SETTLEMENTS_SQL)
    head = (
        con.sql(
            "SELECT settlement_id, institution_id, patient_id, settled_at, visit_type, total_amount,"
            " fund_paid, inpatient_days, patient_age, patient_female FROM sf_settlements"
            " ORDER BY sidx"
        )
        .to_arrow_table()
        .to_pandas()
    )
    n = len(head)
    features = np.zeros((n, len(SETTLEMENT_FEATURES.columns)))
    total = head["total_amount"].to_numpy(np.float64)
    features[:, _INDEX["total_amount"]] = total
    features[:, _INDEX["log_total_amount"]] = np.log1p(np.maximum(total, 0.0))
    features[:, _INDEX["fund_paid_share"]] = _ratio(
        np.nan_to_num(head["fund_paid"].to_numpy(np.float64)), total, 0.0
    )
    visit = head["visit_type"].to_numpy(dtype=object)
    for vt in _VISIT_TYPES:
        features[:, _INDEX[f"visit_{vt}"]] = (visit == vt).astype(np.float64)
    for c in ("inpatient_days", "patient_age", "patient_female"):
        features[:, _INDEX[c]] = np.nan_to_num(head[c].to_numpy(np.float64))

    lines = con.execute(_LINES_SQL).fetchnumpy()
    group = np.asarray(lines.pop("sidx"), dtype=np.int64)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in lines.items()}
    start = _INDEX[_LINE_COLUMNS[0]]
    features[:, start : start + len(_LINE_COLUMNS)] = _line_block(arrays, group, n)
    start = _INDEX[_WINDOW_COLUMNS[0]]
    features[:, start : start + len(_WINDOW_COLUMNS)] = _batch_windows(con, n)

    frame = head[["settlement_id", "institution_id", "patient_id", "settled_at"]].copy()
    values = pd.DataFrame(features, columns=list(SETTLEMENT_FEATURES.columns), index=frame.index)
    return pd.concat([frame, values], axis=1)


# ------------------------------------------------------------------------------ online


_pv = patient_visits.c


def _in_window(w: int) -> Any:
    return _pv.settled_at > bindparam(f"since_{w}", type_=_pv.settled_at.type)


_VISITS: Final = select(
    *(
        expr
        for w in WINDOWS
        for expr in (
            func.count(case((_in_window(w), 1))),
            func.count(distinct(case((_in_window(w), _pv.institution_id)))),
            func.sum(case((_in_window(w), _pv.total_amount))),
            func.sum(case((_in_window(w), _pv.fund_paid))),
        )
    ),
    func.count(case((_pv.institution_id == bindparam("institution"), 1))),
    func.max(_pv.settled_at),
).where(
    and_(
        _pv.patient_id == bindparam("patient"),
        _pv.settled_at > bindparam("since_365", type_=_pv.settled_at.type),
        _pv.settled_at < bindparam("at", type_=_pv.settled_at.type),
        or_(_pv.reversed_at.is_(None), _pv.reversed_at > bindparam("at")),
    )
)

_ph = patient_history.c

_SUPPLY: Final = (
    select(
        _ph.item_code,
        drugs.c.max_units_per_day,
        *(
            func.sum(
                case(
                    (
                        _ph.settled_at > bindparam(f"since_{w}", type_=_ph.settled_at.type),
                        _ph.quantity,
                    )
                )
            )
            for w in WINDOWS
        ),
    )
    .select_from(patient_history.join(drugs, drugs.c.drug_code == _ph.item_code))
    .where(
        and_(
            _ph.patient_id == bindparam("patient"),
            _ph.item_type == "drug",
            drugs.c.high_value.is_(True),
            drugs.c.max_units_per_day > 0,
            _ph.settled_at > bindparam("since_365", type_=_ph.settled_at.type),
            _ph.settled_at < bindparam("at", type_=_ph.settled_at.type),
            or_(_ph.reversed_at.is_(None), _ph.reversed_at > bindparam("at")),
        )
    )
    .group_by(_ph.item_code, drugs.c.max_units_per_day)
)


def _f(value: Any) -> float:
    return math.nan if value is None else float(value)


def vector_parts(dialect: str) -> dict[str, Select[Any]]:
    """What the online vector reads of the store besides the knowledge base, as parts of one
    ``MergedRead``: the patient's visits in the windows before the settlement (``visits``:
    one row of ``_VISITS``) and the patient's units of each high-value drug in them
    (``supply``). Parameters: :func:`vector_params`."""
    return {"visits": _VISITS, "supply": _SUPPLY}


def vector_params(view: SettlementView) -> dict[str, Any]:
    at = view.settled_at
    return {
        "patient": view.patient_id,
        "institution": view.institution_id,
        "at": at,
        **{f"since_{w}": at - timedelta(days=w) for w in WINDOWS},
    }


_ONLINE_READ: Final = MergedRead(vector_parts)


def online_settlement_vector(conn: Connection, view: SettlementView) -> np.ndarray:
    """The features of the one settlement being scored (``SETTLEMENT_FEATURES`` order),
    from the store's state before it (one statement and the knowledge base): the same
    values batch gives it. (The scorer reads the same parts within its first statement.)"""
    return settlement_vector(
        view, knowledge_base(conn), _ONLINE_READ.read(conn, vector_params(view))
    )


def settlement_vector(
    view: SettlementView, knowledge: KnowledgeBase, rows: Mapping[str, list[Any]]
) -> np.ndarray:
    """The online vector of ``view`` from the knowledge base and the rows of
    :func:`vector_parts`."""
    at = view.settled_at
    lines = view.lines
    (visits,) = rows["visits"]
    supply = rows["supply"]
    drugs_known = knowledge.drugs
    reference_known = knowledge.reference

    vector = np.zeros(len(SETTLEMENT_FEATURES.columns))
    line_total = sum((float(line.amount) for line in lines), 0.0)
    total = float(view.total_amount) if view.total_amount is not None else line_total
    vector[_INDEX["total_amount"]] = total
    vector[_INDEX["log_total_amount"]] = math.log1p(max(total, 0.0))
    fund = float(view.fund_paid) if view.fund_paid is not None else 0.0
    vector[_INDEX["fund_paid_share"]] = fund / total if total > 0 else 0.0
    for vt in _VISIT_TYPES:
        vector[_INDEX[f"visit_{vt}"]] = float(view.visit_type == vt)
    if view.admit_date is not None and view.discharge_date is not None:
        vector[_INDEX["inpatient_days"]] = float((view.discharge_date - view.admit_date).days)
    local_day = at.astimezone(_ZONE).date()
    vector[_INDEX["patient_age"]] = (local_day - view.birth_date).days / 365.25
    vector[_INDEX["patient_female"]] = float(view.patient_gender == "F")

    facts: list[LineFacts] = []
    own_units: dict[str, float] = {}
    own_max: dict[str, float] = {}
    nan = math.nan
    for line in lines:
        qty = float(line.quantity)
        amount = float(line.amount)
        ref = reference_known.get((line.item_type, line.item_code))
        drug = drugs_known.get(line.item_code) if line.item_type == "drug" else None
        high_value = drug is not None and bool(drug.high_value)
        max_upd = _f(drug.max_units_per_day) if drug is not None else nan
        facts.append(
            (
                _ITEM_TYPES.get(line.item_type, 3),
                qty,
                float(line.unit_price)
                if line.unit_price is not None
                else (amount / qty if qty else nan),
                amount,
                _f(ref.unit_price) if ref else nan,
                _f(ref.quantity) if ref else nan,
                high_value,
                max_upd,
                _f(drug.pack_units) if drug is not None else nan,
                len(line.trace_codes),
                line.split_sale,
            )
        )
        if high_value and max_upd > 0:
            own_units[line.item_code] = own_units.get(line.item_code, 0.0) + qty
            own_max[line.item_code] = max_upd
    start = _INDEX[_LINE_COLUMNS[0]]
    vector[start : start + len(_LINE_COLUMNS)] = _one_line_block(facts)

    for k, w in enumerate(WINDOWS):
        base = 4 * k
        vector[_INDEX[f"p_visits_{w}d"]] = float(visits[base])
        vector[_INDEX[f"p_institutions_{w}d"]] = float(visits[base + 1])
        vector[_INDEX[f"p_amount_{w}d"]] = _f(visits[base + 2]) if visits[base + 2] else 0.0
        vector[_INDEX[f"p_fund_paid_{w}d"]] = _f(visits[base + 3]) if visits[base + 3] else 0.0
    vector[_INDEX["p_visits_here_365d"]] = float(visits[4 * len(WINDOWS)])
    last = visits[4 * len(WINDOWS) + 1]
    vector[_INDEX["p_days_since_previous"]] = (
        min((at - last).total_seconds() / 86400.0, NO_PREVIOUS_DAYS)
        if last is not None
        else NO_PREVIOUS_DAYS
    )
    prior = {r[0]: r for r in supply}
    for k, w in enumerate(WINDOWS):
        ratios = [
            _supply_ratio(
                (_f(prior[c][2 + k]) if c in prior and prior[c][2 + k] is not None else 0.0)
                + own_units.get(c, 0.0),
                own_max[c] if c in own_max else float(prior[c][1]),
                w,
            )
            for c in prior.keys() | own_units.keys()
        ]
        vector[_INDEX[f"p_high_value_supply_ratio_{w}d"]] = max(ratios, default=0.0)
    return vector


def online_settlement_vectors(conn: Connection, views: Sequence[SettlementView]) -> np.ndarray:
    """:func:`online_settlement_vector` of several settlements, one row each."""
    return (
        np.vstack([online_settlement_vector(conn, v) for v in views])
        if views
        else np.zeros((0, len(SETTLEMENT_FEATURES.columns)))
    )
