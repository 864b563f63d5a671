"""The rule base over a whole history, out of core, in DuckDB.

The caller hands over a DuckDB connection on which the contract tables are typed views
(``features.batch.open_history``). ``prepare`` builds the executor's own tables once:
``rule_lines`` (every drug and service line with its settlement, patient, age on the local
settlement date and reversal), ``rule_catalog`` (drugs and services as one knowledge base)
and ``rule_blacklist``. Each rule's template computes the facts of every line (or
settlement) with its ``batch_sql``; its predicate then runs over those facts in batches of
rows, exactly as it runs over the facts of one settlement online. The trace-code rules
take their hits from ``traceability.batch.screen_codes`` (run once, in rounds).

A hit is one rule on one settlement, with the lines and the facts behind it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import duckdb
import numpy as np
import pyarrow as pa

from rules.base import Action, Rule, RuleBase
from rules.templates import TraceCode, TraceCodeParams
from traceability.batch import CodeHit, materialise, screen_codes

BATCH_ROWS: Final = 500_000

_PREPARE_SQL: Final = """
CREATE OR REPLACE TEMP TABLE rule_catalog AS
    SELECT 'drug' AS item_type, drug_code AS item_code, gender_restriction, min_age, max_age,
           max_units_per_day, NULL::BIGINT AS max_times, NULL::BIGINT AS period_days
    FROM drugs
    UNION ALL
    SELECT 'service', service_code, gender_restriction, min_age, max_age,
           NULL::BIGINT, max_times, period_days
    FROM services;
CREATE OR REPLACE TEMP TABLE rule_lines AS
    SELECT i.settlement_id, i.line_no, i.item_type, i.item_code, i.quantity, i.amount,
           s.patient_id, s.institution_id, epoch_us(s.settled_at) AS t_us,
           epoch_us(r.reversed_at) AS r_us, p.gender AS patient_gender,
           -- whole years of age on the local (session time zone) settlement date
           year(s.settled_at::DATE) - year(p.birth_date)
             - CASE WHEN month(s.settled_at::DATE) * 100 + day(s.settled_at::DATE)
                         < month(p.birth_date) * 100 + day(p.birth_date)
                    THEN 1 ELSE 0 END AS patient_age
    FROM settlement_items i
    JOIN settlements s USING (settlement_id)
    LEFT JOIN patients p USING (patient_id)
    LEFT JOIN reversals r USING (settlement_id)
    WHERE i.item_type IN ('drug', 'service');
"""

_NOT_FACTS: Final = ("settlement_id", "amount", "earlier_settlements")
"""Columns of a rule's facts SQL that its hit carries on its own, not among the facts."""


@dataclass(frozen=True)
class RuleHit:
    """One rule that fired on one settlement, with the lines and facts behind it."""

    settlement_id: str
    rule_id: str
    pattern: str
    action: Action
    line_nos: tuple[int, ...]
    amount_at_risk: Decimal
    facts: tuple[dict[str, Any], ...] = field(default=())
    """Per hit line (or the settlement): the facts and evidence columns, JSON-able."""
    earlier_settlements: tuple[str, ...] = field(default=())
    line_amounts: tuple[tuple[int, Decimal], ...] = field(default=())
    """(line_no, amount) of each hit line, when the rule knows them line by line."""
    codes: tuple[str, ...] = field(default=())
    reasons: tuple[str, ...] = field(default=())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def prepare(con: duckdb.DuckDBPyConnection, *, blacklist: Iterable[str] = ()) -> None:
    """Build the executor's tables on ``con`` (once per history and black list)."""
    con.execute(_PREPARE_SQL)
    materialise(
        con,
        "rule_blacklist",
        pa.table({"institution_id": pa.array(sorted(set(blacklist)), pa.string())}),
    )


def _column(batch: pa.RecordBatch, name: str) -> np.ndarray[Any, Any]:
    values: np.ndarray[Any, Any] = batch.column(name).to_numpy(zero_copy_only=False)
    return values


