"""The snapshot of the whole rule base over a fixed simulated history (CONVENTIONS.md).

The small province of seed 7 screened with the rule base in force: every (settlement,
pattern) flagged, with the rule ids behind it and its action. Any change to a rule, a
template, the simulator or the screening shows here as a diff in review. When the change
is meant, write the new snapshot and commit it with the change:

    FUNDGUARD_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_rulebase_snapshot.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from rules.base import shipped_rulebase

SNAPSHOT = Path(__file__).parent / "snapshots" / "rulebase_small_seed7.json"


def _one_flag_a_line(snapshot: dict[str, object]) -> str:
    """JSON whose flags stand one a line, so that a review shows which ones changed."""
    head = json.dumps({k: v for k, v in snapshot.items() if k != "flags"}, ensure_ascii=False)
    flags = ",\n".join(json.dumps(f, ensure_ascii=False) for f in snapshot["flags"])  # type: ignore[attr-defined]
    return head[:-1] + ', "flags": [\n' + flags + "\n]}\n"


def test_the_rule_base_over_a_fixed_history_matches_its_snapshot(province_flags: Path) -> None:
    flags = pd.read_parquet(province_flags / "flags.parquet")
    rows = sorted(
        (
            f.entity_type,
            f.entity_id,
            f.pattern,
            f.action,
            sorted(json.loads(f.evidence)["rule_ids"]),
        )
        for f in flags.itertuples()
    )
    rulebase = shipped_rulebase()
    current = {
        "rulebase_version": rulebase.version,
        "counts": dict(sorted(flags.groupby("pattern").size().astype(int).to_dict().items())),
        "flags": [list(r) for r in rows],
    }
    if os.environ.get("FUNDGUARD_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(_one_flag_a_line(current))
    expected = json.loads(SNAPSHOT.read_text())
    assert current["counts"] == expected["counts"]
    assert current == expected
