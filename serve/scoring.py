"""Scoring one settlement: read the facts, decide, store the decision and consume the codes,
all in one transaction, then answer. Scoring the same settlement again answers the stored
decision and changes nothing.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError

from features.knowledge import VERSION as KNOWLEDGE_VERSION
from features.knowledge import held_knowledge_base, knowledge_base
from features.settlement_features import (
    SETTLEMENT_FEATURES,
    settlement_vector,
    vector_params,
    vector_parts,
)
from features.store import (
    HistoryLine,
    Window,
    history_params,
    history_parts,
    patient_history_of,
    reverse_settlement,
    settlement_history,
)
from rules.base import RuleBase, shipped_rulebase
from rules.credit import CreditScheme, Standing
from rules.online import Execution, LineView, SettlementView, evaluate, windows_needed
from serve import blacklist, cases, watchlist
from serve import credit as credit_accounts
from serve.decision import credit_hits, decide, lowered, model_hits, rule_hits
from serve.model import NO_MODEL, ModelInForce, ModelSignal
from serve.schemas import (
    Decision,
    HitOut,
    ItemType,
    ModelOut,
    ReversalOut,
    ScoreOut,
    SettlementIn,
)
from serve.tables import decisions, reversals, rule_executions
from traceability.ledger import (
    NO_UNITS,
    Balances,
    CodeCheck,
    DrugLine,
    ParsedLines,
    check,
    consumption,
    ledger_facts,
    ledger_params,
    ledger_parts,
    lock_codes,
    release_codes,
)
from traceability.store import InsertRows, MergedRead, Prepared, Writes


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


_FIRST_READ: Final = MergedRead(
    lambda dialect: {
        "answer": select(decisions.c.response).where(
            decisions.c.settlement_id == bindparam("settlement")
        ),
        "blacklisted": blacklist.LISTED,
        "watched": watchlist.LOOKUP,
        "credit": credit_accounts.READ,
        "knowledge": KNOWLEDGE_VERSION,
        **ledger_parts(dialect),
        **history_parts(dialect),
        **vector_parts(dialect),
    }
)
"""Everything a scoring reads before it decides, in one statement: the answer stored for
the settlement if it was scored before (``answer``), whether its institution is on the
black list (``blacklisted``), the watch-list entries of its patient and institution
(``watched``), the credit accounts of its institution, patient and doctor (``credit``), the
knowledge base's version (``knowledge``), its codes' stock events, ledger entries and
balances (``traceability.ledger.ledger_parts``), the patient's look-back windows and stays
for the rules (``features.store.history_parts``) and the patient's windows for the model
(``features.settlement_features.vector_parts``)."""

_NEW_DECISION: Final = Prepared(insert(decisions))
_NEW_EXECUTIONS: Final = InsertRows(rule_executions)


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


@dataclass(frozen=True)
class _Judged:
    """A settlement judged on the facts read: its code checks, rule executions, hits and
    decision."""

    checked: CodeCheck
    executions: list[Execution]
    hits: list[HitOut]
    decision: Decision
    risk: float


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
    the review bar and whose accounts the decision moves, in the same transaction.

    Two steps. First, one statement reads every fact (``_FIRST_READ``) and the settlement
    is judged on them, holding no lock. Then one transaction locks its codes' ledger rows
    (on SQLite: the database's write lock, ``BEGIN IMMEDIATE``), judges it again if a
    code's balance moved in between (another settlement took the pack meanwhile), and
    stores the decision with everything it consumes. A settlement thus holds the write
    lock only while it writes, and a second worker judges its own settlement meanwhile.
    (Two settlements of one patient at the same moment may miss each other in their
    look-back windows, as they may on PostgreSQL's row locks; their codes never.)"""
    started = time.perf_counter()
    rulebase = rulebase or shipped_rulebase()
    view = _view(settlement)
    parsed = ParsedLines.of(
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
    )
    try:
        with engine.connect() as conn:
            knowledge = held_knowledge_base(conn)
            while True:
                windows = windows_needed(rulebase, knowledge, view)
                read = _FIRST_READ.read(conn, _first_params(settlement, view, parsed, windows))
                if read["answer"]:
                    return Scored.of_stored(read["answer"][0].response.encode())
                version = read["knowledge"][0].version
                if version == knowledge.version:
                    break
                knowledge = knowledge_base(conn, version)  # the catalog changed: read again
            facts = ledger_facts(read)
            history = patient_history_of(read, windows)
            standing = (
                credit_accounts.standing_of(
                    read["credit"], credit,
                    institution_id=settlement.institution_id,
                    patient_id=settlement.patient.patient_id,
                    doctor_id=settlement.doctor_id, at=settlement.settled_at,
                )
                if credit is not None
                else None
            )  # fmt: skip
            bar = standing.review_bar if standing is not None else 1.0
            # the model reads the patient's history before this settlement joins it
            signal = (
                model.signal(view, lambda: settlement_vector(view, knowledge, read))
                if model
                else ModelSignal(reason=NO_MODEL)
            )
            extra_hits = (
                model_hits(lowered(signal, bar))
                + watchlist.hits_of(read["watched"], view, watch_review_threshold * bar)
                + credit_hits(standing, settlement.settlement_id)
            )
            blacklisted = bool(read["blacklisted"]) or (
                standing is not None and standing.blacklisted
            )

            def judge(balances: Balances) -> _Judged:
                checked = check(
                    parsed,
                    facts,
                    balances,
                    products=knowledge.products,
                    packs=knowledge.pack_units,
                )
                executions = evaluate(
                    rulebase, view, knowledge=knowledge, history=history,
                    trace_hits=checked.hits, blacklisted=blacklisted,
                )  # fmt: skip
                hits = rule_hits(executions) + extra_hits
                decision, risk = decide(hits, signal)
                return _Judged(checked, executions, hits, decision, risk)

            def ready(judged: _Judged) -> _Ready:
                return _ready(
                    conn.dialect, settlement, raw_body, judged, signal, standing, rulebase,
                    started,
                )  # fmt: skip

            decided = ready(judge(facts.balances))
            with conn.begin():
                locked = lock_codes(conn, parsed.canonicals)
                if any(
                    locked[code] != facts.balances.get(code, NO_UNITS) for code in locked
                ):  # another settlement moved a code meanwhile: judge on what is locked now
                    decided = ready(judge(locked))
                decided.writes.run(conn)
                _file(conn, settlement, decided, credit)
                return decided.scored
    except IntegrityError:
        # another worker stored this settlement's decision first: answer that one
        with engine.begin() as conn:
            stored = _stored(conn, settlement.settlement_id)
        if stored is None:
            raise
        return Scored.of_stored(stored)


