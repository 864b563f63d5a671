"""Scoring one settlement: read the facts, decide, store the decision and consume the codes,
all in one transaction, then answer. Scoring the same settlement again answers the stored
decision and changes nothing.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import orjson
from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from features.settlement_features import SETTLEMENT_FEATURES
from features.store import HistoryLine, record_settlement, reverse_settlement
from rules.base import RuleBase, shipped_rulebase
from rules.credit import CreditScheme
from rules.online import LineView, SettlementView, evaluate
from serve import blacklist, cases, watchlist
from serve import credit as credit_accounts
from serve.decision import credit_hits, decide, lowered, model_hits, rule_hits
from serve.model import NO_MODEL, ModelInForce, ModelSignal
from serve.schemas import Decision, ItemType, ModelOut, ReversalOut, ScoreOut, SettlementIn
from serve.tables import decisions, reversals, rule_executions
from traceability.ledger import DrugLine, check_codes, release_codes
from traceability.store import MergedRead, many_rows


def _stored(conn: Connection, settlement_id: str) -> bytes | None:
    row = conn.execute(
        select(decisions.c.response).where(decisions.c.settlement_id == settlement_id)
    ).first()
    return row.response.encode() if row else None


def _view(settlement: SettlementIn) -> SettlementView:
    return SettlementView(
        settlement_id=settlement.settlement_id,
        institution_id=settlement.institution_id,
        patient_id=settlement.patient.patient_id,
        patient_gender=settlement.patient.gender.value,
        birth_date=settlement.patient.birth_date,
        settled_at=settlement.settled_at,
        visit_type=settlement.visit_type.value,
        lines=tuple(
            LineView(
                line_no=i.line_no,
                item_type=i.item_type.value,
                item_code=i.item_code,
                quantity=i.quantity,
                amount=i.amount,
                unit_price=i.unit_price,
                trace_codes=tuple(i.trace_codes or ()),
                split_sale=bool(i.split_sale),
            )
            for i in settlement.items
        ),
        admit_date=settlement.admit_date,
        discharge_date=settlement.discharge_date,
        diagnosis_code=settlement.diagnosis_code,
        doctor_id=settlement.doctor_id,
        total_amount=settlement.total_amount,
        fund_paid=settlement.fund_paid,
    )


_STANDING: Final = MergedRead(
    {
        "answer": select(decisions.c.response).where(
            decisions.c.settlement_id == bindparam("settlement")
        ),
        "blacklisted": blacklist.LISTED,
        "watched": watchlist.LOOKUP,
        "credit": credit_accounts.READ,
    }
)
"""The first statement of a scoring: the answer stored for the settlement if it was scored
before (``answer``), whether its institution is on the black list (``blacklisted``), the
watch-list entries of its patient and institution (``watched``) and the credit accounts of
its institution, patient and doctor (``credit``)."""

_NEW_DECISION: Final = insert(decisions)
_NEW_EXECUTIONS: Final = many_rows(insert(rule_executions), rule_executions.c.rule_id)


@dataclass(frozen=True)
class Scored:
    """The answer to one ``/v1/score`` request: the JSON body, and what metrics and logs
    need of it without parsing it again."""

    body: bytes
    decision: str
    hits: tuple[tuple[str, str], ...]
    """(rule id, action) of every hit."""
    degraded: bool
    replayed: bool
    """True when the answer is the one stored for an earlier request."""
    degraded_cause: str | None = None
    model_score: float | None = None
    challenger_version: str | None = None
    challenger_score: float | None = None
    """The challenger's shadow score: logged and stored, never deciding."""

    @classmethod
    def of_stored(cls, body: bytes) -> Scored:
        answer = orjson.loads(body)
        return cls(
            body=body,
            decision=answer["decision"],
            hits=tuple((h["rule_id"], h["action"]) for h in answer["hits"]),
            degraded=bool(answer["degraded"]),
            replayed=True,
        )


