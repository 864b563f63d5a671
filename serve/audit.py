"""The audit of past decisions: what was answered for a settlement, and why.

Every answer the scorer gives is stored before it leaves (``serve.scoring``) with the
rule base in force, every rule's execution and the latency; this module reads it back for
``GET /v1/decisions/{settlement_id}``.
"""

from __future__ import annotations

from sqlalchemy import Engine, select

from serve.schemas import (
    DecisionOut,
    ReversalOut,
    RuleBaseOut,
    RuleExecutionOut,
    ScoreOut,
)
from serve.tables import decisions, reversals, rule_executions


def explain(engine: Engine, settlement_id: str) -> DecisionOut | None:
    """The stored decision of ``settlement_id`` with its audit; None if it was never scored."""
    with engine.connect() as conn:
        row = conn.execute(
            select(decisions).where(decisions.c.settlement_id == settlement_id)
        ).first()
        if row is None:
            return None
        executions = conn.execute(
            select(rule_executions)
            .where(rule_executions.c.settlement_id == settlement_id)
            .order_by(rule_executions.c.rule_id)
        ).all()
        reversal = conn.execute(
            select(reversals).where(reversals.c.settlement_id == settlement_id)
        ).first()
    return DecisionOut(
        settlement_id=row.settlement_id,
        institution_id=row.institution_id,
        patient_id=row.patient_id,
        settled_at=row.settled_at,
        decided_at=row.decided_at,
        latency_us=row.latency_us,
        request_sha256=row.request_sha256,
        rulebase=RuleBaseOut(version=row.rulebase_version, sha256=row.rulebase_sha256),
        answer=ScoreOut.model_validate_json(row.response),
        rule_executions=[
            RuleExecutionOut(rule_id=e.rule_id, outcome=e.outcome, micros=e.micros, error=e.error)
            for e in executions
        ],
        reversal=None
        if reversal is None
        else ReversalOut(
            settlement_id=settlement_id,
            reversed_at=reversal.reversed_at,
            released_codes=reversal.released_codes,
        ),
    )
