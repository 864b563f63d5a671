"""Credit (医保信用) on a replayed province: what the accounts say of ring pharmacies.

Simulates a province (or takes ``--data``), replays its history in time order through the
online scorer twice on fresh SQLite stores (credit off, then credit on: the added cost per
settlement), then prints:

- the credit of resale-ring pharmacies (truth: ``resale_hub``, scenario ``ring_*``) beside
  the clean pharmacies (no institution-level truth flag) at the end of the history;
- the review rate by the institution grade each decision used, overall and for ring
  pharmacies;
- a dismissed case giving back what its flags cost;
- recompute equal to the online updates.

    .venv/bin/python benchmarks/credit_replay.py --scale small --seed 7
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import Engine, func, select

from features.load import load_tables
from rules.credit import CreditScheme, Party, shipped_scheme
from serve import credit
from serve.replay import moves, play, record_catalog, settlement_requests
from serve.schemas import SettlementIn
from serve.store import create_store_engine, upgrade
from serve.tables import credit_accounts, decisions


def replay(
    tables: dict[str, pd.DataFrame], engine: Engine, scheme: CreditScheme | None
) -> tuple[list[dict[str, Any]], float]:
    """serve.replay's order of play (catalog and stock up front, then settlements and
    reversals in time order) with the credit scheme in force; the answers and the seconds
    spent scoring."""
    with engine.begin() as conn:
        record_catalog(conn, tables)
    answers = []
    spent = 0.0
    for move in moves(tables):
        started = time.perf_counter()
        played = play(engine, move, scheme)
        spent += time.perf_counter() - started
        if played is not None:
            answers.append(played.answer)
    return answers, spent


def describe(scores: list[int]) -> str:
    if not scores:
        return "(none)"
    q = statistics.quantiles(scores, n=4) if len(scores) > 1 else [scores[0]] * 3
    return (
        f"n={len(scores):>3}  min {min(scores):>4}  q1 {q[0]:>6.0f}  median {q[1]:>6.0f}"
        f"  q3 {q[2]:>6.0f}  max {max(scores):>4}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a simulated province (default: simulate one)")
    parser.add_argument("--scale", default="small", choices=("small", "medium"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the replay without credit (no µs figure)"
    )
    args = parser.parse_args()
    scheme = shipped_scheme()
    with tempfile.TemporaryDirectory(prefix="fundguard-credit-") as tmp:
        data = args.data
        if data is None:
            from features.simulate import simulate

            data = Path(tmp) / "province"
            simulate(data, seed=args.seed, scale=args.scale)
        tables = load_tables(data)
        n = len(tables["settlements"])
        stores = {}
        spent = {}
        runs = [("on", scheme)] if args.no_baseline else [("off", None), ("on", scheme)]
        for label, used in runs:
            url = f"sqlite:///{tmp}/{label}.db"
            upgrade(url)
            stores[label] = create_store_engine(url)
            _answers, spent[label] = replay(tables, stores[label], used)
        engine = stores["on"]
        print(f"province {data} ({args.scale}, seed {args.seed}): {n} settlements, scheme "
              f"{scheme.version}")  # fmt: skip
        if not args.no_baseline:
            off, on = spent["off"] / n * 1e6, spent["on"] / n * 1e6
            print(f"scoring time per settlement: credit off {off:.0f} µs, on {on:.0f} µs: "
                  f"credit adds {on - off:.0f} µs (SQLite, one process)")  # fmt: skip

        truth = pd.read_parquet(data / "truth" / "flags.parquet")
        scenario = truth["detail"].map(lambda d: json.loads(d).get("scenario", ""))
        rings = set(
            truth.loc[(truth["pattern"] == "resale_hub") & scenario.str.startswith("ring"),
                      "entity_id"]
        )  # fmt: skip
        flagged = set(truth.loc[truth["entity_type"] == "institution", "entity_id"])
        institutions = tables["institutions"]
        pharmacies = set(institutions.loc[institutions["kind"] == "pharmacy", "institution_id"])
        clean = pharmacies - flagged
        end = tables["settlements"]["settled_at"].max().to_pydatetime()
        with engine.connect() as conn:
            rows = {r.entity_id: r for r in conn.execute(
                select(credit_accounts).where(credit_accounts.c.entity_type == "institution"))}  # fmt: skip
        from rules.credit import Account

        def position(i: str) -> Any:
            r = rows.get(i)
            account = (
                Account(r.lost, r.last_violation_day, r.year, r.year_points) if r else Account()
            )
            return scheme.position(Party.INSTITUTION, i, account, end)

        print(f"\ncredit of pharmacies at the end of the history ({end:%Y-%m-%d}):")
        for label, group in (("ring (resale_hub)", rings & pharmacies), ("clean", clean)):
            scores = sorted(position(i).score for i in group)
            grades = Counter(position(i).grade.name for i in group)
            print(f"  {label:<18} {describe(scores)}  grades {dict(sorted(grades.items()))}")
            print(f"  {'':<18} scores {scores}")

        kinds = dict(zip(institutions["institution_id"], institutions["kind"], strict=True))
        per_kind: dict[str, Counter[str]] = defaultdict(Counter)
        for i, kind in kinds.items():
            per_kind[kind][position(i).grade.name] += 1
        print("  every institution by kind: " + "; ".join(
            f"{k} {dict(sorted(c.items()))}" for k, c in sorted(per_kind.items())))  # fmt: skip
        benign = pd.read_parquet(data / "truth" / "benign.parquet")
        lookalikes = sorted(set(benign.loc[benign["entity_type"] == "institution", "entity_id"]))
        print("  benign look-alike institutions: "
              + ", ".join(f"{i} {position(i).grade.name} ({position(i).score})"
                          for i in lookalikes))  # fmt: skip

        by_grade: dict[str, Counter[str]] = defaultdict(Counter)
        ring_by_grade: dict[str, Counter[str]] = defaultdict(Counter)
        with engine.connect() as conn:
            stored = conn.execute(select(decisions.c.institution_id, decisions.c.response)).all()
        for r in stored:
            answer = orjson.loads(r.response)
            grade = answer["credit"]["institution"]["grade"]
            by_grade[grade][answer["decision"]] += 1
            if r.institution_id in rings:
                ring_by_grade[grade][answer["decision"]] += 1
        print("\nreview rate by the institution grade each decision used:")
        for label, table in (("all institutions", by_grade), ("ring pharmacies", ring_by_grade)):
            cells = []
            for g in scheme.grades:
                c = table.get(g.name, Counter())
                total = sum(c.values())
                if total:
                    cells.append(f"{g.name}: review {c['review'] / total:6.1%}  reject "
                                 f"{c['reject'] / total:6.1%}  (n={total})")  # fmt: skip
            print(f"  {label}:\n    " + "\n    ".join(cells))

        # a dismissed case: an institution's review flags of one pattern, given back
        with engine.connect() as conn:
            from serve.tables import credit_events as ev

            flags = func.count().label("flags")
            candidate = conn.execute(  # the institution and pattern with the most review flags
                select(ev.c.entity_id, ev.c.pattern, flags)
                .where(ev.c.entity_type == "institution", ev.c.kind == "flagged")
                .group_by(ev.c.entity_id, ev.c.pattern)
                .order_by(flags.desc(), ev.c.entity_id, ev.c.pattern)
                .limit(1)
            ).first()
        if candidate is not None:
            inst, pattern, _ = candidate
            before = position(inst)
            with engine.begin() as conn:
                applied = credit.record_verdict(
                    conn, scheme, verdict_id="BENCH-DISMISS", entity_type="institution",
                    entity_id=inst, patterns=[pattern], verdict="dismissed", decided_at=end,
                    amount_at_risk=Decimal(0),
                )  # fmt: skip
                flags = conn.execute(
                    select(ev.c.points).where(
                        ev.c.restored_by == "BENCH-DISMISS", ev.c.entity_type == "institution",
                        ev.c.entity_id == inst,
                    )
                ).scalars().all()  # fmt: skip
            with engine.connect() as conn:
                rows[inst] = conn.execute(
                    select(credit_accounts).where(
                        credit_accounts.c.entity_type == "institution",
                        credit_accounts.c.entity_id == inst,
                    )
                ).one()
            after = position(inst)
            given = sum(c.points for c in applied.charges if c.entity_id == inst)
            print(f"\ndismissed case on {inst} ({pattern}): {len(flags)} flag(s) had cost "
                  f"{-sum(flags)} points; given back {given}; score {before.score} -> "
                  f"{after.score} (repair pending before: {before.pending_repair})")  # fmt: skip

        # the credit statements alone, per settlement, on the replayed store (rolled back)
        sample = [
            SettlementIn.model_validate(b)
            for _, b in itertools.islice(settlement_requests(tables), 2000)
        ]
        reads, writes = [], []
        for s in sample:
            with engine.connect() as conn, conn.begin() as tx:
                started = time.perf_counter()
                credit.read_standing(
                    conn, scheme, institution_id=s.institution_id,
                    patient_id=s.patient.patient_id, doctor_id=s.doctor_id, at=s.settled_at,
                )  # fmt: skip
                reads.append(time.perf_counter() - started)
                started = time.perf_counter()
                credit.apply_decision(
                    conn, scheme, settlement_id=s.settlement_id,
                    institution_id=s.institution_id, patient_id=s.patient.patient_id,
                    doctor_id=s.doctor_id or "DR-BENCH", settled_at=s.settled_at,
                    decision="reject", hits=[("TC002", "duplicate_trace_code", "reject")],
                    fund_paid=s.fund_paid,
                )  # fmt: skip
                writes.append(time.perf_counter() - started)
                tx.rollback()
        print(f"\ncredit statements (SQLite, {len(sample)} settlements): read of the three "
              f"accounts p50 {statistics.median(reads) * 1e6:.0f} µs; a rejected decision "
              f"moving three accounts p50 {statistics.median(writes) * 1e6:.0f} µs "
              f"(a pass moves none)")  # fmt: skip

        online = credit.state(engine)
        started = time.perf_counter()
        done = credit.recompute(engine, scheme)
        same = credit.state(engine) == online
        print(f"\nrecompute: {done.accounts} accounts, {done.events} events from "
              f"{done.decisions} decisions and {done.verdicts} verdict(s) in "
              f"{time.perf_counter() - started:.1f} s; equals online: {same}")  # fmt: skip
        for e in stores.values():
            e.dispose()


if __name__ == "__main__":
    main()
