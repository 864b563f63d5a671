"""`POST /v1/score` under load, beside a bare endpoint that only parses the same request.

The scorer runs as in production: the whole rule base in force, the champion model (a
settlement model trained on a small simulated province and promoted in a temporary MLflow
store, unless ``--no-model``), ``--workers`` uvicorn workers. For each store (SQLite in a
temp folder, PostgreSQL in a fresh database) it fills the ledger with a realistic number
of settled codes and sends settlements of 10 drug lines with one code each (all
purchased, none sold before) from 1 and from 16 concurrent clients; then the same requests
to the bare app (FastAPI parsing `SettlementIn`, answering a constant, same workers) in the
same run. Prints settlements/s and p50/p99 latency for each, and the share of degraded
answers.

``--profile N`` first scores N settlements in-process (no HTTP) under cProfile and prints
where the time goes. ``--soak SECONDS`` then holds 80% of the measured 16-client peak for
that long and counts errors.

    .venv/bin/python benchmarks/scorer.py [--requests 3000] [--ledger 1000000]
        [--stores sqlite postgresql] [--workers 2] [--no-model] [--profile 2000] [--soak 600]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import create_engine, insert, text

from serve.keys import Role, create_key
from serve.store import create_store_engine, upgrade
from traceability.store import drugs, ledger_codes, products, stock_events

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BARE_APP = """
from fastapi import FastAPI
from fastapi.responses import Response
from serve.schemas import SettlementIn
app = FastAPI()
@app.post("/v1/score")
async def score(settlement: SettlementIn) -> Response:
    return Response(b'{"decision":"pass"}', media_type="application/json")
@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def code(n: int) -> str:
    return f"8100001{n:09d}0000"


def body(i: int, base: int) -> dict[str, object]:
    codes = [code(base + i * 10 + k) for k in range(10)]
    return {
        "settlement_id": f"B{i}",
        "institution_id": "P001",
        "patient": {"patient_id": f"U{i % 5000}", "gender": "F", "birth_date": "1965-04-01"},
        "settled_at": "2025-06-01T10:00:00+08:00",
        "visit_type": "pharmacy",
        "total_amount": "240.00",
        "fund_paid": "120.00",
        "items": [
            {
                "line_no": k + 1,
                "item_type": "drug",
                "item_code": "D1",
                "quantity": 24,
                "unit_price": "1.00",
                "amount": "24.00",
                "trace_codes": [c],
            }
            for k, c in enumerate(codes)
        ],
    }


def prepare_store(url: str, ledger: int, settlements: int) -> tuple[int, dict[str, str]]:
    """Catalog, a ledger of ``ledger`` settled codes, and purchases of the codes of the
    ``settlements`` to be sold (10 codes each)."""
    upgrade(url)
    engine = create_store_engine(url)
    base = ledger + 1
    at = datetime(2025, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(drugs), [{"drug_code": "D1", "generic_name": "D1", "pack_units": 24}])
        conn.execute(insert(products), [{"product_code": "8100001", "drug_code": "D1"}])
        for start in range(0, ledger, 50_000):
            conn.execute(
                insert(ledger_codes),
                [
                    {"canonical_code": code(n), "full_units": 24, "split_units": 0}
                    for n in range(start, min(ledger, start + 50_000))
                ],
            )
        wanted = range(base, base + settlements * 10)
        for start in range(0, len(wanted), 50_000):
            conn.execute(
                insert(stock_events),
                [
                    {
                        "institution_id": "P001",
                        "canonical_code": code(n),
                        "event_type": "purchase",
                        "event_at": at + timedelta(seconds=n),
                    }
                    for n in wanted[start : start + 50_000]
                ],
            )
    key = create_key(engine, Role.SETTLEMENT, label="benchmark")
    engine.dispose()
    return base, {"Authorization": f"Bearer {key}"}


def start(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *args, "--port", str(port), "--log-level", "warning"],
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


@dataclass
class Run:
    seconds: float
    latencies: list[float]
    degraded: int = 0
    errors: int = 0


async def load(
    port: int,
    bodies: list[dict[str, object]],
    concurrency: int,
    headers: dict[str, str],
    *,
    rate: float | None = None,
) -> Run:
    """Send ``bodies`` from ``concurrency`` clients, as fast as answered (or at ``rate`` a
    second, when given); a non-200 answer ends a closed-loop run, counts in an open one."""
    run = Run(0.0, [])
    queue = iter(enumerate(bodies))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30, headers=headers
    ) as client:
        started = time.perf_counter()

        async def worker() -> None:
            for i, b in queue:
                if rate is not None:
                    await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
                t0 = time.perf_counter()
                try:
                    response = await client.post("/v1/score", json=b)
                except httpx.HTTPError:
                    run.errors += 1
                    continue
                run.latencies.append(time.perf_counter() - t0)
                if response.status_code != 200:
                    run.errors += 1
                    if rate is None:
                        raise RuntimeError(response.text)
                elif b'"degraded":true' in response.content:
                    run.degraded += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - started
        return run


