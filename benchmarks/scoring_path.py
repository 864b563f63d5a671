"""The scorer's hot path in-process (no HTTP): µs and SQL statements per settlement.

A small simulated province (seed 7) is loaded into a fresh store (SQLite in a temp folder,
PostgreSQL in a fresh database) the way ``fundguard load`` does, its ledger padded with
``--ledger`` settled codes, and ``--settlements`` pharmacy settlements of 10 drug lines
(one new code each, every pack purchased by the pharmacy, real catalog drugs, the
province's patients, settled after the history so the patients' windows hold their year)
are scored through ``serve.scoring.score`` with the shipped rule base, the shipped credit
scheme and the champion model (a settlement model trained on that province and promoted
in a temporary MLflow store, unless ``--no-model``).

Beside it, in the same run and on the same connection pool: the bare read transaction
(BEGIN; one SELECT; COMMIT) and the bare write transaction (BEGIN; one INSERT; COMMIT,
which waits for the same durable commit as a decision). Statements are counted with a
SQLAlchemy ``before_cursor_execute`` event (an executemany is one statement, as it is one
round trip). ``--profile`` prints a cProfile of the scoring (top 20 by own time and by
cumulative time); ``--statements`` prints the statements of one settlement.

    .venv/bin/python benchmarks/scoring_path.py [--settlements 1000] [--ledger 300000]
        [--stores sqlite postgresql] [--no-model] [--profile] [--statements]

To measure other code in the same run (the code before a change, say), point
``PYTHONPATH`` at its checkout: the script uses only ``serve.scoring.score`` and the
loading functions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import Engine, create_engine, event, insert, text

from rules.credit import shipped_scheme
from serve import scoring
from serve.loading import load_folder
from serve.model import ModelInForce
from serve.schemas import SettlementIn
from serve.store import Checkpoints, create_store_engine
from traceability.checks import StockEvent
from traceability.ledger import StockEventIn, record_stock_events
from traceability.store import ledger_codes

sys.path.insert(0, str(Path(__file__).parent))
from scorer import POSTGRES_ADMIN, champion  # benchmarks/scorer.py: its champion model

SETTLED: datetime = datetime(2026, 1, 12, 9, 0, tzinfo=UTC)
"""The benchmark's settlements come after the province's year (2025)."""


def pad_ledger(engine: Engine, n: int) -> None:
    """``n`` more settled codes in the ledger (a realistic index to insert into)."""
    with engine.begin() as conn:
        for start in range(0, n, 50_000):
            conn.execute(
                insert(ledger_codes),
                [
                    {"canonical_code": f"7{k:019d}", "full_units": 1, "split_units": 0}
                    for k in range(start, min(n, start + 50_000))
                ],
            )


def requests(province: Path, n: int) -> tuple[list[dict[str, Any]], list[StockEventIn]]:
    """``n`` settlement bodies of 10 drug lines (10 drugs without age or gender limits, a new
    code each) at the province's pharmacies, one for each of its ``n`` patients with the
    most history, and the purchases of their packs."""
    drugs = pd.read_parquet(province / "drugs.parquet").set_index("drug_code")
    unrestricted = drugs[
        drugs.gender_restriction.isna() & drugs.min_age.isna() & drugs.max_age.isna()
    ]
    products = pd.read_parquet(province / "products.parquet")
    products = (
        products[
            (products.product_code.str.len() == 7) & products.drug_code.isin(unrestricted.index)
        ]
        .sort_values("product_code")
        .drop_duplicates("drug_code")
        .reset_index(drop=True)
    )
    pharmacies = sorted(
        pd.read_parquet(province / "institutions.parquet")
        .query("kind == 'pharmacy'")
        .institution_id
    )
    settlements = pd.read_parquet(province / "settlements.parquet")
    patients = pd.read_parquet(province / "patients.parquet").set_index("patient_id")
    busiest = settlements.patient_id.value_counts().index[:n]
    bodies: list[dict[str, Any]] = []
    purchases: list[StockEventIn] = []
    for i in range(n):
        institution = pharmacies[i % len(pharmacies)]
        patient_id = busiest[i % len(busiest)]
        patient = patients.loc[patient_id]
        at = SETTLED + timedelta(seconds=30 * i)
        items = []
        for k in range(10):
            product = products.iloc[(i + k) % len(products)]  # 10 different drugs
            pack = int(drugs.loc[product.drug_code, "pack_units"])
            trace_code = f"{product.product_code}9{i:06d}{k:02d}0000"
            purchases.append(
                StockEventIn(trace_code, StockEvent.PURCHASE, institution, at - timedelta(days=7))
            )
            items.append(
                {
                    "line_no": k + 1,
                    "item_type": "drug",
                    "item_code": product.drug_code,
                    "quantity": pack,
                    "unit_price": "2.00",
                    "amount": f"{2 * pack}.00",
                    "trace_codes": [trace_code],
                }
            )
        total = sum(2 * item["quantity"] for item in items)  # type: ignore[misc]
        bodies.append(
            {
                "settlement_id": f"HP{i:07d}",
                "institution_id": institution,
                "patient": {
                    "patient_id": patient_id,
                    "gender": patient.gender,
                    "birth_date": str(patient.birth_date)[:10],
                },
                "doctor_id": f"DR{i % 40:03d}",
                "settled_at": at.isoformat(),
                "visit_type": "pharmacy",
                "total_amount": f"{total}.00",
                "fund_paid": f"{total // 2}.00",
                "items": items,
            }
        )
    return bodies, purchases


@dataclass
class Counted:
    statements: int = 0
    texts: list[str] | None = None


@contextmanager
def counting(engine: Engine, keep: bool = False) -> Iterator[Counted]:
    """Count the statements ``engine`` sends (and keep their text when ``keep``)."""
    counted = Counted(texts=[] if keep else None)

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counted.statements += 1
        if counted.texts is not None:
            counted.texts.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield counted
    finally:
        event.remove(engine, "before_cursor_execute", before)


def timed(n: int, one: Callable[[int], Any]) -> list[float]:
    """µs of each of ``n`` calls."""
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        one(i)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def bare_transactions(engine: Engine, n: int) -> tuple[list[float], list[float]]:
    """µs of the bare read transaction and of the bare write transaction."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS bench_floor (id INTEGER PRIMARY KEY)")

    def read(_: int) -> None:
        with engine.begin() as conn:
            conn.execute(text("SELECT 1")).scalar()

    def write(i: int) -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO bench_floor (id) VALUES (:id)"), {"id": i})

    timed(50, read)
    return timed(n, read), timed(n, lambda i: write(i + 10_000_000))


