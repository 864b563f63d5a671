"""Point-in-time features: batch and online give the same vector; nothing later leaks in;
a reversal counts from its time on; peer groups fall back when too small."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import Connection, Engine, insert

from features.batch import open_history
from features.featureset import FeatureSet
from features.institution_features import (
    INSTITUTION_FEATURES,
    institution_features,
    peer_groups,
    peer_z_scores,
)
from features.settlement import LineView, SettlementView
from features.settlement_features import (
    SETTLEMENT_FEATURES,
    online_settlement_vector,
    settlement_features,
)
from features.store import (
    HistoryLine,
    compute_item_reference,
    load_item_reference,
    record_settlement,
    reverse_settlement,
)
from serve.store import create_store_engine, upgrade
from traceability.store import drugs

CST = timezone(timedelta(hours=8))
COLUMNS = list(SETTLEMENT_FEATURES.columns)


# ------------------------------------------------------------------ helpers


def _views(con: duckdb.DuckDBPyConnection) -> Iterator[tuple[datetime, int, Any]]:
    """Every settlement (as the scorer sees it) and every reversal, with its time."""
    items: dict[str, list[LineView]] = {}
    for r in con.sql(
        "SELECT settlement_id, line_no, item_type, item_code, quantity, unit_price, amount,"
        " coalesce(trace_codes, []) AS trace_codes, coalesce(split_sale, false) AS split_sale"
        " FROM settlement_items ORDER BY settlement_id, line_no"
    ).fetchall():
        items.setdefault(r[0], []).append(
            LineView(r[1], r[2], r[3], Decimal(r[4]), r[6], r[5], tuple(r[7]), bool(r[8]))
        )
    for r in con.sql(
        "SELECT s.settlement_id, s.institution_id, s.patient_id, p.gender, p.birth_date,"
        " s.settled_at, s.visit_type, s.admit_date, s.discharge_date, s.diagnosis_code,"
        " s.doctor_id, s.total_amount, s.fund_paid"
        " FROM settlements s JOIN patients p USING (patient_id)"
    ).fetchall():
        yield (
            r[5],
            1,
            SettlementView(
                settlement_id=r[0], institution_id=r[1], patient_id=r[2], patient_gender=r[3],
                birth_date=r[4], settled_at=r[5], visit_type=r[6],
                lines=tuple(items.get(r[0], ())), admit_date=r[7], discharge_date=r[8],
                diagnosis_code=r[9], doctor_id=r[10], total_amount=r[11], fund_paid=r[12],
            ),
        )  # fmt: skip
    for sid, at in con.sql("SELECT settlement_id, reversed_at FROM reversals").fetchall():
        yield at, 0, sid


def _record(conn: Connection, view: SettlementView) -> None:
    record_settlement(
        conn,
        settlement_id=view.settlement_id,
        patient_id=view.patient_id,
        institution_id=view.institution_id,
        settled_at=view.settled_at,
        lines=[HistoryLine(x.line_no, x.item_type, x.item_code, x.quantity) for x in view.lines],
        admit_date=view.admit_date,
        discharge_date=view.discharge_date,
        diagnosis_code=view.diagnosis_code,
        visit_type=view.visit_type,
        total_amount=view.total_amount,
        fund_paid=view.fund_paid,
    )


def _load_catalog(con: duckdb.DuckDBPyConnection, conn: Connection, reference: pa.Table) -> None:
    rows = con.sql(f"SELECT {', '.join(c.name for c in drugs.columns)} FROM drugs").to_arrow_table()  # noqa: S608
    conn.execute(insert(drugs), rows.to_pylist())
    load_item_reference(conn, reference)


@pytest.fixture(scope="module")
def history(province: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = open_history(province, memory_limit="1GB")
    try:
        yield con
    finally:
        con.close()


@pytest.fixture(scope="module")
def batch_frame(history: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return settlement_features(history)


# ------------------------------------------------------------------ feature sets


def test_feature_set_fingerprint_names_its_columns() -> None:
    base = FeatureSet("settlement", "1", ("a", "b"))
    assert base.tag == "settlement@1"
    assert len(base.fingerprint) == 12
    assert base.fingerprint != FeatureSet("settlement", "1", ("b", "a")).fingerprint
    assert base.fingerprint != FeatureSet("settlement", "2", ("a", "b")).fingerprint
    assert FeatureSet.from_dict(base.to_dict()) == base
    with pytest.raises(ValueError, match="fingerprint"):
        FeatureSet.from_dict({**base.to_dict(), "fingerprint": "000000000000"})
    assert len(set(SETTLEMENT_FEATURES.columns)) == len(SETTLEMENT_FEATURES.columns)
    assert len(set(INSTITUTION_FEATURES.columns)) == len(INSTITUTION_FEATURES.columns)


# ------------------------------------------------------------------ batch


def test_batch_frame_is_one_finite_row_per_settlement_in_time_order(
    history: duckdb.DuckDBPyConnection, batch_frame: pd.DataFrame
) -> None:
    n = history.sql("SELECT count(*) FROM settlements").fetchall()[0][0]
    assert len(batch_frame) == n
    assert batch_frame["settlement_id"].is_unique
    assert list(batch_frame.columns[:4]) == [
        "settlement_id",
        "institution_id",
        "patient_id",
        "settled_at",
    ]
    assert batch_frame["settled_at"].is_monotonic_increasing
    values = batch_frame[COLUMNS]
    assert (values.dtypes == np.float64).all()
    assert np.isfinite(values.to_numpy()).all()


def test_inflated_settlements_stand_out_on_prices_and_quantities(
    province: Path, batch_frame: pd.DataFrame
) -> None:
    truth = pd.read_parquet(province / "truth" / "flags.parquet")
    inflated = set(truth.loc[truth["pattern"] == "anomalous_settlement", "entity_id"])
    assert inflated
    planted = batch_frame["settlement_id"].isin(inflated)
    ratio = batch_frame["price_ratio_max"]
    assert ratio[planted].min() > ratio[~planted].quantile(0.99)
    assert batch_frame.loc[planted, "service_quantity_ratio_max"].median() > 10


# ------------------------------------------------------------------ batch = online


@pytest.mark.slow
def test_online_vectors_equal_the_batch_features_replayed_in_time_order(
    province: Path, history: duckdb.DuckDBPyConnection, batch_frame: pd.DataFrame, tmp_path: Path
) -> None:
    """The province recorded into a fresh store in time order (reversals at their time);
    each settlement's online vector, taken just before it is recorded, is its batch row."""
    url = f"sqlite:///{tmp_path / 'online.db'}"
    upgrade(url)
    engine = create_store_engine(url)
    reference = compute_item_reference(history)
    online: dict[str, np.ndarray] = {}
    try:
        with engine.begin() as conn:
            _load_catalog(history, conn, reference)
            events = sorted(
                _views(history),
                key=lambda e: (e[0], e[1], e[2] if e[1] == 0 else e[2].settlement_id),
            )
            for _at, kind, what in events:
                if kind == 0:
                    reverse_settlement(conn, settlement_id=what, reversed_at=_at)
                    continue
                online[what.settlement_id] = online_settlement_vector(conn, what)
                _record(conn, what)
    finally:
        engine.dispose()
    batch = batch_frame.set_index("settlement_id")[COLUMNS]
    got = np.vstack([online[s] for s in batch.index])
    want = batch.to_numpy()
    close = np.isclose(got, want, rtol=1e-9, atol=1e-9)
    bad = [
        (batch.index[i], COLUMNS[j], want[i, j], got[i, j])
        for i, j in zip(*np.nonzero(~close), strict=True)
    ]
    assert not bad, f"{len(bad)} values differ, e.g. {bad[:5]}"


