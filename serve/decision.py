"""The decision policy, in one place: the strongest action among the rules that fired and
the model.

Every hit carries the id of the rule that produced it and the action that rule asks for,
both from the rule base (``rules``): ``reject`` (a hard fact: do not pay) beats
``review`` (pay, then inspect) beats nothing; ``info`` hits are reported and decide
nothing. A rule that errored decides nothing either (its execution says so).

The model never rejects: a champion's calibrated score at or above its review threshold
(the model's own, or ``model_review_threshold`` from the settings) is a ``review`` hit
(rule id ``MODEL``) that names the features behind it. The risk score is 1 for a
rejected settlement, else the model's score, else 0.5 for review and 0 for pass.

Credit (医保信用, ``rules.credit``) moves the bar: the poorest grade among the settlement's
institution, patient and doctor multiplies the model's and the watch list's review
thresholds by its ``review_bar`` (a poor grade sends more to review); the institution's
grade draws a share of its settlements for review (``sample_review``, 分级分类监管) and at
the worst grade puts it on the black list (the ``blacklisted_institution`` rule fires); a
doctor whose yearly record reached its limit (医保支付资格暂停) sends the settlement to
review. Those hits carry rule id ``CREDIT`` and never cost credit themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from rules.base import Action
from rules.credit import CREDIT_RULE_ID, Party, Standing
from rules.online import Execution, Outcome
from serve.model import ModelSignal
from serve.schemas import Decision, HitOut

MODEL_RULE_ID: Final = "MODEL"
MODEL_PATTERN: Final = "anomalous_settlement"

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


def model_hits(signal: ModelSignal) -> list[HitOut]:
    """The model's hit when its score asks for review (none otherwise, or when degraded)."""
    if not signal.asks_review or signal.score is None or signal.threshold is None:
        return []
    why = ", ".join(f"{r.feature}={r.value:.4g}" for r in signal.reasons)
    return [
        HitOut(
            rule_id=MODEL_RULE_ID,
            pattern=MODEL_PATTERN,
            action=Action.REVIEW,
            message=(
                f"模型风险评分 {signal.score:.2f} ≥ {signal.threshold:.2f}"
                f" (model {signal.name} v{signal.version}): {why}"
            ),
        )
    ]


def decide(hits: Sequence[HitOut], signal: ModelSignal | None = None) -> tuple[Decision, float]:
    """The decision and its risk score from the hits (the model's included) and the model."""
    decision = max(
        (_DECISION.get(hit.action, Decision.PASS) for hit in hits),
        key=_STRENGTH.__getitem__,
        default=Decision.PASS,
    )
    if decision is not Decision.REJECT and signal is not None and signal.score is not None:
        return decision, round(signal.score, 4)
    return decision, _RISK[decision]


def lowered(signal: ModelSignal, review_bar: float) -> ModelSignal:
    """The model's signal with its review threshold multiplied by a credit grade's bar."""
    if review_bar >= 1.0 or signal.threshold is None or signal.score is None:
        return signal
    return dataclasses.replace(signal, threshold=round(signal.threshold * review_bar, 6))


def credit_hits(standing: Standing | None, settlement_id: str) -> list[HitOut]:
    """The credit policy's own hits: a suspended doctor, a settlement drawn for review by
    its institution's grade."""
    if standing is None:
        return []
    hits = []
    doctor = standing.suspended_doctor
    if doctor is not None:
        hits.append(
            HitOut(
                rule_id=CREDIT_RULE_ID,
                pattern="suspended_doctor",
                action=Action.REVIEW,
                message=f"医师医保支付资格暂停: {doctor.entity_id} has {doctor.year_points}"
                " points on this year's record / the doctor may not bill the fund",
            )
        )
    institution = standing.of(Party.INSTITUTION)
    if institution is not None and standing.sampled(settlement_id):
        grade = institution.grade
        hits.append(
            HitOut(
                rule_id=CREDIT_RULE_ID,
                pattern="credit_supervision",
                action=Action.REVIEW,
                message=f"信用等级 {grade.name} ({grade.supervision or grade.label}): drawn for"
                f" review ({grade.sample_review:.0%} of the institution's settlements)",
            )
        )
    return hits
