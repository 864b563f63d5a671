"""Background care: outpatient visits, inpatient stays and pharmacy sales, vectorised.

The background is clean under semantics.md by construction where possible
(restricted items are only drawn for eligible patients, codes are fresh packs,
quantities are whole packs or a split within one pack) and by repair where
random draws can collide (frequency and 30-day quantity windows, overlapping
stays and readmissions): offending rows are dropped before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.simulate.audit import DX_CATEGORY, DX_CODES, OVER_QUANTITY_WINDOW_DAYS, window_sums
from features.simulate.catalog import (
    INPATIENT_DX,
    KIND_CLINIC,
    KIND_HOSPITAL,
    KIND_PHARMACY,
    KIND_PRIMARY,
    OUTPATIENT_DX,
    SVC_BED,
    SVC_BLOOD,
    SVC_CONSULT,
    SVC_HBA1C,
    SVC_NURSING,
    Catalog,
    Institutions,
    price_factor_permille,
)
from features.simulate.claims import (
    IT_DRUG,
    IT_MATERIAL,
    IT_SERVICE,
    ORIGIN_BACKGROUND,
    VT_INP,
    VT_OUT,
    VT_PHARM,
    Claims,
)
from features.simulate.config import (
    DAY,
    HOUR,
    YEAR_DAYS,
    YEAR_END,
    ScaleConfig,
    age_on,
    unique_times,
)
from features.simulate.population import Population
from features.simulate.spelling import CodeBook

ALL_DX: tuple[str, ...] = DX_CODES + tuple(c for c in OUTPATIENT_DX if c not in DX_CODES)
"""Diagnosis list: inpatient codes first (audit's DX_CATEGORY indexes them), then outpatient-only."""
_ALL_DX_CATEGORY = np.array([c[:3] for c in ALL_DX], dtype=object)
assert list(_ALL_DX_CATEGORY[: len(DX_CATEGORY)]) == list(DX_CATEGORY)  # noqa: S101

MAX_PACKS_PER_LINE = 3
REVERSAL_RATE = 0.01
SPLIT_RATE = 0.05
FAR_PATIENT_SHARE = 0.6
NIGHT_SHARE = 0.4
HIGH_VALUE_SHARE = 0.4

Progress = Callable[[str], None]


def item_key(itype: np.ndarray, item: np.ndarray) -> np.ndarray:
    """One integer space for drugs, services and materials (price hashing)."""
    return np.asarray(itype, np.int64) * 1000 + np.asarray(item, np.int64)


def unit_prices(
    cat: Catalog, inst: Institutions, inst_idx: np.ndarray, itype: np.ndarray, item: np.ndarray
) -> np.ndarray:
    """Price in cents per unit at an institution: the reference price +-8% (anomalous: top)."""
    ref = np.zeros(len(item), np.int64)
    for code, prices in (
        (IT_DRUG, cat.drug_price),
        (IT_SERVICE, cat.svc_price),
        (IT_MATERIAL, cat.mat_price),
    ):
        m = itype == code
        ref[m] = prices[item[m]]
    factor = price_factor_permille(
        inst_idx, item_key(itype, item), inst.price_factor_salt, inst.anomalous
    )
    return np.maximum(1, (ref * factor + 500) // 1000)


def eligible(
    gender: np.ndarray,
    age: np.ndarray,
    restr_gender: np.ndarray,
    min_age: np.ndarray,
    max_age: np.ndarray,
) -> np.ndarray:
    return ((restr_gender == 0) | (restr_gender == gender)) & (age >= min_age) & (age <= max_age)


@dataclass
class Background:
    claims: Claims
    n_dropped: dict[str, int]


def _sample_institutions(
    rng: np.random.Generator, inst: Institutions, pool: np.ndarray, region: np.ndarray
) -> np.ndarray:
    """Weighted draw of an institution of `pool` in each row's region."""
    idx_all = []
    cum_all = []
    for r in range(int(inst.region.max()) + 1):
        members = np.flatnonzero(pool & (inst.region == r))
        w = inst.weight[members]
        idx_all.append(members)
        cum_all.append(r + np.cumsum(w) / w.sum())
    idx = np.concatenate(idx_all)
    cum = np.concatenate(cum_all)
    u = region + rng.random(len(region)) * (1 - 1e-12)
    pos = np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)
    return idx[pos]


def _draw(
    rng: np.random.Generator,
    weights: np.ndarray,
    n: int,
    ok: Callable[[np.ndarray, np.ndarray], np.ndarray],
    fallback: int,
) -> np.ndarray:
    """Draw items by weight; redraw ineligible ones a few times, then use `fallback`."""
    items = rng.choice(len(weights), size=n, p=weights)
    rows = np.arange(n)
    for _ in range(4):
        bad = ~ok(items, rows)
        if not bad.any():
            return items
        items[bad] = rng.choice(len(weights), size=int(bad.sum()), p=weights)
    items[~ok(items, rows)] = fallback
    return items


def generate_background(
    cfg: ScaleConfig,
    cat: Catalog,
    inst: Institutions,
    pop: Population,
    book: CodeBook,
    rng: np.random.Generator,
    progress: Progress,
) -> Background:
    n_pat = len(pop)
    far_patients = _far_patient_pools(inst, pop)

    # ---------------------------------------------------------- HbA1c schedule
    diabetics = np.flatnonzero(pop.diabetic)
    first = rng.integers(0, 120, len(diabetics))
    gaps = rng.integers(100, 201, (len(diabetics), 3))
    days = np.column_stack([first, first[:, None] + np.cumsum(gaps, axis=1)])
    pat_h = np.repeat(diabetics, days.shape[1])
    day_h = days.ravel()
    keep = day_h < YEAR_DAYS
    pat_h, day_h = pat_h[keep], day_h[keep]

    budget = int(cfg.n_settlements * 0.97) - len(pat_h)
    n_inp = int(budget * 0.05)
    n_out = int(budget * 0.50)
    n_ph = budget - n_inp - n_out
    progress(f"background: {budget + len(pat_h):,} settlements to draw")

    act = pop.activity / pop.activity.sum()
    age_mid = age_on(pop.birth_day, np.full(n_pat, YEAR_DAYS // 2))
    inp_w = pop.activity * np.where(age_mid >= 60, 2.0, 1.0)
    inp_w = inp_w / inp_w.sum()

    patient = np.concatenate(
        [
            rng.choice(n_pat, n_out, p=act),
            rng.choice(n_pat, n_inp, p=inp_w),
            rng.choice(n_pat, n_ph, p=act),
            pat_h,
        ]
    )
    vtype = np.concatenate(
        [
            np.full(n_out, VT_OUT, np.int8),
            np.full(n_inp, VT_INP, np.int8),
            np.full(n_ph, VT_PHARM, np.int8),
            np.full(len(pat_h), VT_OUT, np.int8),
        ]
    )
    hba1c_visit = np.zeros(len(patient), bool)
    hba1c_visit[len(patient) - len(pat_h) :] = True
    n = len(patient)

    # institution: home region mostly
    region = np.where(rng.random(n) < 0.95, pop.region[patient], rng.integers(0, cfg.n_regions, n))
    out_pool = (
        (inst.kind == KIND_HOSPITAL) | (inst.kind == KIND_PRIMARY) | (inst.kind == KIND_CLINIC)
    )
    inp_pool = ((inst.kind == KIND_HOSPITAL) | (inst.kind == KIND_PRIMARY)) & (inst.level >= 1)
    ph_pool = inst.kind == KIND_PHARMACY
    hba_pool = ((inst.kind == KIND_HOSPITAL) | (inst.kind == KIND_PRIMARY)) & ~inst.anomalous
    inst_idx = np.empty(n, np.int64)
    for pool, mask in (
        (out_pool, (vtype == VT_OUT) & ~hba1c_visit),
        (inp_pool, vtype == VT_INP),
        (ph_pool, vtype == VT_PHARM),
        (hba_pool, hba1c_visit),
    ):
        inst_idx[mask] = _sample_institutions(rng, inst, pool, region[mask])

    # anomalous institutions draw patients from far away
    anom = inst.anomalous[inst_idx]
    swap = anom & (rng.random(n) < FAR_PATIENT_SHARE)
    for i in np.flatnonzero(inst.anomalous):
        rows = np.flatnonzero(swap & (inst_idx == i))
        patient[rows] = rng.choice(far_patients[i], len(rows))

    # ---------------------------------------------------------- times
    weekday = (np.arange(YEAR_DAYS) + 2) % 7  # 2025-01-01 is a Wednesday (0 = Monday)
    season = 1.0 + 0.25 * np.cos(2 * np.pi * np.arange(YEAR_DAYS) / YEAR_DAYS)
    w_out = season * np.where(weekday >= 5, 0.7, 1.0)
    day = np.where(
        vtype == VT_PHARM,
        rng.choice(YEAR_DAYS, n, p=season / season.sum()),
        rng.choice(YEAR_DAYS, n, p=w_out / w_out.sum()),
    )
    day[hba1c_visit] = day_h
    morning = rng.random(n) < 0.6
    tod_out = np.where(
        morning,
        8 * HOUR + rng.integers(0, int(3.5 * HOUR), n),
        13 * HOUR + rng.integers(HOUR // 2, 4 * HOUR, n),
    )
    tod_ph = np.where(
        rng.random(n) < 0.98,
        8 * HOUR + rng.integers(0, 14 * HOUR, n),
        22 * HOUR + rng.integers(0, 2 * HOUR - 60, n),
    )
    night = anom & (rng.random(n) < NIGHT_SHARE)
    tod_night = (22 * HOUR + rng.integers(0, 8 * HOUR, n)) % DAY
    tod = np.where(vtype == VT_PHARM, tod_ph, tod_out)
    tod = np.where(night & (vtype != VT_INP), tod_night, tod)

    # inpatient stays: diagnosis by age/gender, length of stay, settled at discharge
    ages_s = age_on(pop.birth_day[patient], day)
    admit = np.full(n, -1, np.int64)
    discharge = np.full(n, -1, np.int64)
    diag = np.full(n, -1, np.int64)
    inp = np.flatnonzero(vtype == VT_INP)
    dx_w = np.array([d[1] for d in INPATIENT_DX], np.float64)
    dx_w = dx_w / dx_w.sum()
    dx_gender = np.array([{None: 0, "M": 1, "F": 2}[d[4]] for d in INPATIENT_DX])
    dx_min = np.array([d[5] for d in INPATIENT_DX])
    dx_max = np.array([d[6] for d in INPATIENT_DX])
    g_inp = pop.gender[patient[inp]]
    a_inp = ages_s[inp]
    dx = _draw(
        rng,
        dx_w,
        len(inp),
        lambda it, rows: eligible(g_inp[rows], a_inp[rows], dx_gender[it], dx_min[it], dx_max[it]),
        fallback=DX_CODES.index("J18.9"),
    )
    los_lo = np.array([d[2] for d in INPATIENT_DX])[dx]
    los_hi = np.array([d[3] for d in INPATIENT_DX])[dx]
    los = los_lo + (rng.random(len(inp)) * (los_hi - los_lo + 1)).astype(np.int64)
    los = los + np.where(inst.level[inst_idx[inp]] == 3, 2, 0)
    adm = np.minimum(day[inp], YEAR_DAYS - 1 - los)
    admit[inp] = adm
    discharge[inp] = adm + los
    diag[inp] = dx
    day[inp] = adm + los
    tod[inp] = 9 * HOUR + rng.integers(0, 7 * HOUR, len(inp))
    out_rows = np.flatnonzero(vtype == VT_OUT)
    out_dx = np.array([ALL_DX.index(c) for c in OUTPATIENT_DX])
    diag[out_rows] = out_dx[rng.integers(0, len(out_dx), len(out_rows))]
    t = unique_times(day.astype(np.int64) * DAY + tod)

    docs = inst.doc_count[inst_idx]
    doctor = np.where(
        docs > 0,
        inst.doc_start[inst_idx] + (rng.random(n) * np.maximum(docs, 1)).astype(np.int64),
        -1,
    )

    s = pd.DataFrame(
        {
            "sid": np.arange(n, dtype=np.int64),
            "patient": patient.astype(np.int64),
            "inst": inst_idx,
            "doctor": doctor.astype(np.int64),
            "t": t,
            "vtype": vtype,
            "admit": admit,
            "discharge": discharge,
            "diag": diag,
            "origin": np.full(n, ORIGIN_BACKGROUND, np.int8),
            "rev_t": np.full(n, -1, np.int64),
        }
    )
    dropped: dict[str, int] = {}
    keep_s = _inpatient_keep(s)
    dropped["inpatient_overlap_or_readmission"] = int((~keep_s).sum())
    s = s[keep_s].reset_index(drop=True)
    hba1c_visit = hba1c_visit[keep_s]

    lines = _lines(cfg, cat, inst, pop, s, hba1c_visit, rng)
    lines, n_freq, n_qty = _repair_windows(cat, s, lines)
    dropped["over_frequency_lines"] = n_freq
    dropped["over_quantity_lines"] = n_qty
    has_lines = np.isin(s["sid"].to_numpy(), lines["sid"].to_numpy())
    dropped["empty_settlements"] = int((~has_lines).sum())
    s = s[has_lines].reset_index(drop=True)

    # reversals (退费): ~1% of outpatient/pharmacy settlements, hours to days later
    cand = np.flatnonzero(s["vtype"].to_numpy() != VT_INP)
    pick = cand[rng.random(len(cand)) < REVERSAL_RATE]
    rev_at = s["t"].to_numpy()[pick] + rng.integers(2 * HOUR, 72 * HOUR, len(pick))
    ok = rev_at < YEAR_END
    rev = s["rev_t"].to_numpy().copy()
    rev[pick[ok]] = rev_at[ok]
    s["rev_t"] = rev

    claims = _assign_codes(cat, s, lines, book, rng)
    srow = (
        pd.Series(np.arange(len(s)), index=s["sid"].to_numpy())
        .reindex(claims.l["sid"].to_numpy())
        .to_numpy()
    )
    claims.l["price"] = unit_prices(
        cat,
        inst,
        s["inst"].to_numpy()[srow],
        claims.l["itype"].to_numpy(),
        claims.l["item"].to_numpy(),
    )
    progress(
        f"background: {len(s):,} settlements, {len(claims.l):,} lines, {len(claims.code_key):,} codes"
    )
    return Background(claims=claims, n_dropped=dropped)


def _far_patient_pools(inst: Institutions, pop: Population) -> dict[int, np.ndarray]:
    from features.simulate.catalog import REGIONS

    pools = {}
    for i in np.flatnonzero(inst.anomalous):
        prefecture = int(REGIONS[int(inst.region[i])][0][:4])
        pools[int(i)] = np.flatnonzero(pop.prefecture != prefecture)
    return pools


def _inpatient_keep(s: pd.DataFrame) -> np.ndarray:
    """Drop stays that overlap an earlier stay of the patient, then readmissions within 15 days
    to the same institution with the same ICD-10 category (never written in the background)."""
    keep = np.ones(len(s), bool)
    inp = np.flatnonzero(s["vtype"].to_numpy() == VT_INP)
    patient = s["patient"].to_numpy()
    inst_idx = s["inst"].to_numpy()
    admit = s["admit"].to_numpy()
    discharge = s["discharge"].to_numpy()
    cat = np.zeros(len(s), np.int64)
    cat_codes = {c: i for i, c in enumerate(dict.fromkeys(_ALL_DX_CATEGORY))}
    cat[inp] = [cat_codes[_ALL_DX_CATEGORY[d]] for d in s["diag"].to_numpy()[inp]]
    for key_cols in ((patient,), (patient, inst_idx, cat)):
        while True:
            rows = inp[keep[inp]]
            sort_keys = (discharge[rows], admit[rows], *(c[rows] for c in reversed(key_cols)))
            order = rows[np.lexsort(sort_keys)]
            same = np.ones(max(len(order) - 1, 0), bool)
            for c in key_cols:
                same &= c[order][1:] == c[order][:-1]
            gap = admit[order][1:] - discharge[order][:-1]
            # first pass: no overlapping stays; second: no readmission within 15 days
            bad = same & (gap <= 0) if len(key_cols) == 1 else same & (gap >= 0) & (gap <= 15)
            if not bad.any():
                break
            keep[order[1:][bad]] = False
    return keep


def _lines(
    cfg: ScaleConfig,
    cat: Catalog,
    inst: Institutions,
    pop: Population,
    s: pd.DataFrame,
    hba1c_visit: np.ndarray,
    rng: np.random.Generator,
) -> pd.DataFrame:
    del cfg
    n = len(s)
    vtype = s["vtype"].to_numpy()
    sid = s["sid"].to_numpy()
    patient = s["patient"].to_numpy()
    inst_idx = s["inst"].to_numpy()
    day = s["t"].to_numpy() // DAY
    gender = pop.gender[patient]
    age = age_on(pop.birth_day[patient], day)
    los = np.where(vtype == VT_INP, s["discharge"].to_numpy() - s["admit"].to_numpy(), 0)
    is_out = vtype == VT_OUT
    is_inp = vtype == VT_INP
    is_ph = vtype == VT_PHARM
    svc = {
        code: cat.service(code)
        for code in (SVC_CONSULT, SVC_BED, SVC_NURSING, SVC_HBA1C, SVC_BLOOD)
    }

    parts: list[pd.DataFrame] = []

    def add(rows: np.ndarray, itype: int, item: np.ndarray, qty: np.ndarray) -> None:
        parts.append(
            pd.DataFrame(
                {
                    "sid": sid[rows],
                    "itype": np.full(len(rows), itype, np.int8),
                    "item": np.asarray(item, np.int64),
                    "qty": np.asarray(qty, np.int64),
                    "split": np.zeros(len(rows), bool),
                }
            )
        )

    out_rows = np.flatnonzero(is_out)
    add(out_rows, IT_SERVICE, np.full(len(out_rows), svc[SVC_CONSULT]), np.ones(len(out_rows)))
    h_rows = np.flatnonzero(hba1c_visit)
    add(h_rows, IT_SERVICE, np.full(len(h_rows), svc[SVC_HBA1C]), np.ones(len(h_rows)))
    inp_rows = np.flatnonzero(is_inp)
    add(inp_rows, IT_SERVICE, np.full(len(inp_rows), svc[SVC_BED]), los[inp_rows])
    add(inp_rows, IT_SERVICE, np.full(len(inp_rows), svc[SVC_NURSING]), los[inp_rows])

    # extra services (tests, exams)
    n_svc = np.zeros(n, np.int64)
    n_svc[is_out & ~hba1c_visit] = rng.choice(
        4, int((is_out & ~hba1c_visit).sum()), p=[0.35, 0.35, 0.2, 0.1]
    )
    n_svc[is_inp] = rng.integers(2, 6, int(is_inp.sum()))
    rows = np.repeat(np.arange(n), n_svc)
    wsel = np.where(is_inp[rows], 1, 0)
    items = np.empty(len(rows), np.int64)
    for k in (0, 1):
        m = wsel == k
        r = rows[m]
        items[m] = _draw(
            rng,
            cat.svc_weights[k],
            int(m.sum()),
            lambda it, rr, r=r: eligible(
                gender[r[rr]],
                age[r[rr]],
                cat.svc_gender[it],
                cat.svc_min_age[it],
                cat.svc_max_age[it],
            ),
            fallback=svc[SVC_BLOOD],
        )
    add(rows, IT_SERVICE, items, np.ones(len(rows)))

    # materials on inpatient stays
    n_mat = np.zeros(n, np.int64)
    n_mat[is_inp] = rng.integers(0, 3, int(is_inp.sum()))
    rows = np.repeat(np.arange(n), n_mat)
    add(
        rows,
        IT_MATERIAL,
        rng.integers(0, len(cat.materials), len(rows)),
        rng.integers(1, 6, len(rows)),
    )

    # drugs
    n_drug = np.zeros(n, np.int64)
    n_drug[is_out & ~hba1c_visit] = rng.choice(
        4, int((is_out & ~hba1c_visit).sum()), p=[0.3, 0.35, 0.25, 0.1]
    )
    n_drug[hba1c_visit] = rng.integers(0, 2, int(hba1c_visit.sum()))
    n_drug[is_ph] = rng.choice([1, 2, 3, 4], int(is_ph.sum()), p=[0.5, 0.3, 0.15, 0.05])
    n_drug[is_inp] = rng.integers(2, 7, int(is_inp.sum()))
    rows = np.repeat(np.arange(n), n_drug)
    vt_rows = vtype[rows]
    hv_mix = inst.anomalous[inst_idx[rows]] & (rng.random(len(rows)) < HIGH_VALUE_SHARE)
    items = np.empty(len(rows), np.int64)
    hv_w = cat.drug_high_value.astype(np.float64)
    hv_w /= hv_w.sum()
    metformin = cat.drug("XA10BAE001")
    fallback = {
        VT_OUT: cat.drug("XN02BEA011"),
        VT_INP: cat.drug("XB05BBA037"),
        VT_PHARM: cat.drug("XN02BEA011"),
    }
    for vt, weights in (
        (VT_OUT, cat.drug_weights[0]),
        (VT_INP, cat.drug_weights[1]),
        (VT_PHARM, cat.drug_weights[2]),
    ):
        for hv in (False, True):
            m = (vt_rows == vt) & (hv_mix == hv)
            r = rows[m]
            items[m] = _draw(
                rng,
                hv_w if hv else weights,
                int(m.sum()),
                lambda it, rr, r=r: eligible(
                    gender[r[rr]],
                    age[r[rr]],
                    cat.drug_gender[it],
                    cat.drug_min_age[it],
                    cat.drug_max_age[it],
                ),
                fallback=fallback[vt],
            )
    items[hba1c_visit[rows]] = metformin
    pack = cat.drug_pack[items]
    mx = cat.drug_max[items]
    packs_max = np.where(mx > 0, np.maximum(1, (mx * 15) // pack), 2)
    packs = np.minimum(packs_max, rng.choice([1, 2, 3], len(rows), p=[0.6, 0.3, 0.1]))
    inp_line = vt_rows == VT_INP
    daily = inp_line & (pack == 1) & (mx >= 2)
    packs = np.where(daily, los[rows] * rng.integers(1, 3, len(rows)), packs)
    packs = np.where(daily, np.minimum(packs, mx * np.maximum(los[rows], 1)), packs)
    qty = packs * pack
    split = (vt_rows == VT_PHARM) & cat.drug_split_ok[items] & (rng.random(len(rows)) < SPLIT_RATE)
    split_qty = np.maximum(1, pack // 4) + (
        rng.random(len(rows)) * (pack - np.maximum(1, pack // 4))
    ).astype(np.int64)
    qty = np.where(split, np.minimum(split_qty, pack - 1), qty)
    add(rows, IT_DRUG, items, qty)
    parts[-1]["split"] = split

    lines = pd.concat(parts, ignore_index=True)
    key = (lines["sid"].to_numpy() * 4 + lines["itype"].to_numpy()) * 1024 + lines[
        "item"
    ].to_numpy()
    _, first = np.unique(key, return_index=True)
    return lines.iloc[np.sort(first)].reset_index(drop=True)


def _repair_windows(
    cat: Catalog, s: pd.DataFrame, lines: pd.DataFrame
) -> tuple[pd.DataFrame, int, int]:
    """Drop every service line beyond its frequency limit and every drug line that pushes
    a patient's 30-day units beyond max_units_per_day x 30. Dropping all offenders at once
    is enough: sums only fall when rows leave, so the survivors stay within the limits."""
    pos = pd.Series(np.arange(len(s)), index=s["sid"].to_numpy())
    srow = pos.reindex(lines["sid"].to_numpy()).to_numpy()
    patient = s["patient"].to_numpy()[srow]
    t = s["t"].to_numpy()[srow]
    itype = lines["itype"].to_numpy()
    item = lines["item"].to_numpy()
    qty = lines["qty"].to_numpy()
    drop = np.zeros(len(lines), bool)

    svc = (itype == IT_SERVICE) & (cat.svc_max_times[np.where(itype == IT_SERVICE, item, 0)] > 0)
    it = item[svc]
    sums = window_sums(patient[svc] * 64 + it, t[svc], qty[svc], cat.svc_period[it] * DAY)
    bad = sums > cat.svc_max_times[it]
    drop[np.flatnonzero(svc)[bad]] = True
    n_freq = int(bad.sum())

    drug = (itype == IT_DRUG) & (cat.drug_max[np.where(itype == IT_DRUG, item, 0)] > 0)
    it = item[drug]
    sums = window_sums(
        patient[drug] * 64 + it, t[drug], qty[drug], np.int64(OVER_QUANTITY_WINDOW_DAYS * DAY)
    )
    bad = sums > cat.drug_max[it] * OVER_QUANTITY_WINDOW_DAYS
    drop[np.flatnonzero(drug)[bad]] = True
    n_qty = int(bad.sum())
    return lines[~drop].reset_index(drop=True), n_freq, n_qty


def product_for(cat: Catalog, inst_idx: np.ndarray, drug: np.ndarray, salt: int) -> np.ndarray:
    """The product (maker) an institution stocks for a drug."""
    from features.simulate.config import mix64

    h = mix64(np.asarray(inst_idx, np.int64) * 1009 + np.asarray(drug, np.int64), salt)
    return cat.drug_prod_start[drug] + (h % cat.drug_prod_count[drug].astype(np.uint64)).astype(
        np.int64
    )


def _assign_codes(
    cat: Catalog, s: pd.DataFrame, lines: pd.DataFrame, book: CodeBook, rng: np.random.Generator
) -> Claims:
    """Fresh packs for every drug line; split lines share packs within the pack's units."""
    pos = pd.Series(np.arange(len(s)), index=s["sid"].to_numpy())
    srow = pos.reindex(lines["sid"].to_numpy()).to_numpy()
    t = s["t"].to_numpy()[srow]
    inst_idx = s["inst"].to_numpy()[srow]
    # order lines by time so that serials grow with time
    order = np.lexsort((lines["itype"].to_numpy(), lines["item"].to_numpy(), t))
    lines = lines.iloc[order].reset_index(drop=True)
    t, inst_idx = t[order], inst_idx[order]
    itype = lines["itype"].to_numpy()
    item = lines["item"].to_numpy()
    qty = lines["qty"].to_numpy()
    split = lines["split"].to_numpy()
    drug = itype == IT_DRUG

    prod = np.full(len(lines), -1, np.int64)
    prod[drug] = product_for(cat, inst_idx[drug], item[drug], book.salt)
    ncodes = np.zeros(len(lines), np.int64)
    ncodes[drug] = np.where(split[drug], 1, qty[drug] // cat.drug_pack[item[drug]])
    cstart = np.cumsum(ncodes) - ncodes
    keys = np.full(int(ncodes.sum()), -1, np.int64)

    whole = drug & ~split
    code_line = np.repeat(np.flatnonzero(whole), ncodes[whole])
    code_pos = cstart[code_line] + (
        np.arange(len(code_line))
        - np.repeat(np.cumsum(ncodes[whole]) - ncodes[whole], ncodes[whole])
    )
    keys[code_pos] = book.allocate(prod[code_line])

    # split sales: fill one pack at a time per (institution, product), in time order
    sl = np.flatnonzero(drug & split)
    if sl.size:
        order = sl[np.lexsort((t[sl], prod[sl], inst_idx[sl]))]
        packs = cat.drug_pack[item[order]].tolist()
        groups = (inst_idx[order] * (1 << 20) + prod[order]).tolist()
        quantities = qty[order].tolist()
        pack_ids: list[int] = []
        current, remaining, prev = -1, 0, -1
        for grp, q, size in zip(groups, quantities, packs, strict=True):
            if grp != prev or q > remaining:
                current += 1
                remaining = size
                prev = grp
            remaining -= q
            pack_ids.append(current)
        pack_id = np.array(pack_ids, np.int64)
        first = np.flatnonzero(np.r_[True, pack_id[1:] != pack_id[:-1]])
        pack_keys = book.allocate(prod[order[first]])
        keys[cstart[order]] = pack_keys[pack_id]

    lines["price"] = 0
    lines["cstart"] = cstart
    lines["ncodes"] = ncodes
    lines["nocode"] = np.int8(0)
    return Claims(s=s, l=lines, code_key=keys, code_var=rng.integers(0, 1 << 16, len(keys)))
