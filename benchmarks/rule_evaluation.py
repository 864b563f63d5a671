"""The rule base's cost, online per settlement and in batch, each beside a baseline.

Online: a small province is loaded into a SQLite store; for its settlements (in time order,
in a transaction each, rolled back so the store stays as loaded) it times the whole rule
base (``rules.online.evaluate_in_store``: its reads and the rules) and, as the baseline in the same run, the trace-code
ledger check alone (``traceability.ledger.check_codes``). Batch: the medium province
screened with the whole rule base against the trace-code rules alone.

    .venv/bin/python benchmarks/rule_evaluation.py [--settlements 3000] [--batch-scale medium]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from features.load import load_tables
from features.simulate import simulate
from rules.base import shipped_rulebase
from rules.online import evaluate_in_store
from serve.loading import load_folder
from serve.replay import settlement_requests
from serve.schemas import ItemType, SettlementIn
from serve.scoring import _view
from serve.screening import code_flags, rule_flags
from serve.store import create_store_engine
from traceability.ledger import DrugLine, check_codes


def online(folder: Path, n: int, tmp: Path) -> None:
    url = f"sqlite:///{tmp / 'store.db'}"
    load_folder(folder, url)
    engine = create_store_engine(url)
    rulebase = shipped_rulebase()
    bodies = [
        SettlementIn.model_validate(body)
        for _, body in list(settlement_requests(load_tables(folder)))[-n:]
    ]
    ledger_us, rules_us = [], []
    for s in bodies:
        lines = [
            DrugLine(i.line_no, i.item_code, i.quantity, i.amount, bool(i.split_sale),
                     tuple(i.trace_codes or ()))
            for i in s.items if i.item_type is ItemType.DRUG
        ]  # fmt: skip
        with engine.connect() as conn:
            t0 = time.perf_counter_ns()
            checked, _ = check_codes(conn, settlement_id=s.settlement_id,
                                  institution_id=s.institution_id, settled_at=s.settled_at,
                                  lines=lines)  # fmt: skip
            t1 = time.perf_counter_ns()
            evaluate_in_store(conn, rulebase, _view(s), trace_hits=checked.hits)
            t2 = time.perf_counter_ns()
            conn.rollback()
        ledger_us.append((t1 - t0) / 1000)
        rules_us.append((t2 - t1) / 1000)
    engine.dispose()
    for label, values in (("ledger check (baseline)", ledger_us), ("whole rule base", rules_us)):
        q = statistics.quantiles(values, n=100)
        print(f"online  {label:<26} p50 {q[49]:8.0f} µs   p99 {q[98]:8.0f} µs   "
              f"({len(rulebase.enabled)} rules, {len(values)} settlements)")  # fmt: skip


def batch(folder: Path) -> None:
    n_lines = load_tables(folder, ["settlement_items"])["settlement_items"].shape[0]
    t0 = time.perf_counter()
    trace = code_flags(folder)
    t1 = time.perf_counter()
    every = rule_flags(folder)
    t2 = time.perf_counter()
    print(
        f"batch   trace-code rules (baseline)  {t1 - t0:6.1f} s  {n_lines / (t1 - t0):>10,.0f} lines/s  {len(trace)} flags"
    )
    print(
        f"batch   whole rule base              {t2 - t1:6.1f} s  {n_lines / (t2 - t1):>10,.0f} lines/s  {len(every)} flags"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settlements", type=int, default=3000)
    parser.add_argument("--batch-scale", default="medium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        small = tmp / "small"
        simulate(small, seed=5, scale="small")
        online(small, args.settlements, tmp)
        big = tmp / args.batch_scale
        simulate(big, seed=5, scale=args.batch_scale)
        batch(big)


if __name__ == "__main__":
    main()
