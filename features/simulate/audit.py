"""The deterministic pattern definitions (semantics.md), evaluated on the internal tables.

The simulator uses this twice: to repair the background before anything is written
and, at the end, to prove that no background or benign settlement exhibits a
deterministic pattern while recording every pattern each planted settlement does
exhibit (its truth). Codes are compared by pack key, which is what canonical
equality means here (one key, one canonical string).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.simulate.catalog import INPATIENT_DX, Catalog
from features.simulate.claims import EV_RETURN, IT_DRUG, IT_SERVICE, VT_INP, Claims
from features.simulate.config import DAY, age_on
from features.simulate.spelling import KEY_SHIFT

_SHIFT = 27
_TOFF = 100 * DAY  # times may start a little before 2025 (purchases)

_MAX_INST = 1 << 16  # institutions per province (pack key x institution stays within int64)
OVER_QUANTITY_WINDOW_DAYS = 30
SPLIT_ADMISSION_DAYS = 15

DX_CODES: tuple[str, ...] = tuple(dict.fromkeys([d[0] for d in INPATIENT_DX]))
DX_CATEGORY = np.array([code[:3] for code in DX_CODES], dtype=object)


def window_sums(
    group: np.ndarray,
    t: np.ndarray,
    units: np.ndarray,
    window: np.ndarray | np.integer | int,
    rev_t: np.ndarray | None = None,
) -> np.ndarray:
    """Per row: units of the same group with time in (t - window, t], not reversed by t.

    Times must be unique within a group (the simulator makes every second unique).
    A row reversed at r <= t of the evaluated row does not count (semantics.md).
    """
    n = len(group)
    if n == 0:
        return np.zeros(0, np.int64)
    group = np.asarray(group, np.int64)
    t = np.asarray(t, np.int64)
    order = np.lexsort((t, group))
    g = group[order]
    tt = t[order] + _TOFF
    u = np.asarray(units, np.int64)[order]
    w = np.broadcast_to(np.asarray(window, np.int64), (n,))[order]
    comp = (g << _SHIFT) | tt
    g_start = np.searchsorted(comp, g << _SHIFT, side="left")
    g_end = np.searchsorted(comp, (g + 1) << _SHIFT, side="left")
    lo = np.maximum(np.searchsorted(comp, comp - w, side="right"), g_start)
    cum = np.concatenate([[0], np.cumsum(u)])
    sums = cum[np.arange(1, n + 1)] - cum[lo]
    if rev_t is not None:
        r = np.asarray(rev_t, np.int64)[order]
        j = np.flatnonzero(r >= 0)
        if j.size:
            a = np.searchsorted(comp, (g[j] << _SHIFT) | (r[j] + _TOFF), side="left")
            b = np.minimum(
                np.searchsorted(comp, (g[j] << _SHIFT) | (tt[j] + w[j]), side="left"), g_end[j]
            )
            keep = a < b
            diff = np.zeros(n + 1, np.int64)
            np.add.at(diff, a[keep], u[j][keep])
            np.add.at(diff, b[keep], -u[j][keep])
            sums = sums - np.cumsum(diff)[:n]
    out = np.empty(n, np.int64)
    out[order] = sums
    return out


@dataclass(frozen=True)
class PersonFacts:
    gender: np.ndarray
    birth_day: np.ndarray


def _flags(sids: np.ndarray, pattern: str) -> pd.DataFrame:
    return pd.DataFrame({"sid": np.asarray(sids, np.int64), "pattern": pattern, "detail": None})


def audit(
    claims: Claims,
    events: pd.DataFrame,
    catalog: Catalog,
    people: PersonFacts,
) -> pd.DataFrame:
    """Every (sid, pattern, detail) of semantics.md's deterministic patterns."""
    return pd.concat(
        list(_audit_parts(claims, events, catalog, people)), ignore_index=True
    ).drop_duplicates(["sid", "pattern"])


