"""The rule base over a simulated province, against its truth.

``fundguard screen`` finds every planted catalog-rule case and nothing else (precision and
recall 1), flags no benign look-alike, and records on every flag the rules behind it and
the rule base's version and checksum. A new limit written in a rule file, and nothing
else, gives new hits: exactly the settlements that break it.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from rules.base import load_rulebase, shipped_bytes, shipped_rulebase
from serve.screening import rule_flags

RULE_PATTERNS = (
    "gender_restriction",
    "age_restriction",
    "over_frequency",
    "over_quantity",
    "split_admission",
)


def pairs(frame: pd.DataFrame, pattern: str) -> set[str]:
    return set(frame.loc[frame["pattern"] == pattern, "entity_id"])


@pytest.mark.parametrize("pattern", RULE_PATTERNS)
def test_batch_recall_and_precision_are_one(
    pattern: str, province: Path, province_flags: Path
) -> None:
    truth = pd.read_parquet(province / "truth" / "flags.parquet")
    flags = pd.read_parquet(province_flags / "flags.parquet")
    planted, found = pairs(truth, pattern), pairs(flags, pattern)
    assert planted, f"the simulator planted no {pattern}"
    assert found - planted == set(), "false positives"
    assert planted - found == set(), "missed"


def test_no_benign_look_alike_of_a_rule_is_flagged(province: Path, province_flags: Path) -> None:
    benign = pd.read_parquet(province / "truth" / "benign.parquet")
    benign = benign[benign["lookalike_of"].isin(RULE_PATTERNS)]
    assert set(benign["lookalike_of"]) >= {"over_frequency", "split_admission"}
    flags = pd.read_parquet(province_flags / "flags.parquet")
    assert set(benign["entity_id"]) & set(flags["entity_id"]) == set()


def test_every_flag_names_its_rules_and_the_rule_base(province_flags: Path) -> None:
    flags = pd.read_parquet(province_flags / "flags.parquet")
    rulebase = shipped_rulebase()
    by_pattern = {r.pattern: r for r in rulebase.rules}
    assert set(flags["pattern"]) >= set(RULE_PATTERNS)
    for row in flags.itertuples():
        evidence = json.loads(row.evidence)
        assert evidence["rulebase"] == {"version": rulebase.version, "sha256": rulebase.checksum}
        rule = by_pattern[row.pattern]
        assert evidence["rule_id"] == rule.id
        assert evidence["rule_ids"] == [rule.id]
        assert row.action == rule.action.value
        assert row.score == 1.0
        assert row.amount_at_risk > 0
        if row.pattern in RULE_PATTERNS:
            assert evidence["facts"], row
    sample = json.loads(flags.loc[flags["pattern"] == "over_frequency", "evidence"].iloc[0])
    (facts,) = sample["facts"]
    assert facts["times_in_period"] > facts["max_times"]
    assert sample["earlier_settlements"]
    assert sample["lines"] == [facts["line_no"]]


CBC = "250101001"  # 血常规: no frequency limit in the catalog


def cbc_breaches(province: Path, max_times: int, period_days: int) -> set[str]:
    """The settlements that bill 血常规 beyond the new limit, computed here without the
    rule executor: a patient's quantity in (t - period, t], reversed ones left out."""
    con = duckdb.connect()
    lines = (
        con.sql(
            f"""
        SELECT s.settlement_id, s.patient_id, s.settled_at, r.reversed_at, i.quantity
        FROM '{province}/settlement_items.parquet' i
        JOIN '{province}/settlements.parquet' s USING (settlement_id)
        LEFT JOIN '{province}/reversals.parquet' r USING (settlement_id)
        WHERE i.item_type = 'service' AND i.item_code = '{CBC}'
        """  # noqa: S608 - a test's own paths
        )
        .to_arrow_table()
        .to_pandas()
    )
    keys = ["settlement_id", "patient_id", "settled_at", "reversed_at"]
    lines = lines.groupby(keys, dropna=False)["quantity"].sum().reset_index()
    pairs = lines.merge(lines, on="patient_id", suffixes=("", "_other"))
    t, other = pairs["settled_at"], pairs["settled_at_other"]
    counts = pairs[
        (other > t - pd.Timedelta(days=period_days))
        & (other <= t)
        & ~(pairs["reversed_at_other"].notna() & (pairs["reversed_at_other"] <= t))
    ]
    totals = counts.groupby("settlement_id")["quantity_other"].sum()
    return set(totals[totals > max_times].index)


def test_a_new_frequency_limit_as_data_alone_gives_new_hits(
    province: Path, province_flags: Path, tmp_path: Path
) -> None:
    new_rule = f"""
  - id: OF101
    template: over_frequency
    params: {{items: ["{CBC}"], max_times: 2, period_days: 30}}
    action: review
    severity: low
    message: {{zh: 血常规30天内超过2次, en: full blood count more than twice in 30 days}}
    examples:
      hit: [{{times_in_period: 3}}]
      no_hit: [{{times_in_period: 2}}]
"""
    path = tmp_path / "rulebase.yaml"
    path.write_bytes(
        shipped_bytes().replace(b'version: "2025.1"', b'version: "2025.2"') + new_rule.encode()
    )
    changed = load_rulebase(path)
    assert changed.version == "2025.2"
    assert changed.checksum != shipped_rulebase().checksum
    flags = rule_flags(province, rulebase=changed)
    by_rule = {
        f.entity_id
        for f in flags
        if f.pattern == "over_frequency" and "OF101" in f.evidence["rule_ids"]  # type: ignore[operator]
    }
    expected = cbc_breaches(province, max_times=2, period_days=30)
    assert expected, "the province has no patient with 血常规 three times in 30 days"
    assert by_rule == expected
    before = pd.read_parquet(province_flags / "flags.parquet")
    assert by_rule - pairs(before, "over_frequency"), "nothing new"
    assert all(f.evidence["rulebase"]["version"] == "2025.2" for f in flags)  # type: ignore[index]
