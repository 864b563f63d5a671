"""Credit accounts (医保信用) in the store: read by the decision policy, moved by every decision
and every verdict in the caller's transaction, rebuilt by ``fundguard credit recompute``.

The scheme (``rules.credit``) says what each event costs; this module keeps the accounts:

- ``read_standing``: one statement reads the accounts of a settlement's institution,
  patient and doctor and gives their score and grade on the settlement's day;
- ``apply_decision`` / ``record_verdict``: one atomic upsert per moved account
  (``INSERT ... ON CONFLICT DO UPDATE SET lost = lost - repair + :cost ...``, computed from
  the row as it is when the write takes its lock, so concurrent decisions on one
  institution across workers lose no update) and one insert of the events behind it;
- repair (信用修复) is banked when a new cost arrives, from the day numbers of the events,
  never from the wall clock of the computation;
- ``recompute``: every account and event rebuilt from the stored decisions and verdicts,
  applied in the order they were first applied online (decided / recorded time), through
  the same statements: it equals what the online updates gave.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from rules.credit import (
    CREDIT_RULE_ID,
    SHANGHAI,
    Account,
    Charge,
    CreditScheme,
    EventKind,
    Party,
    Position,
    Standing,
    local_day,
    local_year,
)
from serve.schemas import CreditEventOut, CreditOut
from serve.tables import credit_accounts, credit_events, credit_verdicts, decisions

_A = credit_accounts.c
_E = credit_events.c

_KIND_OF_DECISION: Final = {"reject": EventKind.REJECTED, "review": EventKind.FLAGGED}


class Verdict:
    CONFIRMED: Final = "confirmed"
    DISMISSED: Final = "dismissed"


# --- reading --------------------------------------------------------------------------------

READ: Final = select(
    _A.entity_type, _A.entity_id, _A.lost, _A.last_violation_day, _A.year, _A.year_points
).where(
    or_(
        and_(_A.entity_type == "institution", _A.entity_id == bindparam("institution")),
        and_(_A.entity_type == "patient", _A.entity_id == bindparam("patient")),
        and_(_A.entity_type == "doctor", _A.entity_id == bindparam("doctor")),
    )
)


def _account(row: Any) -> Account:
    return Account(row.lost, row.last_violation_day, row.year, row.year_points)


"""The credit accounts of a settlement's parties (binds ``institution``, ``patient`` and
``doctor``)."""


def read_standing(
    conn: Connection,
    scheme: CreditScheme,
    *,
    institution_id: str,
    patient_id: str,
    doctor_id: str | None,
    at: datetime,
) -> Standing:
    """The credit of a settlement's parties on its day (one statement)."""
    rows = conn.execute(
        READ, {"institution": institution_id, "patient": patient_id, "doctor": doctor_id}
    )
    return standing_of(
        rows, scheme, institution_id=institution_id, patient_id=patient_id,
        doctor_id=doctor_id, at=at,
    )  # fmt: skip


def standing_of(
    rows: Iterable[Any],
    scheme: CreditScheme,
    *,
    institution_id: str,
    patient_id: str,
    doctor_id: str | None,
    at: datetime,
) -> Standing:
    """The credit of a settlement's parties on its day, from the accounts ``READ`` read."""
    found = {(r.entity_type, r.entity_id): _account(r) for r in rows}
    parties = [(Party.INSTITUTION, institution_id), (Party.PATIENT, patient_id)]
    if doctor_id:
        parties.append((Party.DOCTOR, doctor_id))
    return Standing(
        scheme_version=scheme.version,
        positions=tuple(
            scheme.position(party, entity_id, found.get((party.value, entity_id), Account()), at)
            for party, entity_id in parties
        ),
    )


# --- writing --------------------------------------------------------------------------------

_COST, _GIVE, _DAY, _YEAR, _YP = (
    bindparam(name, type_=Integer) for name in ("cost", "give", "day", "year", "yp")
)
_RDAYS, _RPOINTS = bindparam("rdays", type_=Integer), bindparam("rpoints", type_=Integer)


