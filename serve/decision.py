"""The decision policy, in one place: hard facts reject; nothing else found, the settlement passes.

Every hit carries the id of the rule that produced it and the action that rule asks for,
both from the rule base (``rules``); the decision is the strongest action among the hits
(``reject`` > ``review`` > ``pass``). ``info`` hits are reported and decide nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from rules.base import Action, RuleBase, shipped_rulebase
from serve.schemas import Decision, HitOut
from traceability.ledger import CodeCheckHit

ACTION_DECISIONS: Final = {
    Action.REJECT: Decision.REJECT,
    Action.REVIEW: Decision.REVIEW,
    Action.INFO: Decision.PASS,  # reported, decides nothing
}
"""What a rule's action asks of the settlement."""

_STRENGTH: Final = {Decision.PASS: 0, Decision.REVIEW: 1, Decision.REJECT: 2}


def code_hits(hits: Sequence[CodeCheckHit], rulebase: RuleBase | None = None) -> list[HitOut]:
    """The trace-code checks that fired, as hits of the rule base's trace-code rules (the
    one in force unless given): each rule's id, action and message."""
    rulebase = rulebase or shipped_rulebase()
    return [
        HitOut(
            rule_id=rule.id,
            pattern=hit.pattern.value,
            action=ACTION_DECISIONS[rule.action],
            line_no=hit.line_no,
            message=f"{rule.message}: {hit.reason}" if hit.reason else rule.message,
        )
        for hit in hits
        for rule in rulebase.for_pattern(hit.pattern.value)
    ]


def decide(hits: Sequence[HitOut]) -> tuple[Decision, float]:
    """The decision and its risk score (1 for a hard fact) from the hits."""
    decision = max((hit.action for hit in hits), key=_STRENGTH.__getitem__, default=Decision.PASS)
    risk = {Decision.REJECT: 1.0, Decision.REVIEW: 0.5, Decision.PASS: 0.0}[decision]
    return decision, risk
