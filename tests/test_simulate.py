"""The synthetic province: determinism, the contract's types, and its truth.

The deterministic patterns are re-implemented here from semantics.md in plain
pandas/Python, independently of the simulator's own audit, and compared with the
truth both ways: no background or benign settlement exhibits any of them, and
every truth row is exhibited.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.simulate import SimulationSummary, simulate
from features.tables import DETERMINISTIC_PATTERNS

SEED = 20250101
MONEY = pa.decimal128(18, 2)
TS = pa.timestamp("us", tz="Asia/Shanghai")
STR = pa.string()
I32 = pa.int32()

EXPECTED_TYPES: dict[str, dict[str, pa.DataType]] = {
    "institutions": {
        "institution_id": STR,
        "name": STR,
        "kind": STR,
        "level": I32,
        "region_code": STR,
    },
    "patients": {
        "patient_id": STR,
        "gender": STR,
        "birth_date": pa.date32(),
        "region_code": STR,
        "locality_code": STR,
    },
    "drugs": {
        "drug_code": STR,
        "generic_name": STR,
        "pack_units": I32,
        "max_units_per_day": I32,
        "gender_restriction": STR,
        "min_age": I32,
        "max_age": I32,
        "high_value": pa.bool_(),
        "red_list": pa.bool_(),
    },
    "products": {"product_code": STR, "drug_code": STR, "manufacturer": STR},
    "services": {
        "service_code": STR,
        "name": STR,
        "gender_restriction": STR,
        "min_age": I32,
        "max_age": I32,
        "max_times": I32,
        "period_days": I32,
    },
    "settlements": {
        "settlement_id": STR,
        "institution_id": STR,
        "patient_id": STR,
        "doctor_id": STR,
        "settled_at": TS,
        "visit_type": STR,
        "admit_date": pa.date32(),
        "discharge_date": pa.date32(),
        "diagnosis_code": STR,
        "total_amount": MONEY,
        "fund_paid": MONEY,
    },
    "settlement_items": {
        "settlement_id": STR,
        "line_no": I32,
        "item_type": STR,
        "item_code": STR,
        "quantity": pa.int64(),
        "unit_price": MONEY,
        "amount": MONEY,
        "trace_codes": pa.list_(STR),
        "split_sale": pa.bool_(),
    },
    "trace_events": {"trace_code": STR, "event_type": STR, "institution_id": STR, "event_at": TS},
    "reversals": {"settlement_id": STR, "reversed_at": TS},
    "labels": {
        "entity_type": STR,
        "entity_id": STR,
        "pattern": STR,
        "label": I32,
        "decided_at": TS,
    },
}
PLANTED = (
    *DETERMINISTIC_PATTERNS,
    "group_admission",
    "drug_hoarding",
    "resale_hub",
    "anomalous_institution",
    "anomalous_settlement",
)
BENIGN_KINDS = {
    "split_exact_pack": "split_sale_overrun",
    "resale_after_reversal": "duplicate_trace_code",
    "family_admission": "group_admission",
    "volume_outlier": "anomalous_institution",
    "readmission_after_30_days": "split_admission",
    "readmission_other_diagnosis": "split_admission",
    "hba1c_91_days": "over_frequency",
}


@dataclass
class Province:
    out: Path
    summary: SimulationSummary
    arrow: dict[str, pa.Table]
    t: dict[str, pd.DataFrame]
    truth: dict[str, pd.DataFrame]


def _load(
    out: Path,
) -> tuple[dict[str, pa.Table], dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    arrow = {name: pq.read_table(out / f"{name}.parquet") for name in EXPECTED_TYPES}
    frames = {}
    for name, table in arrow.items():
        df = table.drop_columns(
            [c for c in ("trace_codes",) if c in table.column_names]
        ).to_pandas()
        if name == "settlement_items":
            df["trace_codes"] = table.column("trace_codes").to_pylist()
        frames[name] = df
    truth = {
        n: pq.read_table(out / "truth" / f"{n}.parquet").to_pandas()
        for n in ("flags", "groups", "benign", "benign_groups")
    }
    return arrow, frames, truth


@pytest.fixture(scope="session")
def province(tmp_path_factory: pytest.TempPathFactory) -> Province:
    out = tmp_path_factory.mktemp("province")
    lines: list[str] = []
    summary = simulate(out, seed=SEED, scale="small", progress=lines.append)
    assert any(line.startswith("2025-12:") for line in lines), lines
    arrow, frames, truth = _load(out)
    return Province(out, summary, arrow, frames, truth)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------ determinism and format


def test_same_seed_gives_identical_files_and_another_seed_differs(
    province: Province, tmp_path_factory: pytest.TempPathFactory
) -> None:
    again = tmp_path_factory.mktemp("again")
    simulate(again, seed=SEED, scale="small")
    first, second = _digest(province.out), _digest(again)
    assert len(first) >= 15
    assert first == second

    other = tmp_path_factory.mktemp("other")
    simulate(other, seed=SEED + 1, scale="small")
    third = _digest(other)
    assert third.keys() == first.keys()
    for name in (
        "settlements.parquet",
        "settlement_items.parquet",
        "trace_events.parquet",
        "truth/flags.parquet",
    ):
        assert third[name] != first[name], name


def test_every_table_has_the_contract_columns_and_types(province: Province) -> None:
    for name, expected in EXPECTED_TYPES.items():
        schema = province.arrow[name].schema
        assert {f.name: f.type for f in schema} == expected, name
        assert province.arrow[name].num_rows > 0, name
        assert province.summary.counts[name] == province.arrow[name].num_rows
    # settlements are written as one row group per month
    assert pq.ParquetFile(province.out / "settlements.parquet").num_row_groups == 12
    manifest = json.loads((province.out / "manifest.json").read_text())
    assert manifest["seed"] == SEED
    assert manifest["scale"] == "small"
    assert manifest["period"] == {
        "start": "2025-01-01",
        "end": "2025-12-31",
        "timezone": "Asia/Shanghai",
    }
    assert manifest["counts"] == province.summary.counts
    assert isinstance(manifest["format_version"], int)


def test_scale_small_is_about_20k_settlements(province: Province) -> None:
    assert 18_000 <= len(province.t["settlements"]) <= 22_000
    assert province.summary.seconds < 30


def test_money_is_decimal_and_times_are_local(province: Province) -> None:
    s, items = province.t["settlements"], province.t["settlement_items"]
    assert all(isinstance(v, type(s["total_amount"].iloc[0])) for v in s["total_amount"].head(50))
    assert str(s["settled_at"].dtype) == "datetime64[us, Asia/Shanghai]"
    settled = s["settled_at"]
    assert settled.min() >= pd.Timestamp("2025-01-01", tz="Asia/Shanghai")
    assert settled.max() < pd.Timestamp("2026-01-01", tz="Asia/Shanghai")
    assert settled.is_unique
    # amounts = quantity x unit price; total = sum of lines; fund within total
    amount = items["amount"].map(lambda d: int(d * 100))
    assert (amount == items["quantity"] * items["unit_price"].map(lambda d: int(d * 100))).all()
    total = amount.groupby(items["settlement_id"]).sum()
    cents = s.set_index("settlement_id")["total_amount"].map(lambda d: int(d * 100))
    assert (total.reindex(cents.index) == cents).all()
    fund = s.set_index("settlement_id")["fund_paid"].map(lambda d: int(d * 100))
    assert ((fund <= cents) & (fund > 0)).all()
    # inpatient stays carry dates and a diagnosis and are settled at discharge
    inp = s[s["visit_type"] == "inpatient"]
    assert inp["admit_date"].notna().all()
    assert (inp["discharge_date"] >= inp["admit_date"]).all()
    assert (inp["settled_at"].dt.date == inp["discharge_date"]).all()
    assert s.loc[s["visit_type"] != "inpatient", "admit_date"].isna().all()


def test_csv_output_spells_times_money_and_lists(
    province: Province, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("csv")
    simulate(out, seed=SEED, scale="small", fmt="csv")
    for name in EXPECTED_TYPES:
        assert (out / f"{name}.csv").exists(), name
        assert not (out / f"{name}.parquet").exists()
    s = pd.read_csv(out / "settlements.csv", dtype=str, keep_default_na=False)
    assert list(s.columns) == list(EXPECTED_TYPES["settlements"])
    assert s["settled_at"].str.fullmatch(r"2025-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00").all()
    assert s["total_amount"].str.fullmatch(r"\d+\.\d\d").all()
    inp = s[s["visit_type"] == "inpatient"]
    assert inp["admit_date"].str.fullmatch(r"2025-\d\d-\d\d").all()
    # the same seed gives the same data as the parquet run
    pq_s = province.t["settlements"]
    assert s["settlement_id"].tolist() == pq_s["settlement_id"].tolist()
    assert s["total_amount"].tolist() == [str(v) for v in pq_s["total_amount"]]
    first = pq_s["settled_at"].iloc[0].isoformat()
    assert s["settled_at"].iloc[0] == first
    items = pd.read_csv(out / "settlement_items.csv", dtype=str, keep_default_na=False)
    multi = items["trace_codes"].str.contains("|", regex=False)
    assert multi.any()
    pq_items = province.t["settlement_items"]
    joined = ["|".join(c) if c is not None else "" for c in pq_items["trace_codes"]]
    assert items["trace_codes"].tolist() == joined


# ------------------------------------------------------------------ codes


def test_every_code_canonicalises_and_both_forms_occur(province: Province) -> None:
    codes = pytest.importorskip("traceability.codes")
    items, events = province.t["settlement_items"], province.t["trace_events"]
    parsed = codes.canonicalize_codes(events["trace_code"].tolist())
    assert all(isinstance(v, codes.TraceCode) for v in parsed.values())
    missing = set(province.truth["flags"].query("pattern == 'missing_trace_code'")["entity_id"])
    sale_codes = [
        (sid, raw)
        for sid, lst in zip(items["settlement_id"], items["trace_codes"], strict=True)
        if lst
        for raw in lst
    ]
    sale_parsed = codes.canonicalize_codes([raw for _, raw in sale_codes])
    invalid_sids = {
        sid for sid, raw in sale_codes if not isinstance(sale_parsed[raw], codes.TraceCode)
    }
    assert invalid_sids
    assert invalid_sids <= missing

    all_parsed = {**parsed, **sale_parsed}
    valid = [(raw, tc) for raw, tc in all_parsed.items() if isinstance(tc, codes.TraceCode)]
    forms = {tc.form for _, tc in valid}
    assert forms == {codes.CodeForm.NMPA20, codes.CodeForm.GS1}
    gs1 = [raw for raw, tc in valid if tc.form == codes.CodeForm.GS1]
    assert any(raw.startswith("(") for raw in gs1)
    assert any("\x1d" in raw for raw in gs1)
    assert any(not raw.startswith("(01)") and raw.startswith("(") for raw in gs1)  # AI order varies
    assert any("(17)" not in raw and raw.startswith("(") for raw in gs1)  # with and without expiry
    assert all(
        re.fullmatch(r"[0-9A-Z]{6,12}", tc.serial)
        for _, tc in valid
        if tc.form == codes.CodeForm.GS1
    )

    # one pack, two spellings: purchase event vs sale line
    event_spelling = {parsed[raw].canonical: raw for raw in events["trace_code"]}
    differently = [
        raw
        for _, raw in sale_codes
        if isinstance(sale_parsed[raw], codes.TraceCode)
        and event_spelling.get(sale_parsed[raw].canonical, raw) != raw
    ]
    assert differently


# ------------------------------------------------------------------ semantics, independently


def _micros(times: pd.Series) -> np.ndarray:
    """UTC microseconds (NaT: int64 min)."""
    utc = pd.to_datetime(times, utc=True).dt.tz_localize(None).astype("datetime64[us]")
    return utc.to_numpy().astype(np.int64)


def _age(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


@pytest.fixture(scope="session")
def exhibited(province: Province) -> set[tuple[str, str]]:
    """(settlement_id, pattern) for every deterministic pattern of semantics.md, from the files."""
    codes = pytest.importorskip("traceability.codes")
    return _exhibited(province.t, codes)


def _exhibited(t: dict[str, pd.DataFrame], codes: Any) -> set[tuple[str, str]]:
    s = t["settlements"].merge(t["reversals"].rename(columns={"reversed_at": "rev"}), how="left")
    s = s.sort_values(["settled_at", "settlement_id"]).reset_index(drop=True)
    drugs = t["drugs"].set_index("drug_code")
    services = t["services"].set_index("service_code")
    patients = t["patients"].set_index("patient_id")
    product_drug = t["products"].set_index("product_code")["drug_code"].to_dict()
    pack_units = drugs["pack_units"].to_dict()
    items = t["settlement_items"].merge(
        s[["settlement_id", "institution_id", "patient_id", "settled_at", "rev"]],
        on="settlement_id",
    )
    out: set[tuple[str, str]] = set()

    # knowledge-base restrictions
    kb = pd.concat(
        [
            drugs[["gender_restriction", "min_age", "max_age"]].assign(item_type="drug"),
            services[["gender_restriction", "min_age", "max_age"]].assign(item_type="service"),
        ]
    ).rename_axis("item_code")
    lines = items.merge(kb.reset_index(), on=["item_type", "item_code"]).merge(
        patients[["gender", "birth_date"]], left_on="patient_id", right_index=True
    )
    ages = np.array(
        [_age(b, t.date()) for b, t in zip(lines["birth_date"], lines["settled_at"], strict=True)]
    )
    wrong_gender = lines["gender_restriction"].notna() & (
        lines["gender_restriction"] != lines["gender"]
    )
    wrong_age = (lines["min_age"].notna() & (ages < lines["min_age"])) | (
        lines["max_age"].notna() & (ages > lines["max_age"])
    )
    out |= {(sid, "gender_restriction") for sid in lines.loc[wrong_gender, "settlement_id"]}
    out |= {(sid, "age_restriction") for sid in lines.loc[wrong_age, "settlement_id"]}

    # rolling windows over non-reversed settlements of the patient (any institution)
    def windows(
        rows: pd.DataFrame, limit: dict[str, float], period: dict[str, int], pattern: str
    ) -> None:
        rows = rows[rows["item_code"].map(limit).notna()].sort_values(
            ["patient_id", "item_code", "settled_at"]
        )
        key = (rows["patient_id"] + "/" + rows["item_code"]).to_numpy()
        when = _micros(rows["settled_at"])
        rev = _micros(rows["rev"])
        rev = np.where(rev == np.iinfo(np.int64).min, np.iinfo(np.int64).max, rev)
        qty = rows["quantity"].to_numpy()
        lim = rows["item_code"].map(limit).to_numpy()
        span = rows["item_code"].map(period).to_numpy().astype(np.int64) * 86_400_000_000
        sids = rows["settlement_id"].to_numpy()
        bounds = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
        for a, b in itertools.pairwise(bounds):
            for i in range(a, b):
                j = np.arange(a, i + 1)
                live = (when[j] > when[i] - span[i]) & (rev[j] > when[i])
                if qty[j][live].sum() > lim[i]:
                    out.add((sids[i], pattern))

    svc = items[items["item_type"] == "service"]
    windows(
        svc,
        services["max_times"].to_dict(),
        services["period_days"].fillna(0).to_dict(),
        "over_frequency",
    )
    drug_lines = items[items["item_type"] == "drug"]
    limit = (drugs["max_units_per_day"] * 30).to_dict()
    windows(drug_lines, limit, dict.fromkeys(limit, 30), "over_quantity")

    # split admissions
    inp = s[s["visit_type"] == "inpatient"].assign(cat=lambda d: d["diagnosis_code"].str[:3])
    inp = inp[inp.duplicated(["patient_id", "institution_id", "cat"], keep=False)]
    for _, grp in inp.groupby(["patient_id", "institution_id", "cat"]):
        rows = list(grp.itertuples())
        for i, row in enumerate(rows):
            if any(0 <= (row.admit_date - prev.discharge_date).days <= 15 for prev in rows[:i]):
                out.add((row.settlement_id, "split_admission"))

    # the trace-code ledger
    events = t["trace_events"].copy()
    parsed_events = codes.canonicalize_codes(events["trace_code"].tolist())
    events["canonical"] = [parsed_events[raw].canonical for raw in events["trace_code"]]
    history: dict[tuple[str, str], list[tuple[pd.Timestamp, str]]] = defaultdict(list)
    for ev in events.sort_values("event_at").itertuples():
        history[(ev.canonical, ev.institution_id)].append((ev.event_at, ev.event_type))
    sales: dict[str, list[tuple[pd.Timestamp, str, bool, int, object]]] = defaultdict(list)
    sale_parsed = codes.canonicalize_codes(
        [raw for lst in drug_lines["trace_codes"] if lst for raw in lst]
    )
    for row in drug_lines.itertuples():
        raws = row.trace_codes or []
        parsed = [sale_parsed[raw] for raw in raws]
        if not raws or any(isinstance(p, codes.InvalidTraceCode) for p in parsed):
            out.add((row.settlement_id, "missing_trace_code"))
            continue
        pack = int(pack_units[row.item_code])
        split = bool(row.split_sale)
        seen = set()
        for tc in parsed:
            if product_drug.get(tc.product_code) != row.item_code:
                out.add((row.settlement_id, "trace_code_mismatch"))
            before = [
                kind
                for when, kind in history[(tc.canonical, row.institution_id)]
                if when <= row.settled_at
            ]
            if not before or before[-1] != "purchase":
                out.add((row.settlement_id, "unpurchased_trace_code"))
            if tc.canonical in seen:
                out.add((row.settlement_id, "duplicate_trace_code"))
            seen.add(tc.canonical)
            units = row.quantity // len(parsed) if split else pack
            sales[tc.canonical].append(
                (row.settled_at, row.settlement_id, split, units, pack, row.rev)
            )
    for _, lst in sales.items():
        lst.sort(key=lambda x: (x[0], x[1]))
        for i, (ti, sid, split, units, pack, _r) in enumerate(lst):
            live = [e for e in lst[:i] if e[0] < ti and not (pd.notna(e[5]) and e[5] <= ti)]
            if not live:
                continue
            if not split or any(not e[2] for e in live):
                out.add((sid, "duplicate_trace_code"))
            if split and sum(e[3] for e in live if e[2]) + units > pack:
                out.add((sid, "split_sale_overrun"))
    # drug lines spelled within the contract's quantity rule
    for row in drug_lines.itertuples():
        if row.trace_codes and not row.split_sale:
            assert row.quantity == len(row.trace_codes) * pack_units[row.item_code], row
        if row.split_sale:
            assert len(row.trace_codes) == 1
            assert 0 < row.quantity < pack_units[row.item_code]
    return out


@pytest.mark.parametrize("pattern", DETERMINISTIC_PATTERNS)
def test_no_background_or_benign_settlement_exhibits(
    pattern: str, province: Province, exhibited: set
) -> None:
    truth = set(province.truth["flags"].query("pattern == @pattern")["entity_id"])
    found = {sid for sid, p in exhibited if p == pattern}
    assert found - truth == set()


@pytest.mark.parametrize("pattern", DETERMINISTIC_PATTERNS)
def test_every_truth_row_is_exhibited(pattern: str, province: Province, exhibited: set) -> None:
    truth = set(province.truth["flags"].query("pattern == @pattern")["entity_id"])
    found = {sid for sid, p in exhibited if p == pattern}
    assert truth
    assert truth - found == set()


def test_background_packs_were_bought_1_to_60_days_before_their_first_sale(
    province: Province,
) -> None:
    codes = pytest.importorskip("traceability.codes")
    t = province.t
    truth_sids = set(province.truth["flags"].query("entity_type == 'settlement'")["entity_id"])
    items = t["settlement_items"].merge(
        t["settlements"][["settlement_id", "institution_id", "settled_at"]]
    )
    items = items[(items["item_type"] == "drug") & ~items["settlement_id"].isin(truth_sids)]
    parsed = codes.canonicalize_codes([raw for lst in items["trace_codes"] for raw in lst])
    first_sale: dict[str, tuple[pd.Timestamp, str]] = {}
    for row in items.sort_values("settled_at").itertuples():
        for raw in row.trace_codes:
            first_sale.setdefault(parsed[raw].canonical, (row.settled_at, row.institution_id))
    ev = t["trace_events"]
    ev_parsed = codes.canonicalize_codes(ev["trace_code"].tolist())
    ev = ev.assign(canonical=[ev_parsed[r].canonical for r in ev["trace_code"]])
    purchases = ev[ev["event_type"] == "purchase"]
    bought = dict(
        zip(
            zip(purchases["canonical"], purchases["institution_id"], strict=True),
            purchases["event_at"],
            strict=True,
        )
    )
    assert len(bought) == len(purchases)  # one purchase per pack and institution
    leads = [
        (when.date() - bought[(c, inst)].date()).days for c, (when, inst) in first_sale.items()
    ]
    assert min(leads) >= 1
    assert max(leads) <= 60
    # returned packs are never sold by the institution that returned them, in the background
    returned = ev[ev["event_type"] == "return"]
    assert len(returned) > 0
    sold = {(c, inst) for c, (_, inst) in first_sale.items()}
    assert not sold & set(zip(returned["canonical"], returned["institution_id"], strict=True))


def test_reversals_spare_inpatient_stays_and_planted_cases(province: Province) -> None:
    t = province.t
    rev = t["reversals"].merge(t["settlements"], on="settlement_id")
    assert len(rev) >= 0.005 * len(t["settlements"])
    assert (rev["visit_type"] != "inpatient").all()
    delay = rev["reversed_at"] - rev["settled_at"]
    assert (delay > pd.Timedelta(hours=1)).all()
    assert (delay < pd.Timedelta(days=4)).all()
    planted = set(province.truth["flags"].query("entity_type == 'settlement'")["entity_id"])
    assert not planted & set(rev["settlement_id"])


def test_split_sales_occur_in_the_background(province: Province, exhibited: set) -> None:
    items = province.t["settlement_items"]
    truth = set(province.truth["flags"]["entity_id"])
    split = items[(items["split_sale"] == True) & ~items["settlement_id"].isin(truth)]  # noqa: E712
    assert len(split) > 20


# ------------------------------------------------------------------ planted and benign


def test_every_pattern_is_planted(province: Province) -> None:
    flags = province.truth["flags"]
    counts = flags["pattern"].value_counts()
    for pattern in PLANTED:
        assert counts.get(pattern, 0) >= 1, pattern
    assert "blacklisted_institution" not in counts
    assert province.summary.patterns == {k: int(v) for k, v in counts.items()}
    assert flags["detail"].map(lambda d: isinstance(json.loads(d), dict)).all()
    assert not flags.duplicated(["entity_type", "entity_id", "pattern"]).any()
    ids = {
        "settlement": set(province.t["settlements"]["settlement_id"]),
        "patient": set(province.t["patients"]["patient_id"]),
        "institution": set(province.t["institutions"]["institution_id"]),
        "group": set(province.truth["groups"]["group_id"]),
    }
    for kind, grp in flags.groupby("entity_type"):
        assert set(grp["entity_id"]) <= ids[str(kind)], kind


def test_benign_lookalikes_are_present_and_never_in_truth(province: Province) -> None:
    benign = province.truth["benign"]
    assert dict(zip(benign["kind"], benign["lookalike_of"], strict=True)) == BENIGN_KINDS
    flagged = set(
        zip(
            province.truth["flags"]["entity_type"],
            province.truth["flags"]["entity_id"],
            strict=True,
        )
    )
    assert not flagged & set(zip(benign["entity_type"], benign["entity_id"], strict=True))
    fam = province.truth["benign_groups"]
    assert (fam.groupby("group_id").size() == 3).all()
    s = province.t["settlements"]
    # the 91-day HbA1c look-alike really is 91 days after the previous test
    items = province.t["settlement_items"].merge(s[["settlement_id", "patient_id", "settled_at"]])
    hba = items[items["item_code"] == "250304005"]
    for sid in benign.loc[benign["kind"] == "hba1c_91_days", "entity_id"]:
        row = hba[hba["settlement_id"] == sid].iloc[0]
        prev = hba[
            (hba["patient_id"] == row["patient_id"]) & (hba["settled_at"] < row["settled_at"])
        ]
        assert (row["settled_at"].date() - prev["settled_at"].max().date()).days == 91


def test_group_admissions_are_neighbours_admitted_together_repeatedly(province: Province) -> None:
    groups = province.truth["groups"]
    s = province.t["settlements"]
    locality = province.t["patients"].set_index("patient_id")["locality_code"]
    institutions = province.t["institutions"].set_index("institution_id")
    for _gid, grp in groups.groupby("group_id"):
        assert 4 <= len(grp) <= 8
        assert locality.loc[grp["patient_id"]].nunique() == 1
        inst = grp["institution_id"].iloc[0]
        assert institutions.loc[inst, "level"] == 1
        stays = s[
            (s["visit_type"] == "inpatient")
            & s["patient_id"].isin(grp["patient_id"])
            & (s["institution_id"] == inst)
        ]
        assert stays["diagnosis_code"].isin(["J06.9", "R51", "M54.5"]).all()
        assert ((stays["discharge_date"] - stays["admit_date"]).map(lambda d: d.days) <= 4).all()
        admits = sorted(stays["admit_date"].unique())
        occasions: list[list[date]] = []
        for day in admits:
            if occasions and (day - occasions[-1][0]).days <= 1:
                occasions[-1].append(day)
            else:
                occasions.append([day])
        assert len(occasions) >= 3
        assert all((b[0] - a[0]).days >= 30 for a, b in itertools.pairwise(occasions))
        for occ in occasions:
            members = stays[stays["admit_date"].isin(occ)]["patient_id"]
            assert set(members) == set(grp["patient_id"])


def test_hoarders_buy_far_beyond_use_at_three_or_more_institutions(province: Province) -> None:
    t = province.t
    drugs = t["drugs"].set_index("drug_code")
    hoarders = province.truth["flags"].query("pattern == 'drug_hoarding'")
    items = t["settlement_items"].merge(
        t["settlements"][["settlement_id", "patient_id", "institution_id", "settled_at"]]
    )
    for row in hoarders.itertuples():
        detail = json.loads(row.detail)
        bought = items[
            (items["patient_id"] == row.entity_id) & (items["item_code"] == detail["drug_code"])
        ]
        assert drugs.loc[detail["drug_code"], "high_value"]
        assert bought["institution_id"].nunique() >= 3
        days = (bought["settled_at"].max().date() - bought["settled_at"].min().date()).days + 30
        assert (
            bought["quantity"].sum()
            >= 4 * drugs.loc[detail["drug_code"], "max_units_per_day"] * days
        )


def test_resale_hubs_sell_packs_dispensed_to_others_elsewhere(province: Province) -> None:
    codes = pytest.importorskip("traceability.codes")
    t = province.t
    items = t["settlement_items"].merge(
        t["settlements"][["settlement_id", "patient_id", "institution_id", "settled_at"]]
    )
    items = items[items["item_type"] == "drug"]
    first: dict[str, tuple[str, str]] = {}
    for row in items.sort_values("settled_at").itertuples():
        for raw in row.trace_codes or []:
            tc = codes.try_parse_trace_code(raw)
            if isinstance(tc, codes.TraceCode):
                first.setdefault(tc.canonical, (row.patient_id, row.institution_id))
    for hub in province.truth["flags"].query("pattern == 'resale_hub'")["entity_id"]:
        sold = items[items["institution_id"] == hub]
        resold = [
            raw
            for row in sold.itertuples()
            for raw in row.trace_codes or []
            if first.get(codes.canonical_code(raw), (row.patient_id, hub))[1] != hub
            and first[codes.canonical_code(raw)][0] != row.patient_id
        ]
        assert len(resold) >= 3, hub


def test_anomalous_institutions_stand_out_from_their_peers(province: Province) -> None:
    t = province.t
    s = t["settlements"].merge(t["institutions"], on="institution_id")
    hour = s["settled_at"].dt.hour
    s = s.assign(night=(hour >= 22) | (hour < 6))
    night = s.groupby("institution_id")["night"].mean()
    inst = t["institutions"].set_index("institution_id")
    for iid in province.truth["flags"].query("pattern == 'anomalous_institution'")["entity_id"]:
        peers = inst[
            (inst["kind"] == inst.loc[iid, "kind"])
            & (inst["region_code"] == inst.loc[iid, "region_code"])
        ].index
        peers = [p for p in peers if p != iid and p in night.index]
        assert night[iid] > 3 * max(night[peers].max(), 0.01), iid


def test_labels_arrive_late_and_agree_with_truth(province: Province) -> None:
    labels = province.t["labels"]
    assert set(labels["label"]) == {0, 1}
    truth = set(
        zip(
            province.truth["flags"]["entity_type"],
            province.truth["flags"]["entity_id"],
            province.truth["flags"]["pattern"],
            strict=True,
        )
    )
    truth_entities = {(a, b) for a, b, _ in truth}
    for row in labels.itertuples():
        if row.label == 1:
            assert (row.entity_type, row.entity_id, row.pattern) in truth
        else:
            assert (row.entity_type, row.entity_id) not in truth_entities
    share = labels.loc[labels["label"] == 1, ["entity_type", "entity_id"]].drop_duplicates().shape[
        0
    ] / len(truth_entities)
    assert 0.15 < share < 0.45
    s = province.t["settlements"].set_index("settlement_id")["settled_at"]
    sett = labels[labels["entity_type"] == "settlement"]
    lag = sett["decided_at"].to_numpy() - s.loc[sett["entity_id"]].to_numpy()
    assert (lag >= np.timedelta64(20, "D")).all()
    assert (lag <= np.timedelta64(90, "D")).all()