def _set_clause() -> dict[str, Any]:
    """The update of an existing account, from the row as the write finds it."""
    clean_periods = case(
        (or_(_A.last_violation_day.is_(None), _A.last_violation_day >= _DAY), 0),
        else_=(_DAY - _A.last_violation_day) // _RDAYS,
    )
    earned = clean_periods * _RPOINTS
    banked = case((_COST <= 0, 0), (_A.lost < earned, _A.lost), else_=earned)
    left = _A.lost - banked
    given = case((left < _GIVE, left), else_=_GIVE)
    newer_year = or_(_A.year.is_(None), _A.year < _YEAR)
    return {
        "lost": left - given + _COST,
        "repaired": _A.repaired + banked,
        "restored": _A.restored + given,
        "last_violation_day": case(
            (
                and_(_COST > 0, or_(_A.last_violation_day.is_(None), _A.last_violation_day < _DAY)),
                _DAY,
            ),
            else_=_A.last_violation_day,
        ),
        "year_points": case(
            (_YP <= 0, _A.year_points),
            (_A.year == _YEAR, _A.year_points + _YP),
            (newer_year, _YP),
            else_=_A.year_points,
        ),
        "year": case((and_(_YP > 0, newer_year), _YEAR), else_=_A.year),
        "events": _A.events + 1,
    }


def _upsert(dialect: str) -> Insert:
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(credit_accounts).values(
        entity_type=bindparam("entity_type"),
        entity_id=bindparam("entity_id"),
        lost=_COST,
        repaired=0,
        restored=0,
        last_violation_day=bindparam("first_day", type_=Integer),
        year=bindparam("first_year", type_=Integer),
        year_points=_YP,
        events=1,
    )
    return statement.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=[_A.entity_type, _A.entity_id], set_=_set_clause()
    )


_UPSERTS: dict[str, Insert] = {}


def _apply(
    conn: Connection,
    scheme: CreditScheme,
    charges: Sequence[Charge],
    *,
    at: datetime,
    source: str,
    settlement_id: str | None,
) -> None:
    """Move the accounts of ``charges`` (in a fixed order: no deadlock between two writers)
    and record the events behind them."""
    if not charges:
        return
    dialect = conn.dialect.name
    upsert = _UPSERTS.get(dialect)
    if upsert is None:
        upsert = _UPSERTS[dialect] = _upsert(dialect)
    day, year = local_day(at), local_year(at)
    for charge in sorted(charges, key=lambda c: (c.party.value, c.entity_id)):
        cost = max(0, -charge.points)
        conn.execute(
            upsert,
            {
                "entity_type": charge.party.value,
                "entity_id": charge.entity_id,
                "cost": cost,
                "give": max(0, charge.points),
                "day": day,
                "year": year,
                "yp": charge.year_points,
                "first_day": day if cost > 0 else None,
                "first_year": year if charge.year_points > 0 else None,
                "rdays": scheme.repair_days,
                "rpoints": scheme.repair_points,
            },
        )
    conn.execute(
        insert(credit_events),
        [
            {
                "entity_type": c.party.value,
                "entity_id": c.entity_id,
                "at": at,
                "kind": c.kind.value,
                "source": source,
                "settlement_id": settlement_id,
                "pattern": c.pattern,
                "patterns": "|".join(c.patterns),
                "points": c.points,
                "year_points": c.year_points,
                "restored_by": None,
                "scheme_version": scheme.version,
                "reason": c.reason,
            }
            for c in charges
        ],
    )


def _parties(
    institution_id: str, patient_id: str, doctor_id: str | None
) -> list[tuple[Party, str]]:
    parties = [(Party.INSTITUTION, institution_id), (Party.PATIENT, patient_id)]
    if doctor_id:
        parties.append((Party.DOCTOR, doctor_id))
    return parties


def decision_charges(
    scheme: CreditScheme,
    *,
    decision: str,
    hits: Iterable[tuple[str, str, str]],
    fund_paid: Decimal | None,
    parties: Sequence[tuple[Party, str]],
) -> list[Charge]:
    """What a decision costs its parties: a rejected settlement costs by the patterns of its
    ``reject`` hits, one sent to review by those of its ``review`` hits (``hits``: rule id,
    pattern, action). The credit policy's own hits (rule ``CREDIT``) cost nothing."""
    kind = _KIND_OF_DECISION.get(decision)
    if kind is None:
        return []
    patterns = [
        p for rule_id, p, action in hits if action == decision and rule_id != CREDIT_RULE_ID
    ]
    return scheme.charges(kind, patterns, fund_paid or Decimal(0), parties)


