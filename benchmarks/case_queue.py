"""The inspectors' queue against the truth: precision of the top 20 and top 100 open cases,
by priority calibrated on the inspectors' verdicts, by the uncalibrated priority and by
amount at risk alone.

Simulates a province (or takes ``--data``), loads it into a fresh SQLite store, screens it
and files the flags as cases (what ``fundguard screen --store`` does). Then simulated
inspectors work the queue for ``--days`` days: each day they take the ``--per-day`` open
cases of highest priority, record the verdict the province's truth gives (confirmed when
the case's entity has a truth flag of one of its patterns, else dismissed), and the queue
is recalibrated (``serve.cases.recalibrate``, as ``fundguard cases recalibrate`` does). The
open cases left are then ordered three ways, in the same run: by the store's priority
(calibrated probability x amount at risk), by the uncalibrated priority (the flags' own
scores, noisy-OR, x amount) and by amount at risk alone. A group case is right when its
members match a planted group (Jaccard >= 0.5, one-to-one, as ``models.evaluate`` matches
them). It prints one markdown row per queue and k, and the calibration fitted.

    .venv/bin/python benchmarks/case_queue.py [--scale small|medium] [--seed 7] [--data DIR]
        [--days 10] [--per-day 20]

Figures (in the README's benchmark list) were taken with ``--days 20`` on the medium
province, seed 11, and the defaults on the small one, seed 7.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, select

from models.evaluate import match_groups
from serve import cases
from serve.loading import load_folder
from serve.schemas import CaseStatus
from serve.screening import screen
from serve.store import create_store_engine
from serve.tables import case_flags
from serve.tables import cases as cases_table

TOP_K = (20, 100)
OPEN = (CaseStatus.NEW.value, CaseStatus.IN_REVIEW.value)


def truth_keys(data_dir: Path, case_frame: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(entity type, entity id, pattern) of every truth flag; a flagged group counts under
    its own id when it matches a planted group."""
    truth = pd.read_parquet(data_dir / "truth" / "flags.parquet")
    keys = {
        (str(t), str(i), str(p))
        for t, i, p in truth[["entity_type", "entity_id", "pattern"]].itertuples(index=False)
    }
    planted = {
        str(g): frozenset(map(str, f["patient_id"]))
        for g, f in pd.read_parquet(data_dir / "truth" / "groups.parquet").groupby("group_id")
    }
    found = {
        row.entity_id: frozenset(row.members)
        for row in case_frame.itertuples()
        if row.entity_type == "group"
    }
    for flagged in match_groups(found, planted):
        keys.add(("group", flagged, "group_admission"))
    return keys


def read_cases(engine: Engine) -> pd.DataFrame:
    """Every case of the store, with its group members and its uncalibrated priority (the
    flags' own scores as probabilities)."""
    with engine.connect() as conn:
        rows = conn.execute(select(cases_table)).all()
        members: dict[str, list[str]] = {}
        raw: dict[str, list[tuple[Decimal, Decimal]]] = {}
        for r in conn.execute(select(case_flags)):
            raw.setdefault(r.case_id, []).append((Decimal(r.score), Decimal(r.amount_at_risk)))
            if r.pattern == "group_admission":
                members[r.case_id] = list(json.loads(r.evidence).get("members", []))
    frame = pd.DataFrame([dict(r._mapping) for r in rows])
    frame["members"] = [members.get(c, []) for c in frame["case_id"]]
    frame["raw_priority"] = [float(cases.expected_loss(raw[c])[2]) for c in frame["case_id"]]
    return frame


def mark_right(frame: pd.DataFrame, truth: set[tuple[str, str, str]]) -> pd.DataFrame:
    return frame.assign(
        right=[
            any((t, i, p) in truth for p in patterns.split("|"))
            for t, i, patterns in frame[["entity_type", "entity_id", "patterns"]].itertuples(
                index=False
            )
        ]
    )