def _sql_hits(con: duckdb.DuckDBPyConnection, rule: Rule, slot: int) -> list[RuleHit]:
    """Run one rule's facts SQL and its predicate over the whole history."""
    template = rule.template
    items_table = f"rule_items_{slot}"
    table = template.items_table(rule.params)
    if table is not None:
        materialise(con, items_table, table)
    sql = template.batch_sql(rule.params, items_table)
    if sql is None:
        return []
    fact_names = list(template.facts_model.model_fields)
    rows: dict[str, list[dict[str, Any]]] = {}
    for batch in con.sql(sql).to_arrow_reader(BATCH_ROWS):
        if batch.num_rows == 0:
            continue
        facts = template.facts_of({name: _column(batch, name) for name in fact_names})
        fired = np.asarray(template.predicate(rule.params, facts), dtype=bool)
        fired = np.broadcast_to(fired, (batch.num_rows,))
        if not fired.any():
            continue
        for row in batch.filter(pa.array(fired)).to_pylist():
            rows.setdefault(row["settlement_id"], []).append(row)
    hits = []
    for settlement_id in sorted(rows):
        found = sorted(rows[settlement_id], key=lambda r: r["line_no"] or 0)
        amounts = {r["line_no"]: r["amount"] or Decimal("0") for r in found}
        earlier = sorted({s for r in found for s in r.get("earlier_settlements") or ()})
        hits.append(
            RuleHit(
                settlement_id=settlement_id,
                rule_id=rule.id,
                pattern=rule.pattern,
                action=rule.action,
                line_nos=tuple(r["line_no"] for r in found if r["line_no"] is not None),
                amount_at_risk=sum(amounts.values(), Decimal("0")),
                facts=tuple(
                    {
                        k: _jsonable(v)
                        for k, v in r.items()
                        if k not in _NOT_FACTS and not (k == "line_no" and v is None)
                    }
                    for r in found
                ),
                earlier_settlements=tuple(earlier),
                line_amounts=tuple((n, a) for n, a in amounts.items() if n is not None),
            )
        )
    if table is not None:
        con.execute(f"DROP TABLE IF EXISTS {items_table}")
    return hits


def _code_rule_hits(rule: Rule, code_hits: Iterable[CodeHit]) -> list[RuleHit]:
    assert isinstance(rule.params, TraceCodeParams)  # noqa: S101 - trace_code's params
    check = rule.params.check
    return [
        RuleHit(
            settlement_id=hit.settlement_id,
            rule_id=rule.id,
            pattern=rule.pattern,
            action=rule.action,
            line_nos=hit.line_nos,
            amount_at_risk=hit.amount_at_risk,
            earlier_settlements=hit.earlier_settlements,
            codes=hit.codes,
            reasons=hit.reasons,
        )
        for hit in code_hits
        if hit.pattern is check
    ]


