"""Prometheus metrics of the scorer (``GET /metrics``).

Requests and their latency by route, requests in flight, decisions by outcome, rule hits
by rule, answers given degraded (without the model), repeated requests answered from the
store, and the worker processes serving.

One process: each app has a registry of its own (no module-level state), so tests and
several apps in one process never share counters.

Several worker processes (``fundguard serve --workers N``, N > 1): prometheus_client's
multiprocess mode. ``fundguard serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before the workers start (:func:`multiprocess_directory`); each worker writes
its values to files there, and a scrape, whichever worker answers it, merges every
worker's files (``MultiProcessCollector``): counters and histograms add up over the
workers, including workers that have exited (a counter never goes back); the gauges say
how they combine (``multiprocess_mode``: the live workers' sum). A worker that exits
removes its live gauges (``mark_process_dead``); one killed outright is swept at the
next scrape.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
M = TypeVar("M", Counter, Gauge, Histogram)
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")
_VALUE_FILE = re.compile(r"(counter|gauge_\w+|histogram|summary)_\d+\.db")


def multiprocess_dir() -> Path | None:
    """The directory of the workers' metric files, when several workers share the metrics."""
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fundguard_requests", "HTTP requests answered", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "fundguard_request_seconds", "time to answer a request", ["route", "method"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "fundguard_requests_in_flight", "requests being answered, over the live workers",
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.workers = Gauge(
            "fundguard_workers", "worker processes serving (live ones, over all workers)",
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.decisions = Counter(
            "fundguard_decisions", "settlements answered, by decision", ["decision"],
            registry=self.registry,
        )  # fmt: skip
        self.degraded = Counter(
            "fundguard_degraded_answers", "answers given without the model, by reason",
            ["reason"], registry=self.registry,
        )  # fmt: skip
        self.replayed = Counter(
            "fundguard_replayed_answers", "repeated requests answered from the stored decision",
            registry=self.registry,
        )  # fmt: skip
        self.hits = Counter(
            "fundguard_rule_hits", "rule hits in answers, by rule", ["rule_id", "action"],
            registry=self.registry,
        )  # fmt: skip
        self.workers.set(1)
        self._shared = multiprocess_dir()
        # the children of the labelled metrics, looked up once per metric and label values
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def leave(self) -> None:
        """This worker stops serving (the app's shutdown): with several workers, its live
        gauges are removed (``mark_process_dead``). uvicorn re-raises the stop signal once
        the app has shut down, so no exit hook would run; a worker killed outright is swept
        at the next scrape instead."""
        self.workers.set(0)
        if self._shared is not None:
            mark_process_dead(os.getpid(), str(self._shared))  # type: ignore[no-untyped-call]

    def exposition(self) -> Response:
        """The text exposition: this process's registry, or, with several workers, every
        worker's values merged."""
        if self._shared is None:
            return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4")
        _sweep_dead_workers(self._shared)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self._shared))  # type: ignore[no-untyped-call]
        return Response(generate_latest(merged), media_type="text/plain; version=0.0.4")

    def child(self, metric: M, *values: str) -> M:
        """``metric.labels(*values)``, looked up once per metric and values (prometheus_client
        takes a lock and checks the values on every ``labels`` call)."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def answered(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request answered: its latency and its count, by route, method and status."""
        self.child(self.latency, route, method).observe(seconds)
        self.child(self.requests, route, method, str(status)).inc()


class RequestMetrics:
    """ASGI middleware counting every HTTP request of the app into ``metrics``: requests
    by route, method and status, their latency and the requests in flight.

    A plain ASGI app rather than ``BaseHTTPMiddleware`` (``app.middleware("http")``), which
    runs the rest of the app in a task of its own and wraps the request and the response:
    here the request passes straight through, and only the status of the answer is read
    on its way out. A request that raises before answering is counted as the 500 that
    Starlette's outermost middleware answers for it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_flight = self.metrics.in_flight
        in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            in_flight.dec()
            self.metrics.answered(
                _route(scope), scope["method"], status, time.perf_counter() - started
            )


def _route(scope: Scope) -> str:
    """The template of the route that answered (``/v1/settlements/{settlement_id}/reversal``),
    not the path: one label value per route, whatever the ids. The router leaves it in the
    request's scope."""
    route = scope.get("route")
    return str(getattr(route, "path", None) or "unmatched")


def _sweep_dead_workers(path: Path) -> None:
    """``mark_process_dead`` for workers that died without exiting (SIGKILL, out of
    memory): their live gauges would otherwise count for ever. Their counters stay."""
    pids = {int(m.group(1)) for f in path.iterdir() if (m := _LIVE_GAUGE_FILE.fullmatch(f.name))}
    for pid in pids:
        if not _alive(pid):
            mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextmanager
def multiprocess_directory(workers: int) -> Iterator[Path | None]:
    """Around a server of ``workers`` processes: with more than one, the directory their
    metrics share, set in ``PROMETHEUS_MULTIPROC_DIR`` for the workers to inherit. A fresh
    temporary one (removed on the way out), unless the variable is already set; then that
    directory is used and the metric files a previous run left in it are removed first
    (prometheus_client requires it to start empty)."""
    if workers <= 1:
        yield None
        return
    given = multiprocess_dir()
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        for f in given.iterdir():
            if _VALUE_FILE.fullmatch(f.name):
                f.unlink()
        yield given
        return
    fresh = Path(tempfile.mkdtemp(prefix="fundguard-metrics-"))
    os.environ[MULTIPROC_ENV] = str(fresh)
    try:
        yield fresh
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(fresh, ignore_errors=True)