# ------------------------------------------------------------------ point in time


def _tiny_province(folder: Path, source: Path, keep: list[str]) -> None:
    """A copy of ``source`` holding only the settlements ``keep`` (and their lines)."""
    folder.mkdir()
    for f in source.glob("*.parquet"):
        shutil.copy(f, folder / f.name)
    for table in ("settlements", "settlement_items", "reversals"):
        frame = pd.read_parquet(source / f"{table}.parquet")
        frame[frame["settlement_id"].isin(keep)].to_parquet(folder / f"{table}.parquet")


def test_a_later_settlement_does_not_change_an_earlier_ones_features(
    province: Path,
    history: duckdb.DuckDBPyConnection,
    batch_frame: pd.DataFrame,
    tmp_path: Path,
) -> None:
    """Cut the history after a busy patient's settlement: its features are the same."""
    visits = batch_frame.groupby("patient_id")["settlement_id"].transform("size")
    patient = batch_frame.loc[visits.idxmax(), "patient_id"]
    mine = batch_frame[batch_frame["patient_id"] == patient]
    cut = mine.iloc[len(mine) // 2]
    keep = batch_frame.loc[batch_frame["settled_at"] <= cut["settled_at"], "settlement_id"]
    _tiny_province(tmp_path / "cut", province, list(keep))
    reference = compute_item_reference(history)
    con = open_history(tmp_path / "cut")
    try:
        early = settlement_features(con, reference=reference).set_index("settlement_id")
    finally:
        con.close()
    full = batch_frame.set_index("settlement_id")
    assert early.loc[mine["settlement_id"][: len(mine) // 2 + 1], COLUMNS].equals(
        full.loc[mine["settlement_id"][: len(mine) // 2 + 1], COLUMNS]
    )
    assert full.loc[mine["settlement_id"].iloc[-1], "p_visits_365d"] > 0


def _view(sid: str, at: datetime, amount: str, *, institution: str = "H1") -> SettlementView:
    return SettlementView(
        settlement_id=sid,
        institution_id=institution,
        patient_id="U1",
        patient_gender="F",
        birth_date=date(1960, 5, 1),
        settled_at=at,
        visit_type="pharmacy",
        lines=(LineView(1, "drug", "HV1", Decimal(30), Decimal(amount), Decimal(amount) / 30),),
        total_amount=Decimal(amount),
        fund_paid=Decimal(amount) / 2,
    )


def test_a_reversal_counts_from_its_time_on(store: Engine) -> None:
    """A refunded settlement counts for settlements before its reversal, not after."""
    t0 = datetime(2025, 3, 1, 9, 0, tzinfo=CST)
    with store.begin() as conn:
        conn.execute(
            insert(drugs),
            [
                {"drug_code": "HV1", "generic_name": "x", "pack_units": 30,
                 "max_units_per_day": Decimal(1), "high_value": True},
            ],
        )  # fmt: skip
        reference = pa.table(
            {
                "item_type": ["drug"],
                "item_code": ["HV1"],
                "ref_unit_price": [Decimal("10.0000")],
                "ref_quantity": [Decimal("30.000")],
                "n_lines": [5],
            }
        )
        load_item_reference(conn, reference)
        _record(conn, _view("S1", t0, "300.00"))
        reverse_settlement(conn, settlement_id="S1", reversed_at=t0 + timedelta(days=10))
        index = {c: i for i, c in enumerate(COLUMNS)}

        def at(days: float) -> np.ndarray:
            return online_settlement_vector(
                conn, _view("S2", t0 + timedelta(days=days), "600.00", institution="H2")
            )

        before, after = at(5), at(10)
        assert before[index["p_visits_30d"]] == 1
        assert before[index["p_amount_30d"]] == pytest.approx(300.0)
        assert before[index["p_fund_paid_30d"]] == pytest.approx(150.0)
        assert before[index["p_visits_here_365d"]] == 0
        assert before[index["p_days_since_previous"]] == pytest.approx(5.0)
        # 30 units earlier and 30 now of a 1-a-day drug: 60 / (1 x 30 days)
        assert before[index["p_high_value_supply_ratio_30d"]] == pytest.approx(2.0)
        assert before[index["price_ratio_max"]] == pytest.approx(2.0)  # 20 yuan vs 10
        assert after[index["p_visits_30d"]] == 0  # reversed at that very instant
        assert after[index["p_amount_365d"]] == 0
        assert after[index["p_high_value_supply_ratio_30d"]] == pytest.approx(1.0)
        assert after[index["p_days_since_previous"]] == 365


def test_the_settlement_itself_and_later_ones_never_count(store: Engine) -> None:
    t0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    with store.begin() as conn:
        _record(conn, _view("S1", t0, "100.00"))
        _record(conn, _view("S3", t0 + timedelta(days=2), "100.00"))
        vector = online_settlement_vector(conn, _view("S2", t0, "100.00"))  # same instant
        assert vector[COLUMNS.index("p_visits_365d")] == 0
        vector = online_settlement_vector(conn, _view("S2", t0 + timedelta(days=1), "100.00"))
        assert vector[COLUMNS.index("p_visits_365d")] == 1
        assert vector[COLUMNS.index("p_visits_here_365d")] == 1


# ------------------------------------------------------------------ institutions


def test_peer_groups_fall_back_to_coarser_groups_when_small() -> None:
    rows = (
        [("pharmacy", 0, "330102")] * 5
        + [("pharmacy", 0, "330106")] * 2
        + [("hospital", 3, "330102")] * 2
        + [("hospital", 2, "330106")] * 3
    )
    frame = pd.DataFrame(rows, columns=["kind", "level", "region_code"])
    groups = peer_groups(frame)
    assert list(groups["peer_group"]) == (
        ["pharmacy|0|330102"] * 5 + ["pharmacy|0"] * 2 + ["hospital"] * 5
    )
    assert list(groups["peer_group_level"]) == (
        ["kind_level_region"] * 5 + ["kind_level"] * 2 + ["kind"] * 5
    )


def test_peer_z_scores_are_robust_and_within_the_group() -> None:
    values = pd.DataFrame({"x": [1.0, 1.1, 0.9, 1.0, 5.0, 100.0, 100.0]})
    groups = pd.Series(["a"] * 5 + ["b"] * 2)
    z = peer_z_scores(values, groups)["x"]
    assert z.iloc[4] == 10.0  # far from its peers (clipped)
    assert abs(z.iloc[0]) < 1
    assert (z.iloc[5:] == 0).all()  # identical peers: nobody stands out


def test_anomalous_institutions_stand_out_from_their_peers_and_big_ones_do_not(
    province: Path, history: duckdb.DuckDBPyConnection
) -> None:
    frame = institution_features(history)
    assert list(frame.columns[6:]) == list(INSTITUTION_FEATURES.columns)
    assert np.isfinite(frame[list(INSTITUTION_FEATURES.columns)].to_numpy()).all()
    truth = pd.read_parquet(province / "truth" / "flags.parquet")
    benign = pd.read_parquet(province / "truth" / "benign.parquet")
    anomalous = set(truth.loc[truth["pattern"] == "anomalous_institution", "entity_id"])
    big = set(benign.loc[benign["lookalike_of"] == "anomalous_institution", "entity_id"])
    assert anomalous
    assert big
    behaviour = ["z_price_index", "z_night_share", "z_other_city_patient_share"]
    strangeness = frame[behaviour].abs().max(axis=1)
    planted = frame["institution_id"].isin(anomalous)
    assert strangeness[planted].min() > strangeness[~planted].max()
    hubs = set(truth.loc[truth["pattern"] == "resale_hub", "entity_id"])
    share = frame.set_index("institution_id")["dispensed_elsewhere_share"]
    assert share[sorted(hubs)].min() > share.drop(sorted(hubs)).max()


def test_institution_features_before_a_time_use_only_the_settlements_before_it(
    history: duckdb.DuckDBPyConnection,
) -> None:
    until = datetime(2025, 4, 1, tzinfo=CST)
    early = institution_features(history, until=until).set_index("institution_id")
    counts = history.sql(
        "SELECT institution_id, count(*) FROM settlements WHERE settled_at < $u GROUP BY 1",
        params={"u": until},
    ).fetchall()
    for institution_id, n in counts:
        assert early.loc[institution_id, "log_settlements"] == pytest.approx(np.log1p(n))
