"""``/metrics`` of ``fundguard serve --workers 2``: whichever worker answers the scrape, it
counts every worker's decisions (prometheus_client's multiprocess mode).

Each request goes on a new connection, so the two workers share the settlements and the
scrapes; the counts must not depend on which one answers.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from scorer_processes import Scorer, prepare_store, purchases, settlement, start_scorer

pytestmark = pytest.mark.slow
SCRAPES = 20


@pytest.fixture
def headers(sqlite_url: str) -> dict[str, str]:
    """A store with drug ``D1`` and a settlement key."""
    return prepare_store(sqlite_url)


@pytest.fixture
def scorer(sqlite_url: str, tmp_path: Path, headers: dict[str, str]) -> Iterator[Scorer]:
    """``fundguard serve --workers 2`` over the store (made by ``headers``)."""
    started = start_scorer(sqlite_url, tmp_path, workers=2, cli=True)
    try:
        yield started
    finally:
        started.stop()


def send(url: str, headers: dict[str, str], first: int, n: int) -> None:
    """Settlements ``first`` .. ``first + n - 1`` (pack i each), from 8 clients, each on a
    connection of its own; every one must be answered with a decision."""
    assert (
        httpx.post(
            f"{url}/v1/trace-events", json=purchases(range(first, first + n)), headers=headers
        ).status_code
        == 200
    )

    def one(i: int) -> None:
        response = httpx.post(f"{url}/v1/score", json=settlement(f"M{i}", i), headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["decision"] == "pass"

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(first, first + n)))


def scrape(url: str) -> dict[str, float]:
    """The samples of one scrape, on a new connection, by name and labels."""
    text = httpx.get(f"{url}/metrics").text
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def decisions(samples: dict[str, float]) -> float:
    return samples.get("fundguard_decisions_total[('decision', 'pass')]", 0.0)


def workers_of(scorer: Scorer) -> list[psutil.Process]:
    """uvicorn's worker processes (multiprocessing children of the supervisor)."""
    found = []
    for child in psutil.Process(scorer.process.pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie not yet reaped
            continue
    return found


def test_every_scrape_counts_every_workers_decisions(
    scorer: Scorer, headers: dict[str, str]
) -> None:
    send(scorer.url, headers, 0, 40)
    scrapes = [scrape(scorer.url) for _ in range(SCRAPES)]
    assert [decisions(s) for s in scrapes] == [40.0] * SCRAPES
    score_requests = (
        "fundguard_requests_total[('method', 'POST'), ('route', '/v1/score'), ('status', '200')]"
    )
    assert {s[score_requests] for s in scrapes} == {40.0}
    assert {s["fundguard_workers[]"] for s in scrapes} == {2.0}

    # a worker killed outright: uvicorn starts another; its counts stay, its gauge goes
    before = workers_of(scorer)
    assert len(before) == 2
    before[0].send_signal(signal.SIGKILL)
    before[0].wait(timeout=10)
    # the new worker counts once it has built its app; the dead one must not count on
    # (it would read 3 for ever), nor its decisions vanish
    deadline = time.monotonic() + 60
    while True:
        try:
            after = scrape(scorer.url)
        except httpx.TransportError:
            after = {}
        if after.get("fundguard_workers[]") == 2.0:
            break
        assert time.monotonic() < deadline, (
            f"workers gauge stuck at {after.get('fundguard_workers[]')}"
        )
        time.sleep(0.2)
    assert before[0].pid not in {p.pid for p in workers_of(scorer)}
    scrapes = [scrape(scorer.url) for _ in range(SCRAPES)]
    assert [decisions(s) for s in scrapes] == [40.0] * SCRAPES
    assert {s["fundguard_workers[]"] for s in scrapes} == {2.0}
    send(scorer.url, headers, 40, 10)
    assert {decisions(scrape(scorer.url)) for _ in range(SCRAPES)} == {50.0}


def test_both_workers_answer_and_a_worker_leaving_takes_its_gauges(
    sqlite_url: str, tmp_path: Path, headers: dict[str, str]
) -> None:
    """With the directory given by the operator: the files show both workers scoring, the
    scrape is their sum, and workers that stop leave their counters but no live gauge."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    (shared / "counter_1.db").write_bytes(b"left by an earlier run")  # removed at start
    scorer = start_scorer(
        sqlite_url, tmp_path, workers=2, cli=True, env={"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    )
    try:
        sent = 0
        by_pid: dict[int, float] = {}
        while sum(1 for n in by_pid.values() if n > 0) < 2:
            assert sent < 400, f"one worker answered all {sent} settlements: {by_pid}"
            send(scorer.url, headers, sent, 20)
            sent += 20
            by_pid = {
                int(f.stem.rsplit("_", 1)[1]): sum(
                    s.value
                    for metric in MultiProcessCollector.merge([str(f)])
                    for s in metric.samples
                    if s.name == "fundguard_decisions_total"
                )
                for f in shared.glob("counter_*.db")
            }
        assert sum(by_pid.values()) == sent
        assert {decisions(scrape(scorer.url)) for _ in range(SCRAPES)} == {float(sent)}
        assert len(list(shared.glob("gauge_livesum_*.db"))) == 2
    finally:
        scorer.stop()
    assert list(shared.glob("gauge_livesum_*.db")) == []
    assert len(list(shared.glob("counter_*.db"))) == 2
