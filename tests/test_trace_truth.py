"""The five trace-code patterns on a simulated province, against its truth, batch and online.

Batch: ``fundguard screen`` finds every planted case and nothing else (precision and
recall 1), and flags no benign look-alike. Online: replaying the same history in time
order through the scorer gives exactly the batch flags (the parity DESIGN.md demands).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from serve.replay import replay
from serve.store import create_store_engine, upgrade

TRACE_PATTERNS = (
    "duplicate_trace_code",
    "split_sale_overrun",
    "trace_code_mismatch",
    "missing_trace_code",
    "unpurchased_trace_code",
)


def pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    frame = frame[frame["pattern"].isin(TRACE_PATTERNS)]
    return set(zip(frame["entity_id"], frame["pattern"], strict=True))


@pytest.mark.parametrize("pattern", TRACE_PATTERNS)
def test_batch_recall_and_precision_are_one(
    pattern: str, province: Path, province_flags: Path
) -> None:
    truth = pd.read_parquet(province / "truth" / "flags.parquet")
    flags = pd.read_parquet(province_flags / "flags.parquet")
    planted = {e for e, p in pairs(truth) if p == pattern}
    found = {e for e, p in pairs(flags) if p == pattern}
    assert planted, f"the simulator planted no {pattern}"
    assert found - planted == set(), "false positives"
    assert planted - found == set(), "missed"


def test_no_benign_look_alike_is_flagged(province: Path, province_flags: Path) -> None:
    benign = pd.read_parquet(province / "truth" / "benign.parquet")
    flags = pd.read_parquet(province_flags / "flags.parquet")
    flagged = set(zip(flags["entity_type"], flags["entity_id"], strict=True))
    look_alikes = set(zip(benign["entity_type"], benign["entity_id"], strict=True))
    assert look_alikes, "the simulator made no benign look-alikes"
    assert look_alikes & flagged == set()


def test_flags_follow_the_contract(province_flags: Path) -> None:
    flags = pd.read_parquet(province_flags / "flags.parquet")
    assert list(flags.columns) == [
        "flag_id", "entity_type", "entity_id", "pattern", "score", "action",
        "amount_at_risk", "evidence",
    ]  # fmt: skip
    assert flags["flag_id"].is_unique
    assert set(flags.loc[flags["pattern"].isin(TRACE_PATTERNS), "action"]) == {"reject"}
    assert flags["score"].between(0, 1).all()
    assert (
        pd.read_csv(province_flags / "flags.csv")["flag_id"].tolist() == flags["flag_id"].tolist()
    )
    assert set(pd.read_parquet(province_flags / "groups.parquet").columns) == {
        "group_id",
        "patient_id",
        "institution_id",
    }


@pytest.mark.slow
def test_replaying_the_province_online_gives_exactly_the_batch_flags(
    province: Path, province_flags: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    engine = create_store_engine(url)
    try:
        online = {(r.settlement_id, p) for r in replay(province, engine) for p in r.patterns}
    finally:
        engine.dispose()
    assert online == pairs(pd.read_parquet(province_flags / "flags.parquet"))
