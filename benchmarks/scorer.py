"""`POST /v1/score` under load, beside a bare endpoint that only parses the same request.

For each store (SQLite in a temp folder, PostgreSQL in a fresh database) it fills the
ledger with a realistic number of settled codes, starts the scorer (uvicorn, one worker),
and sends settlements of 10 drug lines with one code each (all purchased, none sold
before) from 1 and from 16 concurrent clients; then the same requests to the bare app
(FastAPI parsing `SettlementIn`, answering a constant) in the same run. Prints
settlements/s and p50/p99 latency for each.

    .venv/bin/python benchmarks/scorer.py [--requests 3000] [--ledger 1000000] [--stores sqlite postgresql]
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


def prepare_store(url: str, ledger: int, requests: int) -> tuple[int, dict[str, str]]:
    """Catalog, a ledger of ``ledger`` settled codes, and purchases of the codes to be sold."""
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
        wanted = range(base, base + requests * 10 * 4)
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


async def load(
    port: int, bodies: list[dict[str, object]], concurrency: int, headers: dict[str, str]
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30, headers=headers
    ) as client:

        async def worker() -> None:
            for b in queue:
                t0 = time.perf_counter()
                response = await client.post("/v1/score", json=b)
                latencies.append(time.perf_counter() - t0)
                if response.status_code != 200:
                    raise RuntimeError(response.text)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def report(label: str, seconds: float, latencies: list[float]) -> str:
    q = statistics.quantiles(latencies, n=100)
    return (
        f"{label:<34}{len(latencies) / seconds:>10,.0f}/s{q[49] * 1000:>9.2f}{q[98] * 1000:>9.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--ledger", type=int, default=1_000_000)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    print(f"{'':<34}{'throughput':>12}{'p50 ms':>9}{'p99 ms':>9}")
    with tempfile.TemporaryDirectory() as tmp:
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
            base, headers = prepare_store(url, args.ledger, args.requests)
            env = {
                **os.environ,
                "FUNDGUARD_DATABASE_URL": url,
                "FUNDGUARD_DATA_DIR": tmp,
                "PYTHONPATH": f"{tmp}:{os.getcwd()}",
            }
            ports = {"scorer": free_port(), "bare": free_port()}
            servers = {
                "scorer": start(
                    ["serve.app:app_from_environment", "--factory"], env, ports["scorer"]
                ),
                "bare": start(["bare_app:app"], env, ports["bare"]),
            }
            try:
                offset = 0
                for concurrency in (1, 16):
                    for kind in ("bare", "scorer"):
                        bodies = [body(offset + i, base) for i in range(args.requests)]
                        seconds, latencies = asyncio.run(
                            load(ports[kind], bodies, concurrency, headers)
                        )
                        print(
                            report(f"{store} {kind} x{concurrency}", seconds, latencies), flush=True
                        )
                    offset += args.requests
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
