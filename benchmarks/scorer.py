"""`POST /v1/score` under load, beside a bare endpoint that only parses the same request.

The scorer runs as in production: `fundguard serve --workers N`, the whole rule base in
force, the champion model (a settlement model trained on a small simulated province and
promoted in a temporary MLflow store, unless ``--no-model``). For each store (SQLite in a
temp folder, PostgreSQL in a fresh database) the ledger holds ``--ledger`` settled codes;
every request is a new settlement of 10 drug lines with one fresh code each (purchased by
the pharmacy, never sold). The bare app (FastAPI parsing `SettlementIn`, answering a
constant) runs with as many uvicorn workers and gets the same bodies, in the same run.

The load comes from `wrk` (Debian's package), one thread (``-t1``) so that it takes as
little of the two cores as it can, driven by ``benchmarks/scorer.lua``: the bodies are
written beforehand, one JSON a line, a file per wrk thread; the figures are wrk's own
(``--latency``: p50/p99 from the send to the answer). Without wrk the Python client of
this file drives the load instead (httpx, in this process), and the output says so.
After every scorer run the store is counted: the decisions stored must equal the requests
sent (a request cut by the end of the run is still decided), and each answer's decision
must be among them. The CPU time of the load generator and of the server is measured
(rusage of wrk, psutil of the server's processes) and reported as a share of the run.

``--commit-delay US ...`` (PostgreSQL) measures group commit: the scorer's sessions get
``commit_delay``/``commit_siblings`` through the connection's ``options`` (the server's
configuration is untouched; ``synchronous_commit`` stays ``on``: nothing acknowledged is
lost), at the largest client count, ``0`` being the baseline.

``--profile N`` first scores N settlements in-process (no HTTP) under cProfile and prints
where the time goes. ``--soak SECONDS`` then holds 80% of the measured peak (the scorer at
the largest client count; ``--soak-rate`` sets another) for that long on ``--soak-store``,
paced by the Lua script, and reports errors and the share of degraded answers.

The scorer runs the code of the current folder (its ``PYTHONPATH`` is set to it, whatever
the caller's): to measure other code (the code before a change), run this file from that
checkout's folder, ``cd ../before && PYTHONPATH=. ../main/.venv/bin/python
benchmarks/scorer.py …``.

    .venv/bin/python benchmarks/scorer.py [--duration 10] [--ledger 1000000]
        [--stores sqlite postgresql] [--workers 1 2 3] [--clients 1 16] [--no-model]
        [--commit-delay 0 100 1000] [--profile 2000] [--soak 600] [--generator wrk|python]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import psutil
from sqlalchemy import create_engine, func, insert, select, text

from serve.keys import Role, create_key
from serve.store import create_store_engine, upgrade
from serve.tables import decisions
from traceability.store import drugs, ledger_codes, products, stock_events

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LUA = Path(__file__).with_name("scorer.lua")
FUNDGUARD = str(Path(sys.executable).with_name("fundguard"))
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
@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
"""
WARM_UP_SECONDS = 3
BARE_BODIES = 2000
"""The bare endpoint keeps nothing: it gets these bodies round and round."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def code(n: int) -> str:
    return f"8100001{n:09d}0000"


def body(i: int, base: int) -> dict[str, object]:
    """Settlement ``B{i}``: 10 lines of drug ``D1``, codes ``base + 10 i`` to ``+ 9``."""
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


def prepare_store(url: str, ledger: int) -> tuple[int, str]:
    """Catalog and a ledger of ``ledger`` settled codes; the first code number after them
    and a settlement key."""
    upgrade(url)
    engine = create_store_engine(url)
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
    key = create_key(engine, Role.SETTLEMENT, label="benchmark")
    engine.dispose()
    return ledger + 1, key


def purchase(url: str, base: int, first: int, n: int) -> None:
    """``P001`` receives the packs of settlements ``first`` .. ``first + n - 1``."""
    engine = create_store_engine(url)
    at = datetime(2025, 1, 1, tzinfo=UTC)
    wanted = range(base + first * 10, base + (first + n) * 10)
    with engine.begin() as conn:
        for start in range(0, len(wanted), 50_000):
            conn.execute(
                insert(stock_events),
                [
                    {
                        "institution_id": "P001",
                        "canonical_code": code(c),
                        "event_type": "purchase",
                        "event_at": at + timedelta(seconds=c - base),
                    }
                    for c in wanted[start : start + 50_000]
                ],
            )
    engine.dispose()


def write_bodies(prefix: Path, base: int, first: int, n: int, threads: int) -> None:
    """Settlements ``first`` .. ``first + n - 1``, one JSON a line, thread t's slice in
    ``prefix.t.jsonl``."""
    per = math.ceil(n / threads)
    for t in range(threads):
        with open(f"{prefix}.{t}.jsonl", "wb") as out:
            for i in range(first + t * per, min(first + n, first + (t + 1) * per)):
                out.write(orjson.dumps(body(i, base)) + b"\n")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    def cpu_seconds(self) -> float:
        """CPU time of the server's processes (supervisor and workers) so far."""
        try:
            root = psutil.Process(self.process.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for p in processes:
            try:
                times = p.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start(command: list[str], env: dict[str, str], port: int) -> Server:
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return Server(process, port)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not start")


@dataclass
class Run:
    generator: str
    seconds: float
    sent: int
    answered: int
    p50_ms: float
    p99_ms: float
    failed: int = 0
    socket_errors: int = 0
    degraded: int = 0
    exhausted: bool = False
    decided: Counter[str] = field(default_factory=Counter)
    first_failure: str = ""
    generator_cpu: float = 0.0
    server_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.answered / self.seconds

    @property
    def errors(self) -> int:
        return self.failed + self.socket_errors


def wrk(
    server: Server,
    prefix: Path,
    key: str,
    *,
    mode: str,
    connections: int,
    seconds: float,
    threads: int,
    rate: float = 0,
) -> Run:
    """One wrk run; its CPU time from the kernel's accounting of the child (wait4)."""
    env = {**os.environ, "FUNDGUARD_WRK_RATE": str(rate)}
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "30s",
        "--latency", "-s", str(LUA), f"http://127.0.0.1:{server.port}",
        "--", str(prefix), key, mode, str(threads),
    ]  # fmt: skip
    with tempfile.TemporaryFile() as out:
        cpu_before = server.cpu_seconds()
        process = subprocess.Popen(command, stdout=out, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        server_cpu = server.cpu_seconds() - cpu_before
        out.seek(0)
        output = out.read().decode()
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}: {output}")
    line = next(x for x in output.splitlines() if x.startswith("FUNDGUARD "))
    got = orjson.loads(line.removeprefix("FUNDGUARD "))
    return Run(
        generator="wrk",
        seconds=got["duration_us"] / 1e6,
        sent=got["sent"],
        answered=got["answered"],
        p50_ms=got["p50_us"] / 1000,
        p99_ms=got["p99_us"] / 1000,
        failed=got["failed"],
        socket_errors=sum(got[k] for k in ("connect_errors", "read_errors", "write_errors"))
        + got["timeouts"],
        degraded=got["degraded"],
        exhausted=bool(got["exhausted"]),
        decided=Counter({d: got[d] for d in ("pass", "review", "reject")}),
        first_failure=got["first_failure"],
        generator_cpu=usage.ru_utime + usage.ru_stime,
        server_cpu=server_cpu,
    )


