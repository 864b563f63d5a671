"""Faults during a load run: the store restarted, a worker killed with SIGKILL.

A load of settlements racing for packs (three settlements want each pack) runs through
real scorer processes while the fault strikes. The settlement system's client retries a
settlement until it gets an answer, as it must. After the run:

- every settlement has exactly one stored decision, and its answer is the stored one;
- asking again gives the same bytes;
- each pack went to exactly one settlement (no code spent twice, none lost);
- the fault really struck mid-run (some requests failed and were retried).

The PostgreSQL restart runs against a private cluster made for the test (initdb in a
temporary folder, on a port of its own), so that the shared server other tests use is
never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from scorer_processes import (
    code,
    free_port,
    prepare_store,
    purchases,
    settlement,
    start_scorer,
)
from sqlalchemy import func, select

from serve.store import create_store_engine
from serve.tables import decisions
from traceability.store import ledger_entries

PACKS = 60
RIVALS = 3
CLIENTS = 8


@dataclass
class LoadRun:
    """Answers by settlement, and how many attempts failed on the way (retried)."""

    answers: dict[str, bytes] = field(default_factory=dict)
    failed_attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_load(url: str, headers: dict[str, str], fault: Callable[[], None]) -> LoadRun:
    """Every settlement sent by one of ``CLIENTS`` clients and retried until answered;
    ``fault`` strikes once a third of the settlements are answered."""
    wanted = [(f"S{pack}-{rival}", pack) for rival in range(RIVALS) for pack in range(PACKS)]
    run = LoadRun()
    struck = threading.Event()

    def send(i: int) -> None:
        settlement_id, pack = wanted[i]
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            while True:
                try:
                    answer = client.post("/v1/score", json=settlement(settlement_id, pack))
                    if answer.status_code == 200:
                        break
                    assert answer.status_code == 503, answer.text  # the store is down: retry
                except httpx.TransportError:
                    pass  # the connection broke: retry the same settlement
                with run.lock:
                    run.failed_attempts += 1
                assert time.monotonic() < deadline, f"{settlement_id} never answered"
                time.sleep(0.05)
        with run.lock:
            run.answers[settlement_id] = answer.content
            if len(run.answers) == len(wanted) // 3 and not struck.is_set():
                struck.set()
                threading.Thread(target=fault).start()
        time.sleep(0.01)  # keep the load going for as long as the fault takes to strike

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(send, range(len(wanted))))
    assert struck.is_set()
    return run


def check_after(run: LoadRun, url: str, store_url: str, headers: dict[str, str]) -> None:
    assert len(run.answers) == PACKS * RIVALS
    winners = Counter(
        sid.split("-")[0] for sid, body in run.answers.items() if b'"decision":"pass"' in body
    )
    assert winners == {f"S{pack}": 1 for pack in range(PACKS)}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for sid, body in list(run.answers.items())[::7]:
            pack = int(sid[1:].split("-")[0])
            assert client.post("/v1/score", json=settlement(sid, pack)).content == body
    engine = create_store_engine(store_url)
    try:
        with engine.connect() as conn:
            stored = {
                r.settlement_id: r.response
                for r in conn.execute(select(decisions.c.settlement_id, decisions.c.response))
            }
            per_code = Counter(conn.execute(select(ledger_entries.c.canonical_code)).scalars())
            assert conn.execute(select(func.count()).select_from(decisions)).scalar() == len(
                run.answers
            )
    finally:
        engine.dispose()
    assert {sid: body.decode() for sid, body in run.answers.items()} == stored
    assert per_code == {code(n): 1 for n in range(PACKS)}


@dataclass
class Cluster:
    url: str
    data: Path
    run_as: list[str]
    pg_ctl: Path

    def restart(self) -> None:
        subprocess.run(
            [*self.run_as, str(self.pg_ctl), "-D", str(self.data), "-m", "fast", "-w", "restart"],
            check=True,
            capture_output=True,
        )


@pytest.fixture
def private_postgres() -> Iterator[Cluster]:
    """A PostgreSQL cluster of the test's own (the machine's PostgreSQL binaries)."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    assert binaries, "PostgreSQL server binaries not found under /usr/lib/postgresql"
    bin_dir = binaries[-1]
    root = Path(tempfile.mkdtemp(prefix="fundguard-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        shutil.chown(root, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    port = free_port()
    subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
         "--no-sync"],
        check=True, capture_output=True,
    )  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
         str(root / "log"), "-w", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield Cluster(
            url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
            data=data,
            run_as=run_as,
            pg_ctl=bin_dir / "pg_ctl",
        )
    finally:
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_restarted_during_a_load_run(private_postgres: Cluster, tmp_path: Path) -> None:
    headers = prepare_store(private_postgres.url)
    scorer = start_scorer(private_postgres.url, tmp_path, workers=2)
    try:
        assert (
            httpx.post(
                f"{scorer.url}/v1/trace-events", json=purchases(range(PACKS)), headers=headers
            ).status_code
            == 200
        )
        run = run_load(scorer.url, headers, private_postgres.restart)
        check_after(run, scorer.url, private_postgres.url, headers)
    finally:
        scorer.stop()
    assert run.failed_attempts > 0, "the restart struck between requests: nothing was tested"


@pytest.mark.slow
def test_the_scorer_killed_mid_request(store_url: str, tmp_path: Path) -> None:
    """SIGKILL strikes the scorer process while it holds several requests (eight clients
    keep it busy); it is started again on the same port, and the clients' retries go on."""
    headers = prepare_store(store_url)
    scorers = [start_scorer(store_url, tmp_path)]
    port = int(scorers[0].url.rsplit(":", 1)[1])

    def kill_and_restart() -> None:
        scorers[0].process.send_signal(signal.SIGKILL)
        scorers[0].process.wait(timeout=10)
        scorers.append(start_scorer(store_url, tmp_path, port=port))

    try:
        httpx.post(
            f"{scorers[0].url}/v1/trace-events", json=purchases(range(PACKS)), headers=headers
        )
        run = run_load(scorers[0].url, headers, kill_and_restart)
        check_after(run, scorers[0].url, store_url, headers)
        assert scorers[0].process.returncode == -signal.SIGKILL
    finally:
        for scorer in scorers:
            scorer.stop()
    assert run.failed_attempts > 0, "the scorer died idle: nothing was tested"