def queues(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    frame = frame.assign(
        amount=frame["amount_at_risk"].astype(float), prio=frame["priority"].astype(float)
    )
    order = {"calibrated": "prio", "uncalibrated": "raw_priority", "amount": "amount"}
    return {
        POLICIES[policy]: frame.sort_values(
            [key, "created_at", "case_id"], ascending=[False, True, True]
        )
        for policy, key in order.items()
    }


def precision_rows(frame: pd.DataFrame) -> list[str]:
    lines = [
        "| queue of the open cases | k | precision | right | by entity type in the top k |",
        "|---|---|---|---|---|",
    ]
    ordered = queues(frame)
    for name, queue in ordered.items():
        for k in TOP_K:
            top = queue.head(k)
            kinds = ", ".join(
                f"{t} {int(g['right'].sum())}/{len(g)}" for t, g in top.groupby("entity_type")
            )
            lines.append(
                f"| {name} | {k} | {top['right'].mean():.2f} | {int(top['right'].sum())}/{len(top)}"
                f" | {kinds} |"
            )
    ranked = {name: list(q["case_id"]) for name, q in ordered.items()}
    names = list(ranked)
    for k in TOP_K:
        for other in names[1:]:
            same = len(set(ranked[names[0]][:k]) & set(ranked[other][:k]))
            lines.append(f"top {k}: {same} case(s) both in the calibrated queue and by {other}")
    return lines


POLICIES = {
    "calibrated": "priority, calibrated by verdicts",
    "uncalibrated": "priority, uncalibrated (flag scores)",
    "amount": "amount at risk alone",
}


def open_queue(engine: Engine, policy: str, raw: dict[str, float]) -> list[tuple[str, Decimal]]:
    """(case id, amount at risk) of the open cases in the order ``policy`` works them."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                cases_table.c.case_id,
                cases_table.c.priority,
                cases_table.c.amount_at_risk,
                cases_table.c.created_at,
            ).where(cases_table.c.status.in_(OPEN))
        ).all()
    key = {
        "calibrated": lambda r: Decimal(r.priority),
        "uncalibrated": lambda r: Decimal(str(raw[r.case_id])),
        "amount": lambda r: Decimal(r.amount_at_risk),
    }[policy]
    rows.sort(key=lambda r: r.case_id)
    rows.sort(key=lambda r: r.created_at)
    rows.sort(key=key, reverse=True)
    return [(r.case_id, Decimal(r.amount_at_risk)) for r in rows]


@dataclass
class Worked:
    """What simulated inspectors did under one policy."""

    days: list[str] = field(default_factory=list)
    worked: int = 0
    confirmed: int = 0
    amount_confirmed: Decimal = Decimal(0)
    recalibrating: float = 0.0


def work_the_queue(
    engine: Engine,
    right: dict[str, bool],
    raw: dict[str, float],
    *,
    policy: str,
    days: int,
    per_day: int,
) -> Worked:
    """Simulated inspectors: each day the ``per_day`` first open cases of the ``policy``'s
    queue get the truth's verdict, then the store is recalibrated (``fundguard cases
    recalibrate``); only the ``calibrated`` policy's order reads it."""
    done = Worked()
    for day in range(1, days + 1):
        todo = open_queue(engine, policy, raw)[:per_day]
        for case_id, amount in todo:
            confirmed = right[case_id]
            cases.record_verdict(
                engine,
                case_id,
                CaseStatus.CONFIRMED if confirmed else CaseStatus.DISMISSED,
                "核实属实" if confirmed else "核查未见违规",
                actor="benchmark",
                visible=lambda _region: True,
                scheme=None,
            )
            done.worked += 1
            done.confirmed += confirmed
            done.amount_confirmed += amount if confirmed else Decimal(0)
        started = time.perf_counter()
        with engine.begin() as conn:
            recalibrated = cases.recalibrate(conn)
        done.recalibrating += time.perf_counter() - started
        hits = sum(right[c] for c, _ in todo)
        done.days.append(
            f"day {day}: {len(todo)} case(s) worked, {hits} confirmed; recalibrated: "
            f"{recalibrated.reprioritised} of {recalibrated.open_cases} open case(s) "
            "re-prioritised"
        )
    return done