def apply_decision(
    conn: Connection,
    scheme: CreditScheme,
    *,
    settlement_id: str,
    institution_id: str,
    patient_id: str,
    doctor_id: str | None,
    settled_at: datetime,
    decision: str,
    hits: Iterable[tuple[str, str, str]],
    fund_paid: Decimal | None,
) -> list[Charge]:
    """Move the credit of a decision's parties, in the caller's transaction."""
    charges = decision_charges(
        scheme,
        decision=decision,
        hits=hits,
        fund_paid=fund_paid,
        parties=_parties(institution_id, patient_id, doctor_id),
    )
    _apply(conn, scheme, charges, at=settled_at, source=settlement_id, settlement_id=settlement_id)
    return charges


# --- verdicts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerdictApplied:
    """What a verdict did to credit: the events it made, and whether it was new."""

    verdict_id: str
    recorded: bool
    charges: tuple[Charge, ...]


def record_verdict(
    conn: Connection,
    scheme: CreditScheme,
    *,
    verdict_id: str,
    entity_type: str,
    entity_id: str,
    patterns: Sequence[str],
    verdict: str,
    decided_at: datetime,
    amount_at_risk: Decimal = Decimal(0),
    settlement_ids: Sequence[str] = (),
    note: str = "",
) -> VerdictApplied:
    """Record an inspector's verdict on a case and move credit, in the caller's transaction.

    ``confirmed``: the case costs its parties (``events.confirmed`` by its costliest pattern
    and ``amount_at_risk``) and puts points on the doctor's yearly record. ``dismissed``:
    every cost its flags made (rejected or flagged settlements of the case, on every party)
    is given back, once. The parties: a settlement case's institution, patient and doctor;
    an institution's or a patient's case, that account; a group's, the parties of
    ``settlement_ids``. A verdict id recorded before changes nothing."""
    if verdict not in (Verdict.CONFIRMED, Verdict.DISMISSED):
        raise ValueError(f"verdict {verdict!r}: confirmed or dismissed")
    if not patterns:
        raise ValueError("a verdict names the patterns of its case")
    amount_at_risk = Decimal(amount_at_risk).quantize(Decimal("0.01"))  # as the store keeps it
    exists = conn.execute(
        select(credit_verdicts.c.verdict_id).where(credit_verdicts.c.verdict_id == verdict_id)
    ).first()
    if exists is not None:
        return VerdictApplied(verdict_id, recorded=False, charges=())
    row = {
        "verdict_id": verdict_id,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "patterns": "|".join(sorted(set(patterns))),
        "verdict": verdict,
        "decided_at": decided_at,
        "amount_at_risk": amount_at_risk,
        "settlement_ids": "|".join(settlement_ids),
        "note": note,
        "recorded_at": datetime.now(UTC),
    }
    conn.execute(insert(credit_verdicts), row)
    return VerdictApplied(
        verdict_id, recorded=True, charges=tuple(_apply_verdict(conn, scheme, row))
    )


def _verdict_parties(
    conn: Connection, entity_type: str, entity_id: str, settlements: Sequence[str]
) -> list[tuple[Party, str]]:
    if entity_type in (Party.INSTITUTION.value, Party.PATIENT.value, Party.DOCTOR.value):
        return [(Party(entity_type), entity_id)]
    wanted = [entity_id] if entity_type == "settlement" else list(settlements)
    if not wanted:
        return []
    found: dict[tuple[Party, str], None] = {}
    rows = conn.execute(
        select(decisions.c.institution_id, decisions.c.patient_id, decisions.c.doctor_id)
        .where(decisions.c.settlement_id.in_(wanted))
        .order_by(decisions.c.settlement_id)
    )
    for r in rows:
        for party in _parties(r.institution_id, r.patient_id, r.doctor_id):
            found.setdefault(party)
    return list(found)


