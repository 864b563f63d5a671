"""Scorer server processes for the tests that need real ones (concurrency, faults).

``start_scorer`` runs uvicorn over a store in a child process (``workers`` > 1: uvicorn's
supervisor with that many worker processes) and waits until ``/readyz`` answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from conftest import bearer

from serve.store import create_store_engine, upgrade
from traceability.store import drugs, products

PRODUCT = "8100001"
"""The product code of drug ``D1`` (24 units a pack) in the stores these tests make."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Scorer:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=20)


def start_scorer(
    store_url: str,
    data_dir: Path,
    *,
    workers: int = 1,
    port: int | None = None,
    cli: bool = False,
    env: dict[str, str] | None = None,
) -> Scorer:
    """``cli``: run ``fundguard serve`` (as in production) rather than uvicorn itself;
    ``env``: more environment variables for the server."""
    env = {
        **os.environ,
        "FUNDGUARD_DATABASE_URL": store_url,
        "FUNDGUARD_DATA_DIR": str(data_dir),
        **(env or {}),
    }
    port = port or free_port()
    if cli:
        fundguard = str(Path(sys.executable).parent / "fundguard")
        command = [fundguard, "serve", "--port", str(port), "--log-level", "warning"]
    else:
        command = [
            sys.executable, "-m", "uvicorn", "serve.app:app_from_environment", "--factory",
            "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
    if workers > 1:
        command += ["--workers", str(workers)]
    scorer = Scorer(subprocess.Popen(command, env=env), f"http://127.0.0.1:{port}")
    wait_ready(scorer)
    return scorer


@contextmanager
def scorers(store_url: str, data_dir: Path, n: int = 2) -> Iterator[list[str]]:
    """``n`` scorer processes over one store, stopped on the way out; their URLs."""
    started: list[Scorer] = []
    try:
        for _ in range(n):
            started.append(start_scorer(store_url, data_dir))
        yield [s.url for s in started]
    finally:
        for scorer in started:
            scorer.stop()


def wait_ready(scorer: Scorer, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{scorer.url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if scorer.process.poll() is not None:
            raise RuntimeError(f"the scorer exited with {scorer.process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("the scorer did not become ready")
        time.sleep(0.1)


def code(n: int) -> str:
    """The n-th 20-digit code of product ``D1``."""
    return f"{PRODUCT}{n:09d}0000"


def settlement(
    settlement_id: str,
    pack: int,
    *,
    at: str | datetime = "2025-03-01T10:00:00+08:00",
    institution: str = "P001",
    patient: str | None = None,
    doctor: str | None = None,
    fund_paid: str = "5.00",
) -> dict[str, object]:
    """A pharmacy settlement of one pack of ``D1`` (at ``P001``, by a patient of its own,
    unless told otherwise)."""
    body: dict[str, object] = {
        "settlement_id": settlement_id,
        "institution_id": institution,
        "patient": {
            "patient_id": patient or f"U{settlement_id}",
            "gender": "M",
            "birth_date": "1970-01-01",
        },
        "settled_at": at,
        "visit_type": "pharmacy",
        "total_amount": "10.00",
        "fund_paid": fund_paid,
        "items": [
            {
                "line_no": 1,
                "item_type": "drug",
                "item_code": "D1",
                "quantity": 24,
                "unit_price": "0.40",
                "amount": "9.60",
                "trace_codes": [code(pack)],
            }
        ],
    }
    if doctor:
        body["doctor_id"] = doctor
    return body


def purchases(packs: range) -> list[dict[str, str]]:
    """``P001`` receives the packs ``packs``."""
    return [
        {
            "trace_code": code(n),
            "event_type": "purchase",
            "institution_id": "P001",
            "event_at": "2025-02-01T09:00:00+08:00",
        }
        for n in packs
    ]


def prepare_store(store_url: str) -> dict[str, str]:
    """The store at ``store_url`` migrated, with drug ``D1`` (product :data:`PRODUCT`, 24
    units a pack), and the headers of a new settlement key."""
    upgrade(store_url)
    engine = create_store_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                drugs.insert(), [{"drug_code": "D1", "generic_name": "D1", "pack_units": 24}]
            )
            conn.execute(products.insert(), [{"product_code": PRODUCT, "drug_code": "D1"}])
        return bearer(engine, "settlement")
    finally:
        engine.dispose()