def score(
    engine: Engine,
    settlement: SettlementIn,
    raw_body: bytes,
    rulebase: RuleBase | None = None,
    model: ModelInForce | None = None,
    watch_review_threshold: float = 0.5,
    credit: CreditScheme | None = None,
) -> Scored:
    """The answer for ``settlement``: the stored one if it was scored before.

    ``rulebase``: the rule base in force (the shipped one unless given); ``model``: the
    model in force (none: the answer is degraded and says so); the watch list (``screen
    --store``) turns a flagged patient's or institution's settlement into ``review`` at
    ``watch_review_threshold``; ``credit``: the credit scheme in force (none: credit is
    neither read nor moved), whose grades of the institution, patient and doctor lower
    the review bar and whose accounts the decision moves, in the same transaction."""
    started = time.perf_counter()
    rulebase = rulebase or shipped_rulebase()
    try:
        with engine.begin() as conn:
            known = _STANDING.read(
                conn,
                {
                    "settlement": settlement.settlement_id,
                    "institution": settlement.institution_id,
                    "patient": settlement.patient.patient_id,
                    "doctor": settlement.doctor_id,
                },
            )
            if known["answer"]:
                return Scored.of_stored(known["answer"][0].response.encode())
            lines = [
                DrugLine(
                    line_no=item.line_no,
                    item_code=item.item_code,
                    quantity=item.quantity,
                    amount=item.amount,
                    split_sale=bool(item.split_sale),
                    trace_codes=tuple(item.trace_codes or ()),
                )
                for item in settlement.items
                if item.item_type is ItemType.DRUG
            ]
            checked = check_codes(
                conn,
                settlement_id=settlement.settlement_id,
                institution_id=settlement.institution_id,
                settled_at=settlement.settled_at,
                lines=lines,
            )
            view = _view(settlement)
            standing = (
                credit_accounts.standing_of(
                    known["credit"],
                    credit,
                    institution_id=settlement.institution_id,
                    patient_id=settlement.patient.patient_id,
                    doctor_id=settlement.doctor_id,
                    at=settlement.settled_at,
                )
                if credit is not None
                else None
            )
            bar = standing.review_bar if standing is not None else 1.0
            executions = evaluate(
                conn,
                rulebase,
                view,
                trace_hits=checked.hits,
                blacklisted=bool(known["blacklisted"])
                or (standing is not None and standing.blacklisted),
            )
            # the model reads the patient's history before this settlement joins it
            signal = model.signal(conn, view) if model else ModelSignal(reason=NO_MODEL)
            hits = (
                rule_hits(executions)
                + model_hits(lowered(signal, bar))
                + watchlist.hits_of(known["watched"], view, watch_review_threshold * bar)
                + credit_hits(standing, settlement.settlement_id)
            )
            decision, risk = decide(hits, signal)
            if decision is not Decision.REJECT:  # a rejected settlement takes no pack
                checked.consume()
            record_settlement(
                conn,
                settlement_id=settlement.settlement_id,
                patient_id=settlement.patient.patient_id,
                institution_id=settlement.institution_id,
                settled_at=settlement.settled_at,
                lines=[
                    HistoryLine(item.line_no, item.item_type.value, item.item_code, item.quantity)
                    for item in settlement.items
                ],
                admit_date=settlement.admit_date,
                discharge_date=settlement.discharge_date,
                diagnosis_code=settlement.diagnosis_code,
                visit_type=settlement.visit_type.value,
                total_amount=settlement.total_amount,
                fund_paid=settlement.fund_paid,
            )
            answer = ScoreOut(
                settlement_id=settlement.settlement_id,
                decision=decision,
                risk_score=risk,
                hits=hits,
                model=ModelOut(name=signal.name, version=signal.version, score=signal.score),
                credit=standing.as_json() if standing is not None else {},
                degraded=signal.degraded,
                degraded_reason=signal.reason,
            )
            body = orjson.dumps(answer.model_dump(mode="json"))
            conn.execute(
                _NEW_DECISION,
                {
                    "settlement_id": settlement.settlement_id,
                    "institution_id": settlement.institution_id,
                    "patient_id": settlement.patient.patient_id,
                    "settled_at": settlement.settled_at,
                    "decision": decision.value,
                    "risk_score": risk,
                    "request_sha256": hashlib.sha256(raw_body).hexdigest(),
                    "response": body.decode(),
                    "latency_us": int((time.perf_counter() - started) * 1e6),
                    "decided_at": datetime.now(UTC),
                    "rulebase_version": rulebase.version,
                    "rulebase_sha256": rulebase.checksum,
                    "model_name": signal.name,
                    "model_version": signal.version,
                    "model_score": None if signal.score is None else round(signal.score, 4),
                    "feature_set": SETTLEMENT_FEATURES.tag if signal.name else None,
                    "degraded": signal.degraded,
                    "degraded_reason": signal.reason,
                    "challenger_version": signal.challenger_version,
                    "challenger_score": None
                    if signal.challenger_score is None
                    else round(signal.challenger_score, 4),
                    "doctor_id": settlement.doctor_id,
                    "fund_paid": settlement.fund_paid,
                },
            )
            conn.execute(
                _NEW_EXECUTIONS[conn.dialect.name],
                [
                    {
                        "settlement_id": settlement.settlement_id,
                        "rule_id": e.rule.id,
                        "outcome": e.outcome.value,
                        "micros": e.micros,
                        "error": e.error or None,
                    }
                    for e in executions
                ],
            )
            cases.file_decision(  # a review or reject files its settlement's case
                conn, settlement=settlement, decision=decision.value, hits=hits,
                model_score=signal.score,
            )  # fmt: skip
            if credit is not None:  # last: the account rows stay locked until the commit
                credit_accounts.apply_decision(
                    conn,
                    credit,
                    settlement_id=settlement.settlement_id,
                    institution_id=settlement.institution_id,
                    patient_id=settlement.patient.patient_id,
                    doctor_id=settlement.doctor_id,
                    settled_at=settlement.settled_at,
                    decision=decision.value,
                    hits=[(h.rule_id, h.pattern, h.action.value) for h in hits],
                    fund_paid=settlement.fund_paid,
                )
            return Scored(
                body=body,
                decision=decision.value,
                hits=tuple((h.rule_id, h.action.value) for h in hits),
                degraded=answer.degraded,
                replayed=False,
                degraded_cause=signal.cause,
                model_score=signal.score,
                challenger_version=signal.challenger_version,
                challenger_score=signal.challenger_score,
            )
    except IntegrityError:
        # another worker stored this settlement's decision first: answer that one
        with engine.begin() as conn:
            stored = _stored(conn, settlement.settlement_id)
        if stored is None:
            raise
        return Scored.of_stored(stored)


