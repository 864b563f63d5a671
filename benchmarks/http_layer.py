"""What ``POST /v1/score`` costs outside the scoring itself: the HTTP layer (middleware,
routing, auth, reading and validating the body, the per-decision metrics and JSON log line),
in µs a request, beside two baselines measured in the same run.

In process, without sockets (uvicorn's own HTTP parsing is the same for every app and is
left out): each app is called through ASGI the way uvicorn calls it, one request at a time,
with 10-line settlements of benchmarks/scorer.py (``body``):

- ``scorer``: ``create_app(settings)`` as ``fundguard serve`` builds it, over a SQLite store
  with the catalog, a ledger and the purchases of benchmarks/scorer.py (every request a new
  settlement; the shipped rule base and credit scheme; no model), its decision log line
  written at INFO through the JSON formatter ``fundguard serve`` configures (into a file).
  A probe around the real ``serve.scoring.score`` times the scoring; the request's time less
  the scoring's is the HTTP layer.
- ``bare``: benchmarks/scorer.py's parse-only app (FastAPI parsing ``SettlementIn`` as a body
  parameter, a constant answer): the baseline ``benchmarks/scorer.py`` compares against.
- ``floor``: Starlette alone, the raw body through ``SettlementIn.model_validate_json``, a
  constant answer: what validating the request costs at least.

The apps take turns (``--rounds``), so that the machine's noise falls on all of them; each
figure is the median of the rounds. ``--profile`` prints a cProfile of the scorer's
requests (top functions by cumulative and by own time, ``scoring.score`` included).

To measure other code in the same run (the code before a change), point ``PYTHONPATH`` at
its checkout: the script uses ``serve.app.create_app`` and the store's loading functions.

    .venv/bin/python benchmarks/http_layer.py [--rounds 7] [--requests 300] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import logging.config
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serve import scoring
from serve.app import create_app
from serve.logs import log_config
from serve.schemas import SettlementIn
from serve.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from scorer import BARE_APP, body, prepare_store, purchase  # benchmarks/scorer.py

ASGIApp = Callable[..., Any]


def floor_app() -> Starlette:
    async def score(request: Request) -> Response:
        SettlementIn.model_validate_json(await request.body())
        return Response(b'{"decision":"pass"}', media_type="application/json")

    return Starlette(routes=[Route("/v1/score", score, methods=["POST"])])


def bare_app() -> ASGIApp:
    namespace: dict[str, Any] = {}
    exec(BARE_APP, namespace)  # noqa: S102 - benchmarks/scorer.py's own app, as it serves it
    return namespace["app"]  # type: ignore[no-any-return]


class Driver:
    """Calls an ASGI app as uvicorn does for one ``POST /v1/score`` on a kept-alive
    connection: the scope, the whole body in one message, the answer's messages."""

    def __init__(self, app: ASGIApp, key: str, state: dict[str, Any]) -> None:
        self.app = app
        self.key = key.encode()
        self.state = state
        self.statuses: dict[int, int] = {}

    async def post(self, payload: bytes) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "POST",
            "root_path": "",
            "path": "/v1/score",
            "raw_path": b"/v1/score",
            "query_string": b"",
            "headers": [
                (b"host", b"127.0.0.1:8000"),
                (b"content-type", b"application/json"),
                (b"authorization", b"Bearer " + self.key),
                (b"content-length", str(len(payload)).encode()),
            ],
            "state": self.state.copy(),
        }
        sent = False
        disconnected = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                self.statuses[status] = self.statuses.get(status, 0) + 1

        await self.app(scope, receive, send)


class Probe:
    """Time spent in the real ``serve.scoring.score`` (the app calls it through the module)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.real = scoring.score

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.real(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    @contextmanager
    def installed(self) -> Iterator[None]:
        scoring.score = self  # type: ignore[assignment]
        try:
            yield
        finally:
            scoring.score = self.real


async def timed(driver: Driver, payloads: list[bytes]) -> float:
    started = time.perf_counter()
    for payload in payloads:
        await driver.post(payload)
    return time.perf_counter() - started


async def measure(args: argparse.Namespace, tmp: Path) -> None:
    url = f"sqlite:///{tmp}/store.db"
    base, key = prepare_store(url, args.ledger)
    total = args.rounds * args.requests + args.warm_up
    purchase(url, base, 0, total)
    payloads = [orjson.dumps(body(i, base)) for i in range(total)]
    cycled = payloads[: args.requests]  # the baselines keep nothing: the same bodies each round

    log_file = tmp / "decisions.log"
    config = log_config("INFO")
    config["handlers"]["stderr"] = {
        "class": "logging.FileHandler", "filename": str(log_file), "formatter": "json",
    }  # fmt: skip
    logging.config.dictConfig(config)

    settings = Settings(database_url=url, data_dir=tmp)
    scorer = create_app(settings)
    probe = Probe()
    lifespan: AbstractAsyncContextManager[Any] = scorer.router.lifespan_context(scorer)
    async with lifespan as state:
        drivers = {
            "scorer": Driver(scorer, key, state or {}),
            "bare": Driver(bare_app(), key, {}),
            "floor": Driver(floor_app(), key, {}),
        }
        with probe.installed():
            warm = payloads[: args.warm_up]
            await timed(drivers["scorer"], warm)
            await timed(drivers["bare"], cycled)
            await timed(drivers["floor"], cycled)
            at = args.warm_up
            rows: dict[str, list[float]] = {"scorer": [], "scoring": [], "bare": [], "floor": []}
            profiler = cProfile.Profile() if args.profile else None
            for _ in range(args.rounds):
                batch = payloads[at : at + args.requests]
                at += args.requests
                probe.seconds = 0.0
                with profiler or nullcontext():
                    seconds = await timed(drivers["scorer"], batch)
                rows["scorer"].append(seconds / len(batch))
                rows["scoring"].append(probe.seconds / len(batch))
                for name in ("bare", "floor"):
                    rows[name].append(await timed(drivers[name], cycled) / len(cycled))
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})

    for name, driver in drivers.items():
        wrong = {s: n for s, n in driver.statuses.items() if s != 200}
        assert not wrong, f"{name} answered {wrong}"
    logged = sum(1 for _ in log_file.open())
    assert logged == total, f"{logged} decision log lines for {total} requests"

    us = {name: statistics.median(values) * 1e6 for name, values in rows.items()}
    layer = [(r - s) * 1e6 for r, s in zip(rows["scorer"], rows["scoring"], strict=True)]
    print(
        f"{args.rounds} rounds of {args.requests} requests an app; µs a request, median (min-max)"
    )
    for label, values in (
        ("scorer: whole request", [v * 1e6 for v in rows["scorer"]]),
        ("  of which scoring.score", [v * 1e6 for v in rows["scoring"]]),
        ("  HTTP layer (the rest)", layer),
        ("bare: FastAPI parse-only", [v * 1e6 for v in rows["bare"]]),
        ("floor: Starlette + model_validate_json", [v * 1e6 for v in rows["floor"]]),
    ):
        print(
            f"  {label:<40}{statistics.median(values):>8.0f}  ({min(values):.0f}-{max(values):.0f})"
        )
    print(
        f"HTTP layer / bare: {statistics.median(layer) / us['bare']:.2f}; "
        f"HTTP layer - floor: {statistics.median(layer) - us['floor']:.0f} µs"
    )
    if profiler is not None:
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300, help="requests an app a round")
    parser.add_argument("--warm-up", type=int, default=200)
    parser.add_argument("--ledger", type=int, default=10_000, help="codes settled beforehand")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(measure(args, Path(tmp)))


if __name__ == "__main__":
    main()