@dataclass
class Figures:
    store: str
    read_us: float
    write_us: float
    score_us: float
    score_p99_us: float
    cpu_us: float
    """This process's CPU time a settlement (the store server's, for PostgreSQL, not counted)."""
    statements: float
    outcomes: Counter[str]


def measure(
    store: str,
    url: str,
    province: Path,
    tracking_uri: str | None,
    args: argparse.Namespace,
) -> Figures:
    load_folder(province, url)
    engine = create_store_engine(url, background_checkpoints=True)  # as the scorer's
    checkpoints = Checkpoints(engine).start()
    try:
        pad_ledger(engine, args.ledger)
        warm = 50
        bodies, purchases = requests(province, warm + args.settlements)
        with engine.begin() as conn:
            record_stock_events(conn, purchases)
        settlements = [SettlementIn.model_validate(b) for b in bodies]
        raw = [orjson.dumps(b) for b in bodies]
        model = None
        if tracking_uri is not None:
            model = ModelInForce(tracking_uri, model_name="fundguard-settlement", budget_ms=1000)
            model.refresh()
        credit = None if args.no_credit else shipped_scheme()
        outcomes: Counter[str] = Counter()

        def one(i: int) -> None:
            scored = scoring.score(engine, settlements[i], raw[i], None, model, 0.5, credit)
            outcomes[scored.decision + (" degraded" if scored.degraded else "")] += 1
            for rule_id, action in scored.hits:
                outcomes[f"{rule_id}:{action}"] += 1

        for i in range(warm):
            one(i)
        outcomes.clear()
        read, write = bare_transactions(engine, args.settlements)
        with counting(engine, keep=args.statements) as counted:
            one_of = [warm + i for i in range(args.settlements)]
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
            cpu = time.process_time()
            us = timed(args.settlements, lambda i: one(one_of[i]))
            cpu = time.process_time() - cpu
            if args.profile:
                profiler.disable()
        if args.statements and counted.texts:
            per = len(counted.texts) // args.settlements
            print(f"\n{store}: the statements of one settlement ({per}):")
            for statement in counted.texts[:per]:
                print("  ", statement[:240])
        if args.profile:
            print(f"\n{store}: cProfile of scoring {args.settlements} settlements")
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(20)
            stats.sort_stats("cumulative").print_stats(30)
        return Figures(
            store,
            statistics.median(read),
            statistics.median(write),
            statistics.median(us),
            statistics.quantiles(us, n=100)[98],
            cpu * 1e6 / args.settlements,
            counted.statements / args.settlements,
            outcomes,
        )
    finally:
        checkpoints.stop()
        engine.dispose()


@contextmanager
def fresh_store(store: str, tmp: str) -> Iterator[str]:
    if store == "sqlite":
        yield f"sqlite:///{tmp}/scoring_path.db"
        return
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"fundguard_hot_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settlements", type=int, default=1000)
    parser.add_argument("--ledger", type=int, default=300_000)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--no-model", action="store_true")
    parser.add_argument("--no-credit", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--statements", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tracking_uri = None if args.no_model else champion(tmp)
        province = Path(tmp) / "province"
        if not province.exists():
            from features.simulate import simulate

            simulate(province, seed=7, scale="small")
        for store in args.stores:
            with fresh_store(store, tmp) as url:
                rows.append(measure(store, url, province, tracking_uri, args))
    print(
        f"\nscoring path, {args.settlements} settlements of 10 coded drug lines"
        " (µs: medians of wall time; cpu: this process's CPU a settlement)"
    )
    print(
        f"{'store':<12}{'bare read tx':>14}{'bare write tx':>15}{'score':>10}{'p99':>10}"
        f"{'cpu':>8}{'x write tx':>12}{'statements':>12}  outcomes"
    )
    for f in rows:
        print(
            f"{f.store:<12}{f.read_us:>14,.0f}{f.write_us:>15,.0f}{f.score_us:>10,.0f}"
            f"{f.score_p99_us:>10,.0f}{f.cpu_us:>8,.0f}{f.score_us / f.write_us:>12.1f}"
            f"{f.statements:>12.1f}  "
            + ", ".join(f"{k} {v}" for k, v in sorted(f.outcomes.items()))
        )


if __name__ == "__main__":
    main()