class UnknownSettlement(LookupError):
    pass


def reverse(engine: Engine, settlement_id: str, reversed_at: datetime) -> ReversalOut:
    """Record a reversal (退费) and release the settlement's codes; repeating changes nothing.

    The reversal row is written first: a second worker reversing the same settlement
    at the same moment waits on its key, then finds it and answers what was recorded.
    """
    try:
        with engine.begin() as conn:
            recorded = _recorded_reversal(conn, settlement_id)
            if recorded is not None:
                return recorded
            decided = conn.execute(
                select(decisions.c.decision).where(decisions.c.settlement_id == settlement_id)
            ).first()
            if decided is None:
                raise UnknownSettlement(settlement_id)
            conn.execute(
                insert(reversals).values(
                    settlement_id=settlement_id,
                    reversed_at=reversed_at,
                    released_codes=0,
                    recorded_at=datetime.now(UTC),
                )
            )
            reverse_settlement(conn, settlement_id=settlement_id, reversed_at=reversed_at)
            released = 0
            if decided.decision != Decision.REJECT.value:
                released = release_codes(conn, settlement_id=settlement_id, released_at=reversed_at)
                conn.execute(
                    update(reversals)
                    .where(reversals.c.settlement_id == settlement_id)
                    .values(released_codes=released)
                )
            return ReversalOut(
                settlement_id=settlement_id, reversed_at=reversed_at, released_codes=released
            )
    except IntegrityError:
        with engine.begin() as conn:
            recorded = _recorded_reversal(conn, settlement_id)
        if recorded is None:
            raise
        return recorded


def _recorded_reversal(conn: Connection, settlement_id: str) -> ReversalOut | None:
    row = conn.execute(select(reversals).where(reversals.c.settlement_id == settlement_id)).first()
    if row is None:
        return None
    return ReversalOut(
        settlement_id=settlement_id,
        reversed_at=row.reversed_at,
        released_codes=row.released_codes,
    )
