"""Credit on a replayed province (the small seed-7 one): resale-ring pharmacies end with
clearly worse credit than clean ones, a poorer grade sends more to review, and recompute
equals the online updates."""

from __future__ import annotations

import importlib.util
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
from sqlalchemy import select

from features.load import load_tables
from rules.credit import Account, Party, shipped_scheme
from serve import credit
from serve.store import create_store_engine, upgrade
from serve.tables import credit_accounts

ROOT = Path(__file__).resolve().parents[1]


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "credit_replay", ROOT / "benchmarks/credit_replay.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ring_pharmacies_end_with_worse_credit_and_more_review(
    province: Path, tmp_path: Path
) -> None:
    scheme = shipped_scheme()
    url = f"sqlite:///{tmp_path / 'credit.db'}"
    upgrade(url)
    engine = create_store_engine(url)
    try:
        tables = load_tables(province)
        answers, _ = bench().replay(tables, engine, scheme)
        truth = pd.read_parquet(province / "truth" / "flags.parquet")
        rings = set(truth.loc[truth["pattern"] == "resale_hub", "entity_id"])
        institutions = tables["institutions"]
        pharmacies = set(institutions.loc[institutions["kind"] == "pharmacy", "institution_id"])
        clean = pharmacies - set(truth.loc[truth["entity_type"] == "institution", "entity_id"])
        assert rings
        assert rings <= pharmacies
        end = tables["settlements"]["settled_at"].max().to_pydatetime()
        with engine.connect() as conn:
            rows = {
                r.entity_id: Account(r.lost, r.last_violation_day, r.year, r.year_points)
                for r in conn.execute(
                    select(credit_accounts).where(credit_accounts.c.entity_type == "institution")
                )
            }

        def score(i: str) -> int:
            return scheme.position(Party.INSTITUTION, i, rows.get(i, Account()), end).score

        assert max(score(i) for i in rings) < min(score(i) for i in clean)
        assert {scheme.grade(score(i)).name for i in clean} == {scheme.grades[0].name}
        by_grade: dict[str, Counter[str]] = defaultdict(Counter)
        for a in answers:
            by_grade[a["credit"]["institution"]["grade"]][a["decision"]] += 1

        def review_rate(grade: str) -> float:
            return by_grade[grade]["review"] / max(1, sum(by_grade[grade].values()))

        best, poor = scheme.grades[0], scheme.grades[-2]
        assert review_rate(poor.name) > 5 * review_rate(best.name)
        worst = by_grade[scheme.grades[-1].name]  # the black list: every settlement rejected
        assert worst["reject"] == sum(worst.values()) > 0
        online = credit.state(engine)
        credit.recompute(engine, scheme)
        assert credit.state(engine) == online
    finally:
        engine.dispose()
