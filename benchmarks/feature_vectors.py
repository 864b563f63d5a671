"""Feature timings: the batch settlement and institution features over a province, and the
online settlement vector beside the bare ``window_quantities`` query, in the same run.

Simulates a province (medium unless ``--data`` is given), times
``settlement_features`` and ``institution_features`` (DuckDB), then loads the history into
a fresh SQLite store (patient history, visits, drug catalog, item reference) and times, for
``--samples`` settlements of the last month, ``online_settlement_vector`` and one bare
``window_quantities`` call (the patient's drug lines in 90 days), interleaved. Prints
seconds for batch and p50/p99 microseconds online.

    .venv/bin/python benchmarks/feature_vectors.py [--scale medium] [--data DIR] [--samples 3000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
from sqlalchemy import insert

from features.batch import open_history
from features.institution_features import institution_features
from features.settlement import LineView, SettlementView
from features.settlement_features import online_settlement_vector, settlement_features
from features.store import (
    compute_item_reference,
    load_history,
    load_item_reference,
    window_quantities,
)
from serve.store import create_store_engine, upgrade
from traceability.store import drugs


def percentiles(us: list[float]) -> str:
    a = np.asarray(us)
    return f"p50 {np.percentile(a, 50):7.1f} us  p99 {np.percentile(a, 99):7.1f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default="medium")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--samples", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from features.simulate import simulate

            data = Path(tmp) / "province"
            simulate(data, seed=args.seed, scale=args.scale)
        con = open_history(data, memory_limit="2GB")
        n = con.sql("SELECT count(*) FROM settlements").fetchall()[0][0]
        lines = con.sql("SELECT count(*) FROM settlement_items").fetchall()[0][0]
        started = time.perf_counter()
        frame = settlement_features(con)
        batch_s = time.perf_counter() - started
        started = time.perf_counter()
        inst = institution_features(con)
        inst_s = time.perf_counter() - started
        print(f"history: {n} settlements, {lines} lines, {len(inst)} institutions")
        print(f"batch settlement_features:   {batch_s:6.2f} s ({n / batch_s:,.0f} settlements/s)")
        print(f"batch institution_features:  {inst_s:6.2f} s")

        url = f"sqlite:///{Path(tmp) / 'store.db'}"
        upgrade(url)
        engine = create_store_engine(url)
        with engine.begin() as conn:
            cols = ", ".join(c.name for c in drugs.columns)
            conn.execute(
                insert(drugs),
                con.sql(f"SELECT {cols} FROM drugs").to_arrow_table().to_pylist(),  # noqa: S608
            )
            load_item_reference(conn, compute_item_reference(con))
            load_history(con, conn)
        last = frame["settled_at"].max() - timedelta(days=30)
        sample = frame[frame["settled_at"] > last].sample(
            min(args.samples, int((frame["settled_at"] > last).sum())), random_state=0
        )
        ids = sample["settlement_id"].tolist()
        con.register("sample_ids", sample[["settlement_id"]])
        items: dict[str, list[LineView]] = {}
        for r in con.sql(
            "SELECT settlement_id, line_no, item_type, item_code, quantity, unit_price, amount,"
            " coalesce(trace_codes, []), coalesce(split_sale, false) FROM settlement_items"
            " WHERE settlement_id IN (SELECT settlement_id FROM sample_ids)"
        ).fetchall():
            items.setdefault(r[0], []).append(
                LineView(r[1], r[2], r[3], Decimal(r[4]), r[6], r[5], tuple(r[7]), bool(r[8]))
            )
        views = {}
        for r in con.sql(
            "SELECT s.settlement_id, s.institution_id, s.patient_id, p.gender, p.birth_date,"
            " s.settled_at, s.visit_type, s.admit_date, s.discharge_date, s.total_amount,"
            " s.fund_paid FROM settlements s JOIN patients p USING (patient_id)"
            " WHERE s.settlement_id IN (SELECT settlement_id FROM sample_ids)"
        ).fetchall():
            views[r[0]] = SettlementView(
                settlement_id=r[0], institution_id=r[1], patient_id=r[2], patient_gender=r[3],
                birth_date=r[4], settled_at=r[5], visit_type=r[6],
                lines=tuple(items.get(r[0], ())), admit_date=r[7], discharge_date=r[8],
                total_amount=r[9], fund_paid=r[10],
            )  # fmt: skip
        vector_us: list[float] = []
        bare_us: list[float] = []
        with engine.connect() as conn:
            for sid in ids[:50]:  # warm the statement caches
                online_settlement_vector(conn, views[sid])
            for sid in ids:
                view = views[sid]
                codes = sorted({x.item_code for x in view.lines if x.item_type == "drug"}) or [
                    "none"
                ]
                t0 = time.perf_counter()
                window_quantities(
                    conn,
                    patient_id=view.patient_id,
                    item_type="drug",
                    item_codes=codes,
                    since=view.settled_at - timedelta(days=90),
                    until=view.settled_at,
                )
                t1 = time.perf_counter()
                online_settlement_vector(conn, view)
                t2 = time.perf_counter()
                bare_us.append((t1 - t0) * 1e6)
                vector_us.append((t2 - t1) * 1e6)
        engine.dispose()
        print(f"online, SQLite, {len(ids)} settlements of the last month:")
        print(f"  online_settlement_vector:  {percentiles(vector_us)}")
        print(f"  bare window_quantities:    {percentiles(bare_us)}")


if __name__ == "__main__":
    main()