def _first_params(
    settlement: SettlementIn, view: SettlementView, parsed: ParsedLines, windows: list[Window]
) -> dict[str, Any]:
    at = settlement.settled_at
    return {
        **vector_params(view),
        **ledger_params(
            settlement_id=settlement.settlement_id,
            institution_id=settlement.institution_id,
            settled_at=at,
            parsed=parsed,
        ),
        **history_params(
            patient_id=settlement.patient.patient_id,
            until=at,
            windows=[(w.item_type, w.item_code, at - timedelta(days=w.days)) for w in windows],
        ),
        "doctor": settlement.doctor_id,
    }


@dataclass(frozen=True)
class _Ready:
    """A judged settlement made ready to store: its answer and its writes, bound."""

    judged: _Judged
    scored: Scored
    writes: Writes


def _ready(
    dialect: Dialect,
    settlement: SettlementIn,
    raw_body: bytes,
    judged: _Judged,
    signal: ModelSignal,
    standing: Standing | None,
    rulebase: RuleBase,
    started: float,
) -> _Ready:
    """The answer to a judged settlement and the writes that store it, made ready before
    its codes are locked: the codes it consumes (none if rejected), its place in the
    patient's history, and the decision with its answer and rule executions. The answer
    is what is stored."""
    decision, hits = judged.decision, judged.hits
    writes = Writes(dialect)
    if decision is not Decision.REJECT:  # a rejected settlement takes no pack
        consumption(
            writes,
            settlement_id=settlement.settlement_id,
            settled_at=settlement.settled_at,
            checked=judged.checked,
        )
    settlement_history(
        writes,
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
        risk_score=judged.risk,
        hits=hits,
        model=ModelOut(name=signal.name, version=signal.version, score=signal.score),
        credit=standing.as_json() if standing is not None else {},
        degraded=signal.degraded,
        degraded_reason=signal.reason,
    )
    body = orjson.dumps(answer.model_dump(mode="json"))
    writes.add(
        _NEW_DECISION,
        {
            "settlement_id": settlement.settlement_id,
            "institution_id": settlement.institution_id,
            "patient_id": settlement.patient.patient_id,
            "settled_at": settlement.settled_at,
            "decision": decision.value,
            "risk_score": judged.risk,
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
    writes.insert(
        _NEW_EXECUTIONS,
        [
            {
                "settlement_id": settlement.settlement_id,
                "rule_id": e.rule.id,
                "outcome": e.outcome.value,
                "micros": e.micros,
                "error": e.error or None,
            }
            for e in judged.executions
        ],
    )
    scored = Scored(
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
    return _Ready(judged, scored, writes)


def _file(
    conn: Connection, settlement: SettlementIn, ready: _Ready, credit: CreditScheme | None
) -> None:
    """After a decision's writes, in its transaction: a review or reject files its
    settlement's case, and the decision moves its parties' credit (last: the account rows
    stay locked until the commit). A clean pass does neither."""
    judged = ready.judged
    decision, hits = judged.decision.value, judged.hits
    cases.file_decision(
        conn, settlement=settlement, decision=decision, hits=hits,
        model_score=ready.scored.model_score,
    )  # fmt: skip
    if credit is not None:
        credit_accounts.apply_decision(
            conn,
            credit,
            settlement_id=settlement.settlement_id,
            institution_id=settlement.institution_id,
            patient_id=settlement.patient.patient_id,
            doctor_id=settlement.doctor_id,
            settled_at=settlement.settled_at,
            decision=decision,
            hits=[(h.rule_id, h.pattern, h.action.value) for h in hits],
            fund_paid=settlement.fund_paid,
        )


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
