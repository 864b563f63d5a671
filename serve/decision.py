"""The decision policy, in one place: hard facts reject; nothing else found, the settlement passes.

Every hit carries the id of the rule that produced it and the action that rule asks for;
the decision is the strongest action among the hits (``reject`` > ``review`` > ``pass``).
``info`` hits are reported and decide nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from serve.schemas import Decision, HitOut
from traceability.checks import TracePattern
from traceability.ledger import CodeCheckHit

TRACE_RULES: Final = {
    TracePattern.MISSING: "TC001",
    TracePattern.DUPLICATE: "TC002",
    TracePattern.SPLIT_OVERRUN: "TC003",
    TracePattern.MISMATCH: "TC004",
    TracePattern.UNPURCHASED: "TC005",
}
"""The trace-code checks as rules: each a hard fact whose action is ``reject``."""

_STRENGTH: Final = {Decision.PASS: 0, Decision.REVIEW: 1, Decision.REJECT: 2}


def code_hits(hits: Sequence[CodeCheckHit]) -> list[HitOut]:
    return [
        HitOut(
            rule_id=TRACE_RULES[hit.pattern],
            pattern=hit.pattern.value,
            action=Decision.REJECT,
            line_no=hit.line_no,
            message=hit.message,
        )
        for hit in hits
    ]


def decide(hits: Sequence[HitOut]) -> tuple[Decision, float]:
    """The decision and its risk score (1 for a hard fact) from the hits."""
    decision = max((hit.action for hit in hits), key=_STRENGTH.__getitem__, default=Decision.PASS)
    risk = {Decision.REJECT: 1.0, Decision.REVIEW: 0.5, Decision.PASS: 0.0}[decision]
    return decision, risk
