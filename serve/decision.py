"""The decision policy, in one place: the strongest action among the rules that fired.

Every hit carries the id of the rule that produced it and the action that rule asks for,
both from the rule base (``rules``): ``reject`` (a hard fact: do not pay) beats
``review`` (pay, then inspect) beats nothing; ``info`` hits are reported and decide
nothing. A rule that errored decides nothing either (its execution says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from rules.base import Action
from rules.online import Execution, Outcome
from serve.schemas import Decision, HitOut

_DECISION: Final = {Action.REJECT: Decision.REJECT, Action.REVIEW: Decision.REVIEW}
_STRENGTH: Final = {Decision.PASS: 0, Decision.REVIEW: 1, Decision.REJECT: 2}
_RISK: Final = {Decision.REJECT: 1.0, Decision.REVIEW: 0.5, Decision.PASS: 0.0}


def rule_hits(executions: Sequence[Execution]) -> list[HitOut]:
    """One hit per rule and line it fired on (one per rule for settlement-level rules)."""
    hits = []
    for execution in executions:
        if execution.outcome is not Outcome.HIT:
            continue
        rule = execution.rule
        for line_no, facts in zip(execution.line_nos, execution.facts, strict=True):
            reason = facts.get("reason")
            hits.append(
                HitOut(
                    rule_id=rule.id,
                    pattern=rule.pattern,
                    action=rule.action,
                    line_no=line_no,
                    message=f"{rule.message}: {reason}" if reason else rule.message,
                )
            )
    return hits


def decide(hits: Sequence[HitOut]) -> tuple[Decision, float]:
    """The decision and its risk score (1 for a hard fact) from the hits."""
    decision = max(
        (_DECISION.get(hit.action, Decision.PASS) for hit in hits),
        key=_STRENGTH.__getitem__,
        default=Decision.PASS,
    )
    return decision, _RISK[decision]