def python_load(
    server: Server,
    prefix: Path,
    key: str,
    *,
    mode: str,
    connections: int,
    seconds: float,
    threads: int,
    rate: float = 0,
) -> Run:
    """The fallback without wrk: httpx from this process (which then shares the cores)."""
    lines = [
        line
        for t in range(threads)
        for line in Path(f"{prefix}.{t}.jsonl").read_bytes().splitlines()
        if line
    ]
    run = Run("python (httpx)", 0.0, 0, 0, 0.0, 0.0)
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def drive() -> None:
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", limits=limits, timeout=30, headers=headers
        ) as client:
            started = time.perf_counter()
            deadline = started + seconds

            async def client_loop() -> None:
                while time.perf_counter() < deadline:
                    if mode == "once" and run.sent >= len(lines):
                        run.exhausted = True
                        return
                    i = run.sent
                    run.sent += 1
                    if rate:
                        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
                    t0 = time.perf_counter()
                    try:
                        response = await client.post("/v1/score", content=lines[i % len(lines)])
                    except httpx.HTTPError:
                        run.socket_errors += 1
                        continue
                    latencies.append(time.perf_counter() - t0)
                    if response.status_code != 200:
                        run.failed += 1
                        run.first_failure = run.first_failure or response.text[:200]
                        continue
                    run.answered += 1
                    run.decided[orjson.loads(response.content)["decision"]] += 1
                    if b'"degraded":true' in response.content:
                        run.degraded += 1

            await asyncio.gather(*(client_loop() for _ in range(connections)))
            run.seconds = time.perf_counter() - started

    cpu_before = server.cpu_seconds()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    asyncio.run(drive())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    run.server_cpu = server.cpu_seconds() - cpu_before
    run.generator_cpu = (usage.ru_utime - usage_before.ru_utime) + (
        usage.ru_stime - usage_before.ru_stime
    )
    if len(latencies) >= 2:
        q = statistics.quantiles(latencies, n=100)
        run.p50_ms, run.p99_ms = q[49] * 1000, q[98] * 1000
    return run


