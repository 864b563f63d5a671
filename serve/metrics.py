"""Prometheus metrics of one scorer process (``GET /metrics``).

Requests and their latency by route, decisions by outcome, rule hits by rule, answers
given degraded (without the model) and repeated requests answered from the store. Each app
has a registry of its own (no module-level state), so tests and several apps in one
process never share counters. With several worker processes, each answers for itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


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

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4")

    async def middleware(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = _route(request)
        self.latency.labels(route, request.method).observe(time.perf_counter() - started)
        self.requests.labels(route, request.method, str(response.status_code)).inc()
        return response


def _route(request: Request) -> str:
    """The template of the route that answered (``/v1/settlements/{settlement_id}/reversal``),
    not the path: one label value per route, whatever the ids. The router leaves it in the
    request's scope."""
    route = request.scope.get("route")
    return str(getattr(route, "path", None) or "unmatched")