def _apply_verdict(conn: Connection, scheme: CreditScheme, row: dict[str, Any]) -> list[Charge]:
    patterns = tuple(p for p in str(row["patterns"]).split("|") if p)
    settlements = [s for s in str(row["settlement_ids"]).split("|") if s]
    entity_type, entity_id, verdict_id = row["entity_type"], row["entity_id"], row["verdict_id"]
    at: datetime = row["decided_at"]
    if row["verdict"] == Verdict.CONFIRMED:
        parties = _verdict_parties(conn, entity_type, entity_id, settlements)
        charges = scheme.charges(
            EventKind.CONFIRMED, patterns, Decimal(row["amount_at_risk"]), parties
        )
        for_settlement = entity_id if entity_type == "settlement" else None
        _apply(conn, scheme, charges, at=at, source=verdict_id, settlement_id=for_settlement)
        return charges
    # dismissed: give back, once, what the case's flags cost
    costs = _E.kind.in_((EventKind.REJECTED.value, EventKind.FLAGGED.value))
    of_case: ColumnElement[bool]
    if entity_type == "settlement":
        of_case = _E.settlement_id.in_([entity_id, *settlements])
    else:
        flagged_here = select(_E.settlement_id).where(
            _E.entity_type == entity_type,
            _E.entity_id == entity_id,
            _E.pattern.in_(patterns),
            _E.settlement_id.is_not(None),
        )
        of_case = and_(
            _E.pattern.in_(patterns),
            or_(_E.settlement_id.in_(flagged_here), _E.settlement_id.in_(settlements)),
        )
    given = conn.execute(
        update(credit_events)
        .where(_E.restored_by.is_(None), costs, of_case)
        .values(restored_by=verdict_id)
        .returning(_E.entity_type, _E.entity_id, _E.points)
    ).all()
    back: dict[tuple[str, str], tuple[int, int]] = {}
    for r in given:
        points, flags = back.get((r.entity_type, r.entity_id), (0, 0))
        back[(r.entity_type, r.entity_id)] = (points - r.points, flags + 1)
    charges = [
        Charge(
            party=Party(party),
            entity_id=account,
            kind=EventKind.DISMISSED,
            pattern=patterns[0],
            patterns=patterns,
            points=points,
            reason=f"案件不成立 dismissed case {verdict_id}: +{points} given back for "
            f"{flags} flag(s)",
        )
        for (party, account), (points, flags) in sorted(back.items())
        if points > 0
    ]
    for_settlement = entity_id if entity_type == "settlement" else None
    _apply(conn, scheme, charges, at=at, source=verdict_id, settlement_id=for_settlement)
    return charges


# --- recompute ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recomputed:
    """What a recompute replayed: the decisions that were not a pass, the verdicts, and
    the accounts and events it rebuilt."""

    decisions: int
    verdicts: int
    accounts: int
    events: int


def recompute(engine: Engine, scheme: CreditScheme) -> Recomputed:
    """Rebuild every credit account and event from the stored decisions and verdicts, in one
    transaction, in the order they were applied online: what the online updates gave.

    On PostgreSQL the credit tables are locked first: a scorer moving credit meanwhile
    waits, and its decision (not yet visible here) is applied on top of the rebuilt
    accounts when it goes on."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("LOCK TABLE credit_accounts, credit_events IN EXCLUSIVE MODE"))
        conn.execute(delete(credit_events))
        conn.execute(delete(credit_accounts))
        d = decisions.c
        moves: list[tuple[datetime, int, str, Any]] = [
            (r.decided_at, 0, r.settlement_id, r)
            for r in conn.execute(
                select(
                    d.settlement_id, d.institution_id, d.patient_id, d.doctor_id, d.settled_at,
                    d.decision, d.response, d.fund_paid, d.decided_at,
                ).where(d.decision != "pass")
            )
        ]  # fmt: skip
        verdicts = [dict(r._mapping) for r in conn.execute(select(credit_verdicts))]
        moves += [(v["recorded_at"], 1, v["verdict_id"], v) for v in verdicts]
        moves.sort(key=lambda m: (m[0], m[1], m[2]))
        for _, kind, _, what in moves:
            if kind == 1:
                _apply_verdict(conn, scheme, what)
                continue
            hits = orjson.loads(what.response)["hits"]
            apply_decision(
                conn,
                scheme,
                settlement_id=what.settlement_id,
                institution_id=what.institution_id,
                patient_id=what.patient_id,
                doctor_id=what.doctor_id,
                settled_at=what.settled_at,
                decision=what.decision,
                hits=[(h["rule_id"], h["pattern"], h["action"]) for h in hits],
                fund_paid=what.fund_paid,
            )
        accounts = conn.execute(select(func.count()).select_from(credit_accounts)).scalar_one()
        events = conn.execute(select(func.count()).select_from(credit_events)).scalar_one()
    return Recomputed(len(moves) - len(verdicts), len(verdicts), accounts, events)


def state(engine: Engine) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every account and every event (without its id), sorted: what recompute must equal."""
    with engine.connect() as conn:
        accounts = sorted(tuple(r) for r in conn.execute(select(credit_accounts)))
        columns = [c for c in credit_events.c if c.name != "event_id"]
        events = sorted(
            (tuple(str(v) for v in r) for r in conn.execute(select(*columns))),
        )
    return accounts, events