def stored(url: str) -> Counter[str]:
    """Decisions in the store, by decision."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(decisions.c.decision, func.count()).group_by(decisions.c.decision)
        )
        counts = Counter({decision: int(n) for decision, n in rows})
    engine.dispose()
    return counts


def check_store(url: str, before: Counter[str], run: Run, connections: int) -> str:
    """The decisions the run stored against what it sent and what was answered: every
    answer is stored (by decision), nothing is stored that was not sent, and what was sent
    but neither answered nor stored is at most one request a connection, cut when wrk
    stopped (uvicorn drops a request whose client left before its body was read)."""
    time.sleep(0.5)  # a request cut by the end of the run may still be committing
    new = stored(url) - before
    n = sum(new.values())
    problems = [
        f"{answered} answered {decision}, {new[decision]} stored"
        for decision, answered in run.decided.items()
        if new[decision] < answered
    ]
    if n > run.sent:
        problems.append(f"{n} decisions stored for {run.sent} sent")
    if run.sent - n > connections:
        problems.append(f"{run.sent - n} sent but never decided")
    verdict = "ok" if not problems else "MISMATCH: " + "; ".join(problems)
    return f"{verdict} ({n:,} stored, {run.answered:,} answered, {run.sent:,} sent)"


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

    purchase(url, base, first, n)
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


def with_commit_delay(url: str, delay_us: int, siblings: int) -> str:
    """``url`` whose sessions wait ``delay_us`` before flushing a commit when ``siblings``
    other transactions are open (group commit), set per session by libpq's ``options``."""
    if not delay_us:
        return url
    options = f"-c commit_delay={delay_us} -c commit_siblings={siblings}"
    return f"{url}{'&' if '?' in url else '?'}options={quote(options)}"


@dataclass
class Bench:
    """One store under test: where it is, what has been used of it."""

    store: str
    url: str
    base: int
    key: str
    tmp: Path
    env: dict[str, str]
    generator: str
    threads: int
    next_settlement: int = 0
    guess: float = 1500.0
    """settlements/s to write bodies for: the best scorer rate seen, doubled."""

    def load(self, server: Server, **kwargs: object) -> Run:
        drive = wrk if self.generator == "wrk" else python_load
        return drive(server, self.tmp / "bodies", self.key, threads=self.threads, **kwargs)  # type: ignore[arg-type]

    def bare(self, server: Server, connections: int, seconds: float) -> Run:
        write_bodies(self.tmp / "bodies", self.base, 0, BARE_BODIES, self.threads)
        return self.load(server, mode="cycle", connections=connections, seconds=seconds)

    def scorer(
        self, server: Server, connections: int, seconds: float, rate: float = 0
    ) -> tuple[Run, str]:
        """New settlements for ``seconds`` (more bodies and a second go if they ran out)."""
        for attempt in range(3):
            n = int(seconds * (rate * 1.2 if rate else self.guess * 3**attempt)) + 100
            first = self.next_settlement
            self.next_settlement += n
            purchase(self.url, self.base, first, n)
            write_bodies(self.tmp / "bodies", self.base, first, n, self.threads)
            before = stored(self.url)
            run = self.load(
                server, mode="once", connections=connections, seconds=seconds, rate=rate
            )
            check = check_store(self.url, before, run, connections)
            if not run.exhausted:
                self.guess = max(self.guess if attempt else 0, 2 * run.rate, 100.0)
                return run, check
            print(f"  ({n:,} bodies ran out after {run.sent:,}: again with more)", flush=True)
        raise RuntimeError("the bodies kept running out")


