"""The inspectors' queue against the truth: precision of the top 20 and top 100 cases.

Simulates a province (or takes ``--data``), loads it into a fresh SQLite store, screens it
and files the flags as cases (what ``fundguard screen --store`` does), then reads the
queue back from the store two ways: by ``priority`` (expected loss: probability x amount
at risk, ``serve.cases``) and by amount at risk alone. A case is right when its entity has
a truth flag of one of its patterns; a group case when its members match a planted group
(Jaccard >= 0.5, one-to-one, as ``models.evaluate`` matches them). It prints one markdown
row per queue and k, and the same per entity type of the top 100.

    .venv/bin/python benchmarks/case_queue.py [--scale small|medium] [--seed 7] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
from sqlalchemy import select

from models.evaluate import match_groups
from serve import cases
from serve.loading import load_folder
from serve.screening import screen
from serve.store import create_store_engine
from serve.tables import case_flags
from serve.tables import cases as cases_table

TOP_K = (20, 100)


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


def read_cases(store_url: str) -> pd.DataFrame:
    engine = create_store_engine(store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(cases_table)).all()
            members: dict[str, list[str]] = {}
            for case_id, evidence in conn.execute(
                select(case_flags.c.case_id, case_flags.c.evidence).where(
                    case_flags.c.pattern == "group_admission"
                )
            ):
                members[case_id] = list(json.loads(evidence).get("members", []))
    finally:
        engine.dispose()
    frame = pd.DataFrame([dict(r._mapping) for r in rows])
    frame["members"] = [members.get(c, []) for c in frame["case_id"]]
    return frame


def precision_rows(frame: pd.DataFrame, truth: set[tuple[str, str, str]]) -> list[str]:
    frame = frame.assign(
        right=[
            any((t, i, p) in truth for p in patterns.split("|"))
            for t, i, patterns in frame[["entity_type", "entity_id", "patterns"]].itertuples(
                index=False
            )
        ],
        amount=frame["amount_at_risk"].astype(float),
        prio=frame["priority"].astype(float),
    )
    queues = {
        "priority (expected loss)": frame.sort_values(
            ["prio", "created_at", "case_id"], ascending=[False, True, True]
        ),
        "amount at risk alone": frame.sort_values(
            ["amount", "created_at", "case_id"], ascending=[False, True, True]
        ),
    }
    lines = [
        "| queue | k | precision | right | by entity type in the top k |",
        "|---|---|---|---|---|",
    ]
    for name, ordered in queues.items():
        for k in TOP_K:
            top = ordered.head(k)
            kinds = ", ".join(
                f"{t} {int(g['right'].sum())}/{len(g)}" for t, g in top.groupby("entity_type")
            )
            lines.append(
                f"| {name} | {k} | {top['right'].mean():.2f} | {int(top['right'].sum())}/{len(top)}"
                f" | {kinds} |"
            )
    ranked = [list(q["case_id"]) for q in queues.values()]
    for k in TOP_K:
        same = len(set(ranked[0][:k]) & set(ranked[1][:k]))
        lines.append(
            f"top {k}: {same} case(s) in both queues, same order: {ranked[0][:k] == ranked[1][:k]}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small", choices=("small", "medium"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data", type=Path, help="a simulated province instead of a new one")
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
        finally:
            engine.dispose()
        filed_at = time.perf_counter()
        frame = read_cases(store_url)
        truth = truth_keys(data_dir, frame)
        print(
            f"province {data_dir} ({args.scale}, seed {args.seed}): {len(result.flags)} flags -> "
            f"{filed.cases_opened} cases ({filed.flags_added} flags filed; a second filing "
            f"added {again.flags_added}); load {loaded - started:.1f} s, screen "
            f"{screened - loaded:.1f} s, file twice {filed_at - screened:.1f} s"
        )
        print("\n".join(precision_rows(frame, truth)))


if __name__ == "__main__":
    main()
