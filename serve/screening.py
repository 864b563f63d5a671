"""Batch screening (CONTRACT.md §5): a folder of contract tables in, flags out.

Every detector contributes flags of the same shape; this module gathers them and writes
``flags.parquet`` and ``flags.csv`` (one row per flag) and ``groups.parquet`` (one row per
member of each flagged group). Flag ids are derived from what the flag says (pattern and
entity), so screening the same history twice gives the same ids.

The rule base (``rules``: the trace-code checks and the catalog rules) gives one flag per
(settlement, pattern): its action is the strongest of the rules that hit, its evidence
names them, the lines and facts behind the hit, and the rule base's version and checksum.
The graph analyses (``models.graphs``) give ``group_admission`` (with the groups' members
in ``groups.parquet``), ``resale_hub`` and ``drug_hoarding``; the peer-group anomaly
detectors (``models.anomaly_flags``) give ``anomalous_institution`` and
``anomalous_settlement``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import pyarrow as pa

from features.batch import open_history
from features.flags import Flag, GroupMember, write_flags
from features.institution_features import institution_features
from features.settlement_features import settlement_features
from models.anomaly_flags import anomalous_institution_flags, anomalous_settlement_flags
from models.graphs import code_flow_flags, group_admission_flags
from rules.base import RuleBase, shipped_rulebase
from rules.batch import BatchRules, findings
from rules.templates import TraceCode
from traceability.batch import materialise


@dataclass(frozen=True)
class ScreeningResult:
    flags: list[Flag]
    members: list[GroupMember]
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
    con = open_history(data_dir, memory_limit=memory_limit)
    try:
        return _rule_flags(con, rulebase or shipped_rulebase(), blacklist)
    finally:
        con.close()


def _rule_flags(
    con: duckdb.DuckDBPyConnection, rulebase: RuleBase, blacklist: Iterable[str]
) -> list[Flag]:
    hits = BatchRules(con, blacklist=blacklist).run(rulebase)
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


def anomaly_flags(con: duckdb.DuckDBPyConnection, *, explained: Iterable[str]) -> list[Flag]:
    """``anomalous_institution`` (each institution against its peer group) and
    ``anomalous_settlement`` (a settlement far from those of its visit type that no rule or
    analysis already explains), from detectors fitted on this history: the province is its
    own reference."""
    institutions = institution_features(con)
    settlements = settlement_features(con)
    flagged = anomalous_settlement_flags(settlements, explained=set(explained))
    # the money at risk is the settlement's own fund_paid (DECIMAL), not the features' float
    ids = pa.table({"settlement_id": pa.array([f.entity_id for f in flagged], pa.string())})
    materialise(con, "anomalous_ids", ids)
    paid = dict(
        con.execute(
            "SELECT s.settlement_id, s.fund_paid FROM settlements s "
            "JOIN anomalous_ids USING (settlement_id)"
        ).fetchall()
    )
    flagged = [replace(f, amount_at_risk=paid[f.entity_id]) for f in flagged]
    return anomalous_institution_flags(institutions) + flagged


def screen(
    data_dir: Path,
    out_dir: Path,
    *,
    memory_limit: str = "4GB",
    rulebase: RuleBase | None = None,
    blacklist: Iterable[str] = (),
    models: bool = True,
) -> ScreeningResult:
    """Screen the (validated) history in ``data_dir`` and write the flags into ``out_dir``:
    the rule base, then (``models``) the graph analyses on the same connection (the code
    flows reuse the trace-code screening's resolved codes) and the anomaly detectors."""
    con = open_history(data_dir, memory_limit=memory_limit)
    members: list[GroupMember] = []
    try:
        flags = _rule_flags(con, rulebase or shipped_rulebase(), blacklist)
        if models:
            group_flags, members = group_admission_flags(con)
            flags += group_flags
            flags += code_flow_flags(con)
            flags += anomaly_flags(con, explained={f.entity_id for f in flags})
    finally:
        con.close()
    flags_path, groups_path = write_flags(flags, out_dir, members)
    return ScreeningResult(
        flags=flags, members=members, flags_path=flags_path, groups_path=groups_path
    )
