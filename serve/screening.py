"""Batch screening (CONTRACT.md §5): a folder of contract tables in, flags out.

Every detector contributes flags of the same shape; this module gathers them and writes
``flags.parquet`` and ``flags.csv`` (one row per flag) and ``groups.parquet`` (one row per
member of each flagged group). Flag ids are derived from what the flag says (pattern and
entity), so screening the same history twice gives the same ids.

The rule base (``rules``: the trace-code checks and the catalog rules) gives one flag per
(settlement, pattern): its action is the strongest of the rules that hit, its evidence
names them, the lines and facts behind the hit, and the rule base's version and checksum.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.batch import open_history
from rules.base import RuleBase, shipped_rulebase
from rules.batch import BatchRules, findings
from rules.templates import TraceCode

FLAG_SCHEMA: Final = pa.schema(
    [
        ("flag_id", pa.string()),
        ("entity_type", pa.string()),
        ("entity_id", pa.string()),
        ("pattern", pa.string()),
        ("score", pa.float64()),
        ("action", pa.string()),
        ("amount_at_risk", pa.decimal128(18, 2)),
        ("evidence", pa.string()),
    ]
)
GROUP_SCHEMA: Final = pa.schema(
    [("group_id", pa.string()), ("patient_id", pa.string()), ("institution_id", pa.string())]
)


@dataclass(frozen=True)
class Flag:
    """One finding about one entity (CONTRACT.md §4 and §5)."""

    entity_type: str
    entity_id: str
    pattern: str
    score: float
    action: str
    amount_at_risk: Decimal
    evidence: dict[str, object]

    @property
    def flag_id(self) -> str:
        key = f"{self.pattern}\x1f{self.entity_type}\x1f{self.entity_id}".encode()
        return "F" + hashlib.sha256(key).hexdigest()[:20]


@dataclass(frozen=True)
class ScreeningResult:
    flags: list[Flag]
    flags_path: Path
    groups_path: Path

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for flag in self.flags:
            counts[flag.pattern] = counts.get(flag.pattern, 0) + 1
        return dict(sorted(counts.items()))


def rule_flags(
    data_dir: Path,
    *,
    memory_limit: str = "4GB",
    rulebase: RuleBase | None = None,
    blacklist: Iterable[str] = (),
) -> list[Flag]:
    """The rule base (the one in force unless given) over the whole history of
    ``data_dir``: one flag per (settlement, pattern). ``blacklist``: institution ids on the
    black list (kept in the store; none by default)."""
    rulebase = rulebase or shipped_rulebase()
    con = open_history(data_dir, memory_limit=memory_limit)
    try:
        hits = BatchRules(con, blacklist=blacklist).run(rulebase)
    finally:
        con.close()
    return [
        Flag(
            entity_type="settlement",
            entity_id=finding.settlement_id,
            pattern=finding.pattern,
            score=1.0,
            action=finding.action.value,
            amount_at_risk=finding.amount_at_risk,
            evidence=finding.evidence(rulebase),
        )
        for finding in findings(hits)
    ]


def code_flags(
    data_dir: Path, *, memory_limit: str = "4GB", rulebase: RuleBase | None = None
) -> list[Flag]:
    """The trace-code rules alone over the whole history of ``data_dir``."""
    rulebase = rulebase or shipped_rulebase()
    trace_rules = tuple(r for r in rulebase.rules if isinstance(r.template, TraceCode))
    return rule_flags(
        data_dir, memory_limit=memory_limit, rulebase=replace(rulebase, rules=trace_rules)
    )


def write_flags(flags: Iterable[Flag], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(flags, key=lambda f: (f.pattern, f.entity_type, f.entity_id))
    table = pa.table(
        {
            "flag_id": [f.flag_id for f in ordered],
            "entity_type": [f.entity_type for f in ordered],
            "entity_id": [f.entity_id for f in ordered],
            "pattern": [f.pattern for f in ordered],
            "score": [f.score for f in ordered],
            "action": [f.action for f in ordered],
            "amount_at_risk": [f.amount_at_risk for f in ordered],
            "evidence": [
                json.dumps(f.evidence, ensure_ascii=False, sort_keys=True) for f in ordered
            ],
        },
        schema=FLAG_SCHEMA,
    )
    flags_path = out_dir / "flags.parquet"
    pq.write_table(table, flags_path)
    pacsv.write_csv(table, out_dir / "flags.csv")
    groups_path = out_dir / "groups.parquet"
    pq.write_table(GROUP_SCHEMA.empty_table(), groups_path)
    return flags_path, groups_path


def screen(
    data_dir: Path,
    out_dir: Path,
    *,
    memory_limit: str = "4GB",
    rulebase: RuleBase | None = None,
    blacklist: Iterable[str] = (),
) -> ScreeningResult:
    """Screen the (validated) history in ``data_dir`` and write the flags into ``out_dir``."""
    flags = rule_flags(data_dir, memory_limit=memory_limit, rulebase=rulebase, blacklist=blacklist)
    flags_path, groups_path = write_flags(flags, out_dir)
    return ScreeningResult(flags=flags, flags_path=flags_path, groups_path=groups_path)