def calibration_rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        fitted = cases.load_calibration(conn)
    lines = [
        "| pattern | scores from | verdicts | confirmed | calibrated p at the bin's top score |",
        "|---|---|---|---|---|",
    ]
    for of_pattern in fitted.bins.values():
        for b in of_pattern:
            lines.append(
                f"| {b.pattern} | {b.low} | {b.verdicts} | {b.confirmed} | "
                f"{b.probability(b.high)} (score {b.high}) |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small", choices=("small", "medium"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data", type=Path, help="a simulated province instead of a new one")
    parser.add_argument("--days", type=int, default=10, help="days the inspectors work")
    parser.add_argument("--per-day", type=int, default=20, help="cases worked a day")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fundguard-cases-") as tmp:
        work = Path(tmp)
        data_dir = args.data
        if data_dir is None:
            from features.simulate import simulate

            data_dir = work / "province"
            simulate(data_dir, seed=args.seed, scale=args.scale)
        store_url = f"sqlite:///{work / 'store.db'}"
        started = time.perf_counter()
        load_folder(data_dir, store_url)
        loaded = time.perf_counter()
        result = screen(data_dir, work / "screen")
        screened = time.perf_counter()
        engine = create_store_engine(store_url)
        try:
            with engine.begin() as conn:
                filed = cases.file_screening(conn, result.flags, result.members)
            with engine.begin() as conn:
                again = cases.file_screening(conn, result.flags, result.members)
            filed_at = time.perf_counter()
            frame = read_cases(engine)
            truth = truth_keys(data_dir, frame)
            frame = mark_right(frame, truth)
            print(
                f"province {data_dir} ({args.scale}, seed {args.seed}): {len(result.flags)} "
                f"flags -> {filed.cases_opened} cases ({filed.flags_added} flags filed; a "
                f"second filing added {again.flags_added}), {int(frame['right'].sum())} right; "
                f"load {loaded - started:.1f} s, screen {screened - loaded:.1f} s, file twice "
                f"{filed_at - screened:.1f} s"
            )
            print("\nbefore any verdict (every case open):\n")
            print("\n".join(precision_rows(frame)))
            right = dict(zip(frame["case_id"], frame["right"], strict=True))
            raw = dict(zip(frame["case_id"], frame["raw_priority"], strict=True))
        finally:
            engine.dispose()
        worked: dict[str, Worked] = {}
        after, calibrated = frame, []
        for policy in POLICIES:  # each policy works its own copy of the store as filed
            copy = work / f"store-{policy}.db"
            for suffix in ("", "-wal", "-shm"):
                if (work / f"store.db{suffix}").exists():
                    shutil.copyfile(work / f"store.db{suffix}", work / f"{copy.name}{suffix}")
            engine = create_store_engine(f"sqlite:///{copy}")
            try:
                worked[policy] = work_the_queue(
                    engine, right, raw, policy=policy, days=args.days, per_day=args.per_day
                )
                if policy == "calibrated":
                    after = read_cases(engine)
                    calibrated = calibration_rows(engine)
            finally:
                engine.dispose()
        print(
            f"\ninspectors working the calibrated queue, {args.per_day} cases a day for "
            f"{args.days} days:\n"
        )
        print("\n".join(worked["calibrated"].days))
        after = mark_right(after[after["status"].isin(OPEN)], truth)
        print(
            f"\nafter {args.days} days ({len(after)} open cases left, "
            f"{int(after['right'].sum())} of them right; recalibrating took "
            f"{worked['calibrated'].recalibrating / args.days:.2f} s a day):\n"
        )
        print("\n".join(precision_rows(after)))
        print(
            f"\nwhat the inspectors' {args.days * args.per_day} verdicts found, "
            "each policy working its own queue from the same filed cases:\n"
        )
        print("| inspectors work | cases worked | confirmed | precision | amount confirmed |")
        print("|---|---|---|---|---|")
        for policy, done in worked.items():
            print(
                f"| {POLICIES[policy]} | {done.worked} | {done.confirmed} | "
                f"{done.confirmed / max(done.worked, 1):.2f} | {done.amount_confirmed:,.2f} |"
            )
        print(f"\ncalibration (prior: {cases.PRIOR_STRENGTH} verdicts at the flag's score)\n")
        print("\n".join(calibrated))


if __name__ == "__main__":
    main()