# --- explaining -----------------------------------------------------------------------------


def explain(
    conn: Connection,
    scheme: CreditScheme,
    party: Party,
    entity_id: str,
    *,
    at: datetime | None = None,
    limit: int = 100,
) -> CreditOut:
    """An account as an inspector reads it: score, grade and the events behind them."""
    at = at or datetime.now(UTC)
    row = conn.execute(
        select(credit_accounts).where(_A.entity_type == party.value, _A.entity_id == entity_id)
    ).first()
    account = _account(row) if row is not None else Account()
    position: Position = scheme.position(party, entity_id, account, at)
    events = conn.execute(
        select(credit_events)
        .where(_E.entity_type == party.value, _E.entity_id == entity_id)
        .order_by(_E.at.desc(), _E.event_id.desc())
        .limit(limit)
    ).all()
    total = conn.execute(
        select(
            func.count(), func.coalesce(func.sum(case((_E.points < 0, _E.points), else_=0)), 0)
        ).where(_E.entity_type == party.value, _E.entity_id == entity_id)
    ).one()
    grade = position.grade
    repaired = (row.repaired if row is not None else 0) + position.pending_repair
    restored = row.restored if row is not None else 0
    words = (
        f"信用等级 {grade.name} ({grade.label}): {position.score} of {scheme.maximum} "
        f"on {at.astimezone(SHANGHAI).date()}; {-int(total[1])} points lost over "
        f"{total[0]} event(s), {repaired} repaired by a clean record, {restored} given back "
        f"by dismissed cases"
    )
    if grade.supervision:
        words += f"; {grade.supervision}"
    if party is Party.INSTITUTION:
        words += "; may draw on prepayment" if grade.prepayment else "; no prepayment"
        if grade.blacklist:
            words += "; on the black list (blacklisted_institution)"
    if party is Party.DOCTOR:
        words += f"; {position.year_points} of {scheme.doctor_limit} points this year"
        if position.suspended:
            words += " (医保支付资格暂停: may not bill the fund; settlements go to review)"
    return CreditOut(
        entity_type=party.value,
        entity_id=entity_id,
        score=position.score,
        grade=grade.name,
        grade_label=grade.label,
        as_of=at,
        scheme_version=scheme.version,
        lost=account.lost,
        repaired=repaired,
        restored=restored,
        prepayment=grade.prepayment,
        blacklisted=party is Party.INSTITUTION and grade.blacklist,
        year_points=position.year_points if party is Party.DOCTOR else None,
        suspended=position.suspended if party is Party.DOCTOR else None,
        summary=words,
        events=[
            CreditEventOut(
                at=e.at,
                kind=e.kind,
                pattern=e.pattern,
                patterns=[p for p in e.patterns.split("|") if p],
                points=e.points,
                year_points=e.year_points,
                source=e.source,
                settlement_id=e.settlement_id,
                restored_by=e.restored_by,
                reason=e.reason,
            )
            for e in events
        ],
    )