def start_scorer(bench: Bench, workers: int, url: str | None = None) -> Server:
    port = free_port()
    env = {**bench.env, "FUNDGUARD_DATABASE_URL": url or bench.url}
    command = [FUNDGUARD, "serve", "--port", str(port), "--workers", str(workers), "--log-level", "warning"]  # fmt: skip
    return start(command, env, port)


def start_bare(bench: Bench, workers: int) -> Server:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port),
        "--log-level", "warning", "--workers", str(workers),
    ]  # fmt: skip
    return start(command, bench.env, port)


def warm_up(bench: Bench, scorer: Server | None, bare: Server | None, clients: int) -> None:
    """A few seconds of load, not measured, on freshly started servers (first requests,
    connection pools, the model's first calls)."""
    if bare is not None:
        bench.bare(bare, clients, WARM_UP_SECONDS)
    if scorer is not None:
        bench.scorer(scorer, clients, WARM_UP_SECONDS)


def share(run: Run) -> str:
    """CPU of the generator (of one core) and of the server (cores busy) during a run."""
    return f"gen {run.generator_cpu / run.seconds:4.0%} srv {run.server_cpu / run.seconds:4.2f}c"


def line(label: str, run: Run) -> str:
    degraded = run.degraded / run.answered if run.answered else 0.0
    return (
        f"{label:<30}{run.rate:>9,.0f}/s{run.p50_ms:>9.2f}{run.p99_ms:>9.2f}"
        f"{degraded:>9.0%}{run.errors:>7}  {share(run)}"
        + (
            f"  review {run.decided['review']:,} reject {run.decided['reject']:,}"
            if run.decided["review"] + run.decided["reject"]
            else ""
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds a measurement")
    parser.add_argument("--ledger", type=int, default=1_000_000)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    parser.add_argument(
        "--generator", choices=["wrk", "python"], default=None, help="default: wrk if installed"
    )
    parser.add_argument("--no-model", action="store_true")
    parser.add_argument("--commit-delay", type=int, nargs="*", default=[], metavar="US")
    parser.add_argument("--commit-siblings", type=int, default=1)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--soak", type=float, default=0, metavar="SECONDS")
    parser.add_argument("--soak-store", default=None, help="default: postgresql if measured")
    parser.add_argument(
        "--soak-rate",
        type=float,
        default=0,
        metavar="PER_SECOND",
        help="the soak's rate (default: 80%% of the peak measured in this run)",
    )
    args = parser.parse_args()
    generator = args.generator or ("wrk" if shutil.which("wrk") else "python")
    soak_store = args.soak_store or (
        "postgresql" if "postgresql" in args.stores else args.stores[0]
    )
    soak_workers = 2 if 2 in args.workers else args.workers[0]
    top = max(args.clients)
    print(
        f"load generator: {generator}"
        + (f", {args.threads} thread(s)" if generator == "wrk" else "")
    )
    table: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tracking_uri = None if args.no_model else champion(tmp)
        (Path(tmp) / "bare_app.py").write_text(BARE_APP)
        header = (
            f"{'':<30}{'answers':>11}{'p50 ms':>9}{'p99 ms':>9}{'degraded':>9}{'errors':>7}  CPU"
        )
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
            try:
                base, key = prepare_store(url, args.ledger)
                env = {
                    **os.environ,
                    "FUNDGUARD_DATA_DIR": tmp,
                    "PYTHONPATH": f"{tmp}:{os.getcwd()}",
                }
                if tracking_uri:
                    env["FUNDGUARD_MLFLOW_TRACKING_URI"] = tracking_uri
                bench = Bench(store, url, base, key, Path(tmp), env, generator, args.threads)
                if args.profile:
                    profile(url, tracking_uri, args.profile, base, 50_000_000)
                print(f"\n{store}: ledger of {args.ledger:,} codes\n{header}", flush=True)
                peak: dict[int, float] = {}
                for workers in args.workers:
                    scorer = start_scorer(bench, workers)
                    bare = start_bare(bench, workers)
                    try:
                        warm_up(bench, scorer, bare, top)
                        for clients in args.clients:
                            b = bench.bare(bare, clients, args.duration)
                            print(line(f"{store} w{workers} x{clients} bare", b), flush=True)
                            s, check = bench.scorer(scorer, clients, args.duration)
                            print(
                                line(f"{store} w{workers} x{clients} scorer", s)
                                + f"  store {check}",
                                flush=True,
                            )
                            if s.first_failure:
                                print(f"  first failure: {s.first_failure}")
                            if clients == top:
                                peak[workers] = s.rate
                            table.append(
                                f"| {store} | {clients} | {workers} | {s.rate:,.0f} | {s.p50_ms:.2f} "
                                f"| {s.p99_ms:.2f} | {s.errors} | {s.degraded / max(s.answered, 1):.0%} "
                                f"| {b.rate:,.0f} | {b.p50_ms:.2f} | {b.p99_ms:.2f} "
                                f"| {s.generator_cpu / s.seconds:.0%} / {b.generator_cpu / b.seconds:.0%} "
                                f"| {check} |"
                            )
                    finally:
                        scorer.stop()
                        bare.stop()
                if store == "postgresql" and args.commit_delay:
                    print(
                        f"\ngroup commit at {top} clients, {soak_workers} workers (commit_siblings={args.commit_siblings})"
                    )
                    for delay in args.commit_delay:
                        delayed = with_commit_delay(url, delay, args.commit_siblings)
                        engine = create_engine(delayed)
                        with engine.connect() as conn:
                            shown = conn.execute(text("SHOW commit_delay")).scalar()
                            sync = conn.execute(text("SHOW synchronous_commit")).scalar()
                        engine.dispose()
                        scorer = start_scorer(bench, soak_workers, delayed)
                        try:
                            warm_up(bench, scorer, None, top)
                            s, check = bench.scorer(scorer, top, args.duration)
                        finally:
                            scorer.stop()
                        label = f"commit_delay={shown} sync={sync}"
                        print(line(label, s) + f"  store {check}", flush=True)
                if args.soak and store == soak_store:
                    rate = args.soak_rate or 0.8 * peak.get(soak_workers, max(peak.values()))
                    scorer = start_scorer(bench, soak_workers)
                    try:
                        warm_up(bench, scorer, None, top)
                        s, check = bench.scorer(scorer, top, args.soak, rate=rate)
                    finally:
                        scorer.stop()
                    print(
                        line(f"{store} soak {rate:,.0f}/s {args.soak:.0f}s", s)
                        + f"  store {check}\n  ({s.answered:,} answered, {s.errors} errors,"
                        f" {s.failed} non-200, {s.degraded / max(s.answered, 1):.1%} degraded,"
                        f" held {s.rate:,.0f}/s of {rate:,.0f}/s asked)",
                        flush=True,
                    )
                    if s.first_failure:
                        print(f"  first failure: {s.first_failure}")
            finally:
                if admin is not None:
                    with admin.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    admin.dispose()
    print(
        f"\ngenerator: {generator}; CPU columns: the generator's CPU as a share of one core, scorer run / bare run"
    )
    print(
        "| store | clients | workers | scorer/s | p50 ms | p99 ms | errors | degraded | bare/s | bare p50 | bare p99 | generator CPU | store check |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