class BatchRules:
    """The rule executor over one history: ``prepare`` once, then ``run`` any rule base.

    The trace-code screening (``screen_codes``, which depends on no rule parameter) runs
    once, at the first rule base with a trace-code rule, and serves every later one.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, *, blacklist: Iterable[str] = ()) -> None:
        self.con = con
        self.blacklist = frozenset(blacklist)
        self._code_hits: list[CodeHit] | None = None
        self._prepared = False

    def code_hits(self) -> list[CodeHit]:
        if self._code_hits is None:
            self._code_hits = screen_codes(self.con)
        return self._code_hits

    def run(self, rulebase: RuleBase) -> list[RuleHit]:
        """Every hit of the enabled rules of ``rulebase``, by rule then settlement."""
        hits: list[RuleHit] = []
        for slot, rule in enumerate(rulebase.enabled):
            if isinstance(rule.template, TraceCode):
                hits.extend(_code_rule_hits(rule, self.code_hits()))
            else:
                # the catalog rules' tables, built at the first of them: a rule base of
                # trace-code rules alone (``code_flags``) never pays for them
                if not self._prepared:
                    prepare(self.con, blacklist=self.blacklist)
                    self._prepared = True
                hits.extend(_sql_hits(self.con, rule, slot))
        return hits


def screen_rules(
    con: duckdb.DuckDBPyConnection, rulebase: RuleBase, *, blacklist: Iterable[str] = ()
) -> list[RuleHit]:
    """Every hit of ``rulebase`` over the history on ``con``."""
    return BatchRules(con, blacklist=blacklist).run(rulebase)


# --- flags: one per (settlement, pattern) ---------------------------------------------------


@dataclass(frozen=True)
class SettlementFinding:
    """The hits of one pattern on one settlement (what a flag says, CONTRACT.md §5): its
    action is the strongest of the rules that hit."""

    settlement_id: str
    pattern: str
    action: Action
    amount_at_risk: Decimal
    hits: tuple[RuleHit, ...]

    def evidence(self, rulebase: RuleBase) -> dict[str, Any]:
        deciding = self.hits[0]
        lines = sorted({n for h in self.hits for n in h.line_nos})
        out: dict[str, Any] = {
            "rule_id": deciding.rule_id,
            "rule_ids": [h.rule_id for h in self.hits],
            "lines": lines,
            "earlier_settlements": sorted({s for h in self.hits for s in h.earlier_settlements}),
            "rulebase": rulebase.stamp(),
        }
        codes = [c for h in self.hits for c in h.codes]
        if codes:
            out["codes"] = list(dict.fromkeys(codes))
        reasons = sorted({r for h in self.hits for r in h.reasons})
        if reasons:
            out["reasons"] = reasons
        facts = [{"rule_id": h.rule_id, **f} for h in self.hits for f in h.facts]
        if facts:
            out["facts"] = facts
        return out


def findings(hits: Iterable[RuleHit]) -> list[SettlementFinding]:
    """The hits grouped by (settlement, pattern), strongest rule first."""
    grouped: dict[tuple[str, str], list[RuleHit]] = {}
    for hit in hits:
        grouped.setdefault((hit.settlement_id, hit.pattern), []).append(hit)
    out = []
    for (settlement_id, pattern), group in sorted(grouped.items()):
        group.sort(key=lambda h: (-h.action.strength, h.rule_id))
        if all(h.line_amounts for h in group):  # the same line hit by two rules counts once
            amount = sum(dict(a for h in group for a in h.line_amounts).values(), Decimal("0"))
        else:  # rules of one pattern on one settlement: the same lines, or the settlement
            amount = max(h.amount_at_risk for h in group)
        out.append(
            SettlementFinding(
                settlement_id=settlement_id,
                pattern=pattern,
                action=group[0].action,
                amount_at_risk=amount,
                hits=tuple(group),
            )
        )
    return out


# --- backtest: what a changed rule file would flag differently ------------------------------


@dataclass(frozen=True)
class RuleDiff:
    """One rule id's hits under the rule base in force and under the candidate file
    (``None``: the rule is absent or disabled in that file)."""

    rule_id: str
    pattern: str
    in_force: int | None
    candidate: int | None
    added: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


@dataclass(frozen=True)
class FlagChange:
    """A flag (settlement, pattern) that the candidate adds, removes, or gives another action."""

    settlement_id: str
    pattern: str
    before: Action | None
    after: Action | None
    rule_ids: tuple[str, ...]

    @property
    def kind(self) -> str:
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        return "action"


@dataclass(frozen=True)
class Backtest:
    in_force: RuleBase
    candidate: RuleBase
    rules: tuple[RuleDiff, ...]
    flags: tuple[FlagChange, ...]

    def count(self, kind: str) -> int:
        return sum(1 for f in self.flags if f.kind == kind)


def backtest(
    con: duckdb.DuckDBPyConnection,
    in_force: RuleBase,
    candidate: RuleBase,
    *,
    blacklist: Iterable[str] = (),
) -> Backtest:
    """Run both rule bases over the history on ``con`` and compare, rule by rule and flag by
    flag. The trace-code screening runs once for both."""
    executor = BatchRules(con, blacklist=blacklist)
    before_hits, after_hits = executor.run(in_force), executor.run(candidate)

    def by_rule(hits: list[RuleHit]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for h in hits:
            out.setdefault(h.rule_id, set()).add(h.settlement_id)
        return out

    before, after = by_rule(before_hits), by_rule(after_hits)
    enabled_before = {r.id: r for r in in_force.enabled}
    enabled_after = {r.id: r for r in candidate.enabled}
    diffs = []
    for rule_id in sorted(enabled_before.keys() | enabled_after.keys()):
        rule = enabled_after.get(rule_id) or enabled_before[rule_id]
        old, new = before.get(rule_id, set()), after.get(rule_id, set())
        diffs.append(
            RuleDiff(
                rule_id=rule_id,
                pattern=rule.pattern,
                in_force=len(old) if rule_id in enabled_before else None,
                candidate=len(new) if rule_id in enabled_after else None,
                added=tuple(sorted(new - old)),
                removed=tuple(sorted(old - new)),
            )
        )
    old_flags = {(f.settlement_id, f.pattern): f for f in findings(before_hits)}
    new_flags = {(f.settlement_id, f.pattern): f for f in findings(after_hits)}
    changes = []
    for key in sorted(old_flags.keys() | new_flags.keys()):
        old_f, new_f = old_flags.get(key), new_flags.get(key)
        before_action = old_f.action if old_f else None
        after_action = new_f.action if new_f else None
        if before_action == after_action:
            continue
        shown = new_f or old_f
        assert shown is not None  # noqa: S101 - the key came from one of them
        changes.append(
            FlagChange(
                settlement_id=key[0],
                pattern=key[1],
                before=before_action,
                after=after_action,
                rule_ids=tuple(h.rule_id for h in shown.hits),
            )
        )
    return Backtest(in_force, candidate, tuple(diffs), tuple(changes))
