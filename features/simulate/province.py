"""Orchestration: build the province, plant the cases, audit, write month by month."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.simulate.audit import PersonFacts, audit
from features.simulate.catalog import (
    KINDS,
    Catalog,
    Institutions,
    build_catalog,
    build_institutions,
)
from features.simulate.claims import (
    EMPTY_CODES,
    EVENT_TYPES,
    IT_DRUG,
    ITEM_TYPES,
    VISIT_TYPES,
    VT_INP,
    VT_OUT,
    Claims,
)
from features.simulate.config import (
    DAY,
    EPOCH_DAY0,
    FORMAT_VERSION,
    PERIOD_END,
    PERIOD_START,
    SCALES,
    TIMEZONE,
    SimulationError,
)
from features.simulate.fraud import Planter
from features.simulate.population import Population, build_population
from features.simulate.settlements import ALL_DX, generate_background
from features.simulate.spelling import CodeBook
from features.simulate.supply import build_events
from features.simulate.truth import Truth, build_truth
from features.simulate.writer import (
    SCHEMAS,
    TRUTH_SCHEMAS,
    TableSink,
    dates,
    money,
    timestamps,
    write_whole,
)

# fund share (per mille) by visit type and institution level
_RATIO = {
    VT_OUT: (650, 600, 550, 500),
    VT_INP: (880, 850, 780, 700),
}
_PHARMACY_RATIO = 500


@dataclass(frozen=True)
class SimulationSummary:
    out_dir: Path
    seed: int
    scale: str
    fmt: str
    counts: dict[str, int] = field(default_factory=dict)
    """Rows written per contract table."""
    patterns: dict[str, int] = field(default_factory=dict)
    """Truth rows per pattern."""
    benign: dict[str, int] = field(default_factory=dict)
    """Benign look-alikes per kind."""
    repaired: dict[str, int] = field(default_factory=dict)
    """Background rows dropped because random draws broke a rule."""
    seconds: float = 0.0


def simulate(
    out_dir: Path,
    *,
    seed: int,
    scale: str,
    progress: Callable[[str], None] | None = None,
    fmt: str = "parquet",
) -> SimulationSummary:
    """Write a synthetic province (CONTRACT.md section 3) and its truth into `out_dir`."""
    if scale not in SCALES:
        msg = f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}"
        raise ValueError(msg)
    if fmt not in ("parquet", "csv"):
        msg = f"unknown format {fmt!r} (parquet or csv)"
        raise ValueError(msg)
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    cfg = SCALES[scale]
    out_dir = Path(out_dir)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    for name in SCHEMAS:  # a table left from an earlier run in the other format would be ambiguous
        for suffix in (".parquet", ".csv"):
            (out_dir / f"{name}{suffix}").unlink(missing_ok=True)

    seeds = np.random.SeedSequence(seed).spawn(8)
    rngs = [np.random.default_rng(s) for s in seeds]
    cat = build_catalog(rngs[0])
    inst = build_institutions(cfg, rngs[1])
    pop = build_population(cfg, rngs[2])
    book = CodeBook(cat, salt=int(rngs[3].integers(1 << 62)))
    say(f"province: {cfg.n_regions} regions, {len(inst):,} institutions, {len(pop):,} patients")

    background = generate_background(cfg, cat, inst, pop, book, rngs[4], say)
    planted = Planter(cfg, cat, inst, pop, book, background.claims, rngs[5]).plant_all()
    _unique_planted_times(background.claims, planted.claims)
    claims = background.claims.append(planted.claims)
    say(
        f"planted: {len(planted.claims.s):,} settlements in {len(set(planted.scenario.values()))} scenarios"
    )

    events = build_events(claims, planted.explicit_events, planted.no_auto, book, rngs[6])
    flags = audit(claims, events, cat, PersonFacts(gender=pop.gender, birth_day=pop.birth_day))
    say(f"audit: {len(flags):,} deterministic flags, all on planted settlements")

    ids = _SettlementIds(claims)
    truth = build_truth(
        claims,
        flags,
        planted,
        settlement_id=ids.strings,
        patient_ids=pop.table["patient_id"].to_numpy(),
        institution_ids=inst.table["institution_id"].to_numpy(),
        canonical_codes=_CodesOf(claims, book, planted.claims.s["sid"].to_numpy()),
        rng=rngs[7],
    )

    counts = _write_catalogs(out_dir, cat, inst, pop, fmt)
    counts |= _write_claims(out_dir, claims, events, cat, inst, pop, book, ids, fmt, say)
    counts["labels"] = write_whole(out_dir / "labels", _labels_table(truth), fmt)
    _write_truth(out_dir / "truth", truth)

    patterns = truth.flags["pattern"].value_counts().sort_index()
    benign = truth.benign["kind"].value_counts().sort_index()
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "fundguard features.simulate",
        "seed": seed,
        "scale": scale,
        "format": fmt,
        "period": {"start": PERIOD_START, "end": PERIOD_END, "timezone": TIMEZONE},
        "counts": counts,
        "truth": {
            "patterns": {str(k): int(v) for k, v in patterns.items()},
            "benign": {str(k): int(v) for k, v in benign.items()},
            "groups": int(truth.groups["group_id"].nunique()),
        },
    }
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    )
    seconds = time.perf_counter() - started
    say(f"done in {seconds:.1f} s")
    return SimulationSummary(
        out_dir=out_dir,
        seed=seed,
        scale=scale,
        fmt=fmt,
        counts=counts,
        patterns={str(k): int(v) for k, v in patterns.items()},
        benign={str(k): int(v) for k, v in benign.items()},
        repaired=dict(background.n_dropped),
        seconds=seconds,
    )


def _unique_planted_times(background: Claims, planted: Claims) -> None:
    """Nudge planted settlement times by whole seconds so that no two settlements tie."""
    taken = set(background.s["t"].tolist())
    t = planted.s["t"].to_numpy().copy()
    for i in range(len(t)):
        while int(t[i]) in taken:
            t[i] += 1
        taken.add(int(t[i]))
    planted.s["t"] = t


class _SettlementIds:
    """settlement_id strings in order of settled_at: S2025 + 9 digits."""

    def __init__(self, claims: Claims) -> None:
        sid = claims.s["sid"].to_numpy()
        order = np.argsort(claims.s["t"].to_numpy(), kind="stable")
        self.rank = np.full(int(sid.max()) + 1, -1, np.int64)
        self.rank[sid[order]] = np.arange(len(sid))

    def array(self, sids: np.ndarray) -> pa.Array:
        num = pa.array(self.rank[np.asarray(sids, np.int64)] + 1).cast(pa.string())
        return pc.binary_join_element_wise(pa.scalar("S2025"), pc.utf8_lpad(num, 9, "0"), "")

    def strings(self, sids: np.ndarray) -> list[str]:
        return [str(x) for x in self.array(sids).to_pylist()]


class _CodesOf:
    """Canonical codes on a planted settlement's lines (for the truth's detail)."""

    def __init__(self, claims: Claims, book: CodeBook, sids: np.ndarray) -> None:
        self.book = book
        self.code_key = claims.code_key
        lines = claims.l[np.isin(claims.l["sid"].to_numpy(), sids)]
        self.lines = {
            int(sid): list(zip(grp["cstart"].to_numpy(), grp["ncodes"].to_numpy(), strict=True))
            for sid, grp in lines.groupby("sid")
        }

    def __call__(self, sid: int) -> list[str]:
        keys = [
            int(self.code_key[c])
            for start, n in self.lines.get(sid, [])
            for c in range(start, start + n)
        ]
        keys = [k for k in keys if k >= 0]
        return (
            [str(c) for c in self.book.canonical(np.array(keys, np.int64)).to_pylist()]
            if keys
            else []
        )


# ------------------------------------------------------------------ catalogs


def _opt_int(values: pd.Series) -> pa.Array:
    arr = values.to_numpy(dtype=object)
    mask = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in arr])
    filled = np.array([0 if m else int(v) for v, m in zip(arr, mask, strict=True)], np.int32)
    return pa.array(filled, type=pa.int32(), mask=mask)


def _opt_str(values: pd.Series) -> pa.Array:
    return pa.array([None if v is None or v != v else str(v) for v in values], type=pa.string())


def _write_catalogs(
    out: Path, cat: Catalog, inst: Institutions, pop: Population, fmt: str
) -> dict[str, int]:
    counts = {}
    t = inst.table
    counts["institutions"] = write_whole(
        out / "institutions",
        pa.table(
            {
                "institution_id": pa.array(t["institution_id"].tolist()),
                "name": pa.array(t["name"].tolist()),
                "kind": pa.array([KINDS[k] for k in inst.kind]),
                "level": pa.array(inst.level.astype(np.int32)),
                "region_code": pa.array(t["region_code"].tolist()),
            }
        ),
        fmt,
    )
    p = pop.table
    counts["patients"] = write_whole(
        out / "patients",
        pa.table(
            {
                "patient_id": pa.array(p["patient_id"].tolist()),
                "gender": pa.array(p["gender"].tolist()),
                "birth_date": dates(pop.birth_day),
                "region_code": pa.array(p["region_code"].tolist()),
                "locality_code": pa.array(p["locality_code"].tolist()),
            }
        ),
        fmt,
    )
    d = cat.drugs
    max_units = d["max_units_per_day"].where(d["max_units_per_day"] > 0, None).astype(object)
    counts["drugs"] = write_whole(
        out / "drugs",
        pa.table(
            {
                "drug_code": pa.array(d["drug_code"].tolist()),
                "generic_name": pa.array(d["generic_name"].tolist()),
                "pack_units": pa.array(d["pack_units"].to_numpy(np.int32)),
                "max_units_per_day": _opt_int(max_units),
                "gender_restriction": _opt_str(d["gender_restriction"]),
                "min_age": _opt_int(d["min_age"]),
                "max_age": _opt_int(d["max_age"]),
                "high_value": pa.array(d["high_value"].to_numpy(bool)),
                "red_list": pa.array(d["red_list"].to_numpy(bool)),
            }
        ),
        fmt,
    )
    pr = cat.products
    counts["products"] = write_whole(
        out / "products",
        pa.table(
            {
                "product_code": pa.array(pr["product_code"].tolist()),
                "drug_code": pa.array(pr["drug_code"].tolist()),
                "manufacturer": pa.array(pr["manufacturer"].tolist()),
            }
        ),
        fmt,
    )
    sv = cat.services
    counts["services"] = write_whole(
        out / "services",
        pa.table(
            {
                "service_code": pa.array(sv["service_code"].tolist()),
                "name": pa.array(sv["name"].tolist()),
                "gender_restriction": _opt_str(sv["gender_restriction"]),
                "min_age": _opt_int(sv["min_age"]),
                "max_age": _opt_int(sv["max_age"]),
                "max_times": _opt_int(sv["max_times"]),
                "period_days": _opt_int(sv["period_days"]),
            }
        ),
        fmt,
    )
    return counts


# ------------------------------------------------------------------ claims, month by month


def _month_of(local_seconds: np.ndarray) -> np.ndarray:
    """Months since 2025-01 (negative for 2024)."""
    days = (np.asarray(local_seconds, np.int64) // DAY + EPOCH_DAY0).astype("datetime64[D]")
    return days.astype("datetime64[M]").astype(np.int64) - (2025 - 1970) * 12


def _month_name(m: int) -> str:
    return f"{2025 + m // 12}-{m % 12 + 1:02d}"


def _write_claims(
    out: Path,
    claims: Claims,
    events: pd.DataFrame,
    cat: Catalog,
    inst: Institutions,
    pop: Population,
    book: CodeBook,
    ids: _SettlementIds,
    fmt: str,
    say: Callable[[str], None],
) -> dict[str, int]:
    s = claims.s.iloc[np.argsort(claims.s["t"].to_numpy(), kind="stable")].reset_index(drop=True)
    l = claims.l  # noqa: E741
    line_rank = ids.rank[l["sid"].to_numpy()]
    line_order = np.lexsort((np.arange(len(l)), line_rank))
    l = l.iloc[line_order].reset_index(drop=True)  # noqa: E741
    line_rank = line_rank[line_order]
    starts = np.flatnonzero(np.r_[True, line_rank[1:] != line_rank[:-1]])
    if len(starts) != len(s):
        msg = "every settlement must have at least one line"
        raise SimulationError(msg)
    line_no = np.arange(len(l)) - np.repeat(starts, np.diff(np.r_[starts, len(l)])) + 1

    amount = l["qty"].to_numpy() * l["price"].to_numpy()
    total = np.add.reduceat(amount, starts)  # exact integer cents per settlement, in rank order
    vt = s["vtype"].to_numpy()
    level = inst.level[s["inst"].to_numpy()]
    ratio = np.full(len(s), _PHARMACY_RATIO, np.int64)
    for v, table in _RATIO.items():
        m = vt == v
        ratio[m] = np.array(table)[level[m]]
    fund = total * ratio // 1000

    patient_ids = pa.array(pop.table["patient_id"].tolist())
    inst_ids = pa.array(inst.table["institution_id"].tolist())
    doctor_ids = pa.array(inst.doctor_ids.tolist(), type=pa.string())
    dx = pa.array(list(ALL_DX))
    item_codes = pa.array(
        cat.drugs["drug_code"].tolist()
        + cat.services["service_code"].tolist()
        + cat.materials["material_code"].tolist()
    )
    item_offset = np.array([0, len(cat.drugs), len(cat.drugs) + len(cat.services)])
    visit = pa.array(list(VISIT_TYPES))
    itypes = pa.array(list(ITEM_TYPES))
    ev_types = pa.array(list(EVENT_TYPES))

    s_month = _month_of(s["t"].to_numpy())
    l_month = s_month[line_rank]
    counts = {"settlements": 0, "settlement_items": 0, "reversals": 0, "trace_events": 0}
    with (
        TableSink(out / "settlements", SCHEMAS["settlements"], fmt) as s_sink,
        TableSink(out / "settlement_items", SCHEMAS["settlement_items"], fmt) as l_sink,
        TableSink(out / "reversals", SCHEMAS["reversals"], fmt) as r_sink,
    ):
        s_bounds = np.searchsorted(s_month, np.arange(13))
        l_bounds = np.searchsorted(l_month, np.arange(13))
        for m in range(12):
            sa, sb = s_bounds[m], s_bounds[m + 1]
            la, lb = l_bounds[m], l_bounds[m + 1]
            sc = s.iloc[sa:sb]
            sid_str = ids.array(sc["sid"].to_numpy())
            doctor = sc["doctor"].to_numpy()
            admit = sc["admit"].to_numpy()
            diag = sc["diag"].to_numpy()
            s_sink.write(
                pa.table(
                    {
                        "settlement_id": sid_str,
                        "institution_id": inst_ids.take(pa.array(sc["inst"].to_numpy())),
                        "patient_id": patient_ids.take(pa.array(sc["patient"].to_numpy())),
                        "doctor_id": doctor_ids.take(
                            pa.array(np.maximum(doctor, 0), mask=doctor < 0)
                        )
                        if len(doctor_ids)
                        else pa.nulls(len(sc), pa.string()),
                        "settled_at": timestamps(sc["t"].to_numpy()),
                        "visit_type": visit.take(pa.array(sc["vtype"].to_numpy().astype(np.int64))),
                        "admit_date": dates(admit, mask=admit < 0),
                        "discharge_date": dates(sc["discharge"].to_numpy(), mask=admit < 0),
                        "diagnosis_code": dx.take(pa.array(np.maximum(diag, 0), mask=diag < 0)),
                        "total_amount": money(total[sa:sb]),
                        "fund_paid": money(fund[sa:sb]),
                    }
                )
            )
            rev = sc["rev_t"].to_numpy()
            has_rev = rev >= 0
            r_sink.write(
                pa.table(
                    {
                        "settlement_id": sid_str.filter(pa.array(has_rev)),
                        "reversed_at": timestamps(rev[has_rev]),
                    }
                )
            )
            lc = l.iloc[la:lb]
            l_sink.write(
                _items_table(
                    lc,
                    line_no[la:lb],
                    amount[la:lb],
                    ids,
                    claims,
                    book,
                    item_codes,
                    item_offset,
                    itypes,
                )
            )
            counts["settlements"] = s_sink.rows
            counts["settlement_items"] = l_sink.rows
            counts["reversals"] = r_sink.rows
            say(
                f"{_month_name(m)}: {sb - sa:,} settlements, {lb - la:,} items ({s_sink.rows:,} settlements so far)"
            )
        if s_bounds[12] != len(s):
            msg = "settlements outside 2025"
            raise SimulationError(msg)

    ev_month = _month_of(events["t"].to_numpy())
    with TableSink(out / "trace_events", SCHEMAS["trace_events"], fmt) as e_sink:
        months = np.unique(ev_month)
        bounds = np.searchsorted(ev_month, np.r_[months, months[-1] + 1])
        for j, m in enumerate(months):
            ec = events.iloc[bounds[j] : bounds[j + 1]]
            e_sink.write(
                pa.table(
                    {
                        "trace_code": book.spell(ec["key"].to_numpy(), ec["var"].to_numpy()),
                        "event_type": ev_types.take(
                            pa.array(ec["kind"].to_numpy().astype(np.int64))
                        ),
                        "institution_id": inst_ids.take(pa.array(ec["inst"].to_numpy())),
                        "event_at": timestamps(ec["t"].to_numpy()),
                    }
                )
            )
            say(f"trace events {_month_name(int(m))}: {len(ec):,} ({e_sink.rows:,} so far)")
        counts["trace_events"] = e_sink.rows
    return counts


def _items_table(
    lc: pd.DataFrame,
    line_no: np.ndarray,
    amount: np.ndarray,
    ids: _SettlementIds,
    claims: Claims,
    book: CodeBook,
    item_codes: pa.Array,
    item_offset: np.ndarray,
    itypes: pa.Array,
) -> pa.Table:
    itype = lc["itype"].to_numpy().astype(np.int64)
    ncodes = lc["ncodes"].to_numpy()
    cstart = lc["cstart"].to_numpy()
    total = int(ncodes.sum())
    offsets = np.r_[0, np.cumsum(ncodes)].astype(np.int32)
    gather = np.repeat(cstart - offsets[:-1], ncodes) + np.arange(total)
    values = book.spell(claims.code_key[gather], claims.code_var[gather])
    drug = itype == IT_DRUG
    null_list = ~drug | ((ncodes == 0) & (lc["nocode"].to_numpy() != EMPTY_CODES))
    trace = pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(null_list))
    return pa.table(
        {
            "settlement_id": ids.array(lc["sid"].to_numpy()),
            "line_no": pa.array(line_no.astype(np.int32)),
            "item_type": itypes.take(pa.array(itype)),
            "item_code": item_codes.take(pa.array(item_offset[itype] + lc["item"].to_numpy())),
            "quantity": pa.array(lc["qty"].to_numpy().astype(np.int64)),
            "unit_price": money(lc["price"].to_numpy()),
            "amount": money(amount),
            "trace_codes": trace,
            "split_sale": pa.array(lc["split"].to_numpy(bool), mask=~drug),
        }
    )


def _labels_table(truth: Truth) -> pa.Table:
    lab = truth.labels
    return pa.table(
        {
            "entity_type": pa.array(lab["entity_type"].tolist(), type=pa.string()),
            "entity_id": pa.array(lab["entity_id"].tolist(), type=pa.string()),
            "pattern": pa.array(lab["pattern"].tolist(), type=pa.string()),
            "label": pa.array(lab["label"].to_numpy(np.int32)),
            "decided_at": timestamps(lab["decided_t"].to_numpy(np.int64)),
        }
    )


def _write_truth(out: Path, truth: Truth) -> None:
    frames = {
        "flags": truth.flags,
        "groups": truth.groups,
        "benign": truth.benign,
        "benign_groups": truth.benign_groups,
    }
    for name, frame in frames.items():
        schema = TRUTH_SCHEMAS[name]
        table = pa.table(
            {c: pa.array(frame[c].astype(str).tolist(), type=pa.string()) for c in schema.names}
        )
        write_whole(out / name, table, "parquet")