def _audit_parts(
    claims: Claims, events: pd.DataFrame, catalog: Catalog, people: PersonFacts
) -> Iterator[pd.DataFrame]:
    s = claims.s
    l = claims.l  # noqa: E741
    pos = pd.Series(np.arange(len(s)), index=s["sid"].to_numpy())
    srow = pos.reindex(l["sid"].to_numpy()).to_numpy()
    lt = s["t"].to_numpy()[srow]
    lpat = s["patient"].to_numpy()[srow]
    lrev = s["rev_t"].to_numpy()[srow]
    lsid = l["sid"].to_numpy()
    itype = l["itype"].to_numpy()
    item = l["item"].to_numpy()
    qty = l["qty"].to_numpy()

    yield from _ledger(claims, events, catalog, srow, lt, lrev)

    # ---------------- gender / age on drug and service lines
    drug = itype == IT_DRUG
    svc = itype == IT_SERVICE
    g_restr = np.zeros(len(l), np.int64)
    min_age = np.full(len(l), -1, np.int64)
    max_age = np.full(len(l), 999, np.int64)
    g_restr[drug] = catalog.drug_gender[item[drug]]
    g_restr[svc] = catalog.svc_gender[item[svc]]
    min_age[drug] = catalog.drug_min_age[item[drug]]
    min_age[svc] = catalog.svc_min_age[item[svc]]
    max_age[drug] = catalog.drug_max_age[item[drug]]
    max_age[svc] = catalog.svc_max_age[item[svc]]
    bad_g = (g_restr > 0) & (g_restr != people.gender[lpat])
    yield _flags(lsid[bad_g], "gender_restriction")
    restricted = (min_age >= 0) | (max_age < 999)
    age = np.zeros(len(l), np.int64)
    age[restricted] = age_on(people.birth_day[lpat[restricted]], lt[restricted] // DAY)
    bad_a = restricted & ((age < min_age) | (age > max_age))
    yield _flags(lsid[bad_a], "age_restriction")

    # ---------------- over_frequency (services with max_times / period_days)
    limited = svc & (catalog.svc_max_times[np.where(svc, item, 0)] > 0)
    if limited.any():
        it = item[limited]
        sums = window_sums(
            lpat[limited] * 64 + it,
            lt[limited],
            qty[limited],
            catalog.svc_period[it] * DAY,
            lrev[limited],
        )
        yield _flags(lsid[limited][sums > catalog.svc_max_times[it]], "over_frequency")

    # ---------------- over_quantity (drugs with max_units_per_day, 30-day window)
    capped = drug & (catalog.drug_max[np.where(drug, item, 0)] > 0)
    if capped.any():
        it = item[capped]
        sums = window_sums(
            lpat[capped] * 64 + it,
            lt[capped],
            qty[capped],
            np.int64(OVER_QUANTITY_WINDOW_DAYS * DAY),
            lrev[capped],
        )
        yield _flags(
            lsid[capped][sums > catalog.drug_max[it] * OVER_QUANTITY_WINDOW_DAYS], "over_quantity"
        )

    yield _split_admissions(s)


def _duplicated(*columns: np.ndarray) -> np.ndarray:
    """Rows whose combination of values occurs more than once (all of them)."""
    order = np.lexsort(columns[::-1])
    same = np.ones(max(len(order) - 1, 0), bool)
    for col in columns:
        same &= col[order][1:] == col[order][:-1]
    out = np.zeros(len(order), bool)
    out[order[1:][same]] = True
    out[order[:-1][same]] = True
    return out


def _split_admissions(s: pd.DataFrame) -> pd.DataFrame:
    inp = s[s["vtype"].to_numpy() == VT_INP]
    if inp.empty:
        return _flags(np.zeros(0, np.int64), "split_admission")
    cat = DX_CATEGORY[inp["diag"].to_numpy()]
    frame = pd.DataFrame(
        {
            "sid": inp["sid"].to_numpy(),
            "patient": inp["patient"].to_numpy(),
            "inst": inp["inst"].to_numpy(),
            "cat": cat,
            "admit": inp["admit"].to_numpy(),
            "discharge": inp["discharge"].to_numpy(),
            "t": inp["t"].to_numpy(),
        }
    )
    multi = frame[frame.duplicated(["patient", "inst", "cat"], keep=False)].sort_values("t")
    flagged: list[int] = []
    for _, grp in multi.groupby(["patient", "inst", "cat"], sort=False):
        admits = grp["admit"].to_numpy()
        discharges = grp["discharge"].to_numpy()
        sids = grp["sid"].to_numpy()
        for i in range(1, len(grp)):
            gap = admits[i] - discharges[:i]
            if ((gap >= 0) & (gap <= SPLIT_ADMISSION_DAYS)).any():
                flagged.append(int(sids[i]))
    return _flags(np.array(flagged, np.int64), "split_admission")


def _ledger(
    claims: Claims,
    events: pd.DataFrame,
    catalog: Catalog,
    srow: np.ndarray,
    lt: np.ndarray,
    lrev: np.ndarray,
) -> Iterator[pd.DataFrame]:
    s = claims.s
    l = claims.l  # noqa: E741
    drug = l["itype"].to_numpy() == IT_DRUG
    lsid = l["sid"].to_numpy()
    yield _flags(lsid[drug & (l["ncodes"].to_numpy() == 0)], "missing_trace_code")

    cr = claims.code_rows()
    line = cr["line"].to_numpy()
    key = cr["key"].to_numpy()
    invalid = key < 0
    yield _flags(lsid[line[invalid]], "missing_trace_code")
    # a line with an invalid code takes part in no other ledger pattern
    bad_lines = np.zeros(len(l), bool)
    bad_lines[line[invalid]] = True
    ok = ~bad_lines[line]
    line, key = line[ok], key[ok]
    item = l["item"].to_numpy()[line]
    split = l["split"].to_numpy()[line]
    qty = l["qty"].to_numpy()[line]
    sid = lsid[line]
    t = lt[line]
    rev = lrev[line]
    inst = s["inst"].to_numpy()[srow[line]]
    pack = catalog.drug_pack[item]
    units = np.where(split, qty, pack)

    # mismatch: the code's product maps to another drug
    prod = key >> KEY_SHIFT
    yield _flags(sid[catalog.prod_drug[prod] != item], "trace_code_mismatch")

    # unpurchased: no event of this institution at or before t, or the latest is a return
    ev_comp = events["key"].to_numpy() * _MAX_INST + events["inst"].to_numpy()
    ev_t = events["t"].to_numpy()
    ev_order = np.lexsort((ev_t, ev_comp))
    ev_comp, ev_t = ev_comp[ev_order], ev_t[ev_order]
    ev_kind = events["kind"].to_numpy()[ev_order]
    comp = key * _MAX_INST + inst
    lo = np.searchsorted(ev_comp, comp, side="left")
    j = np.searchsorted(ev_comp, comp, side="right") - 1
    later = (j >= lo) & (ev_t[np.maximum(j, 0)] > t)
    while later.any():  # step back over events after the sale (a pack has very few events)
        j = np.where(later, j - 1, j)
        later = (j >= lo) & (ev_t[np.maximum(j, 0)] > t)
    unpurchased = (j < lo) | (ev_kind[np.maximum(j, 0)] == EV_RETURN)
    yield _flags(sid[unpurchased], "unpurchased_trace_code")

    # duplicates within one settlement
    yield _flags(sid[_duplicated(sid, key)], "duplicate_trace_code")

    # ledger over time for codes sold more than once
    multi = np.flatnonzero(_duplicated(key))
    dup: list[int] = []
    overrun: list[int] = []
    if multi.size:
        order = multi[np.lexsort((sid[multi], t[multi], key[multi]))]
        k = key[order]
        bounds = np.flatnonzero(np.r_[True, k[1:] != k[:-1], True])
        for a, b in itertools.pairwise(bounds):
            rows = order[a:b]
            for i_pos, i in enumerate(rows):
                earlier = rows[:i_pos]
                earlier = earlier[
                    (t[earlier] < t[i]) & ~((rev[earlier] >= 0) & (rev[earlier] <= t[i]))
                ]
                if earlier.size == 0:
                    continue
                if not split[i]:
                    dup.append(int(sid[i]))
                    continue
                if (~split[earlier]).any():
                    dup.append(int(sid[i]))
                if units[earlier][split[earlier]].sum() + units[i] > pack[i]:
                    overrun.append(int(sid[i]))
    yield _flags(np.array(dup, np.int64), "duplicate_trace_code")
    yield _flags(np.array(overrun, np.int64), "split_sale_overrun")