def report(label: str, run: Run) -> str:
    q = statistics.quantiles(run.latencies, n=100)
    return (
        f"{label:<34}{len(run.latencies) / run.seconds:>10,.0f}/s{q[49] * 1000:>9.2f}"
        f"{q[98] * 1000:>9.2f}{run.degraded:>10}{run.errors:>8}"
    )


def champion(tmp: str) -> str:
    """A tracking URI whose ``champion`` is a settlement model trained on a small province."""
    from features.simulate import simulate
    from models import registry
    from models.supervised import train_on_history

    province = Path(tmp) / "province"
    simulate(province, seed=7, scale="small")
    uri = f"sqlite:///{tmp}/mlflow.db"
    logged = registry.log_training_run(train_on_history(province), tracking_uri=uri, plots={})
    version = registry.register(logged, tracking_uri=uri)
    registry.promote(registry.MODEL_NAME, version, tracking_uri=uri)
    return uri


def profile(url: str, tracking_uri: str | None, n: int, base: int, first: int) -> None:
    """Score ``n`` settlements in this process under cProfile: where the time goes."""
    import cProfile
    import pstats

    from serve import scoring
    from serve.model import ModelInForce
    from serve.schemas import SettlementIn

    engine = create_store_engine(url)
    model = ModelInForce(tracking_uri, model_name="fundguard-settlement", budget_ms=1000)
    model.refresh()
    bodies = [SettlementIn.model_validate(body(first + i, base)) for i in range(n)]
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for settlement in bodies:
        scoring.score(engine, settlement, b"", model=model)
    profiler.disable()
    seconds = time.perf_counter() - started
    engine.dispose()
    print(f"in-process scoring under cProfile: {n / seconds:,.0f} settlements/s")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--ledger", type=int, default=1_000_000)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-model", action="store_true")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tracking_uri = None if args.no_model else champion(tmp)
        print(f"{'':<34}{'throughput':>12}{'p50 ms':>9}{'p99 ms':>9}{'degraded':>10}{'errors':>8}")
        bare_path = Path(tmp) / "bare_app.py"
        bare_path.write_text(BARE_APP)
        for store in args.stores:
            admin = None
            if store == "sqlite":
                url = f"sqlite:///{tmp}/bench.db"
            else:
                admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
                name = f"fundguard_bench_{uuid.uuid4().hex[:8]}"
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
                url = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
            settlements = 2 * args.requests + int(args.soak * 2000) + args.profile
            base, headers = prepare_store(url, args.ledger, settlements)
            if args.profile:
                first = 2 * args.requests + int(args.soak * 2000)  # after the HTTP runs' ids
                profile(url, tracking_uri, args.profile, base, first)
            env = {
                **os.environ,
                "FUNDGUARD_DATABASE_URL": url,
                "FUNDGUARD_DATA_DIR": tmp,
                "PYTHONPATH": f"{tmp}:{os.getcwd()}",
            }
            if tracking_uri:
                env["FUNDGUARD_MLFLOW_TRACKING_URI"] = tracking_uri
            workers = ["--workers", str(args.workers)] if args.workers > 1 else []
            ports = {"scorer": free_port(), "bare": free_port()}
            servers = {
                "scorer": start(
                    ["serve.app:app_from_environment", "--factory", *workers], env, ports["scorer"]
                ),
                "bare": start(["bare_app:app", *workers], env, ports["bare"]),
            }
            try:
                offset = 0
                peak = 0.0
                for concurrency in (1, 16):
                    for kind in ("bare", "scorer"):
                        bodies = [body(offset + i, base) for i in range(args.requests)]
                        run = asyncio.run(load(ports[kind], bodies, concurrency, headers))
                        print(report(f"{store} {kind} x{concurrency}", run), flush=True)
                        if kind == "scorer" and concurrency == 16:
                            peak = len(run.latencies) / run.seconds
                    offset += args.requests
                if args.soak:
                    rate = 0.8 * peak
                    n = int(rate * args.soak)
                    bodies = [body(offset + i, base) for i in range(n)]
                    run = asyncio.run(load(ports["scorer"], bodies, 16, headers, rate=rate))
                    print(
                        report(f"{store} soak {rate:,.0f}/s {args.soak:.0f}s", run)
                        + f"  ({len(run.latencies):,} answered, {run.errors} errors)",
                        flush=True,
                    )
            finally:
                for process in servers.values():
                    process.terminate()
                    process.wait(timeout=10)
                if admin is not None:
                    with admin.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    admin.dispose()


if __name__ == "__main__":
    main()
