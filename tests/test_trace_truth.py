"""The five trace-code patterns on a simulated province, against its truth, batch and online.

Batch: ``fundguard screen`` finds every planted case and nothing else (precision and
recall 1), and flags no benign look-alike. Online: replaying the same history in time
order through the scorer gives exactly the batch flags (the parity DESIGN.md demands).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, Table, select

from features.store import patient_history
from serve.loading import load_folder
from serve.replay import replay
from serve.store import create_store_engine, upgrade
from traceability.store import ledger_codes, ledger_entries

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


def stored(engine: Engine, table: Table, *columns: str) -> set[tuple[object, ...]]:
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(select(*(table.c[c] for c in columns)))}


@pytest.mark.slow
def test_replaying_the_province_online_gives_exactly_the_batch_flags_and_state(
    province: Path, province_flags: Path, tmp_path: Path
) -> None:
    """Online, in time order, the scorer finds what batch screening finds; and the store it
    leaves (ledger, patient history) is the one ``fundguard load`` builds from the batch."""
    online_url = f"sqlite:///{tmp_path / 'online.db'}"
    upgrade(online_url)
    online = create_store_engine(online_url)
    batch_url = f"sqlite:///{tmp_path / 'batch.db'}"
    load_folder(province, batch_url)
    batch = create_store_engine(batch_url)
    try:
        found = {(r.settlement_id, p) for r in replay(province, online) for p in r.patterns}
        flags = pd.read_parquet(province_flags / "flags.parquet")
        flags = flags[flags["entity_type"] == "settlement"]  # every rule, not only codes
        assert found == set(zip(flags["entity_id"], flags["pattern"], strict=True))
        ledger = ("settlement_id", "line_no", "position", "canonical_code", "units", "released_at")
        assert stored(online, ledger_entries, *ledger) == stored(batch, ledger_entries, *ledger)

        def outstanding(engine: Engine) -> set[tuple[object, ...]]:  # a 0 row holds nothing
            rows = stored(engine, ledger_codes, "canonical_code", "full_units", "split_units")
            return {r for r in rows if r[1] or r[2]}

        assert outstanding(online) == outstanding(batch)
        history = ("settlement_id", "line_no", "patient_id", "item_code", "quantity",
                   "admit_date", "discharge_date", "diagnosis_code", "reversed_at")  # fmt: skip
        assert stored(online, patient_history, *history) == stored(batch, patient_history, *history)
    finally:
        online.dispose()
        batch.dispose()
