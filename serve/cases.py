"""Cases for inspectors (CONTRACT.md §6): the flags of one entity gathered into one case,
worked through a queue ordered by expected loss, closed by a verdict that becomes a label
and moves credit.

- **Filing.** ``file_screening`` (``fundguard screen --store``) and ``file_decision`` (a
  ``review`` or ``reject`` answer of the scorer, in its transaction) add flags to the case
  of their entity (a settlement, a patient, an institution, a group). The case id is
  derived from the entity and the flag id from its pattern and entity, so screening the
  same history twice, or screening a settlement the scorer already filed, adds nothing
  twice. A new flag on a closed case reopens it (``in_review``): there is new evidence.
- **Priority** is the expected loss: ``probability x amount_at_risk``. A flag's score
  is 1.0 for the deterministic rules (a code already settled, a restriction broken), the
  model's score (scaled to [0, 1] by training-score quantiles, or the calibrated score of
  the supervised model) for model and graph flags. Its probability is that score
  calibrated by the inspectors' verdicts on the flags of its pattern (and score bin, where
  a pattern has enough verdicts; ``recalibrate``, ``fundguard cases recalibrate``): the
  mean of a Beta prior centred on the score, worth ``PRIOR_STRENGTH`` (10) verdicts,
  updated by the verdicts, so a pattern with few verdicts keeps its score and one that
  inspectors keep dismissing sinks. A case's probability combines its flags as
  independent evidence (noisy-OR, ``1 - prod(1 - p)``); its amount at risk is the largest
  of its flags' (the flags of one entity describe overlapping money: the same lines, the
  same sales), never their sum. Filing applies the calibration in the store;
  ``recalibrate`` refits it and re-prioritises the open cases.
- **Workflow.** ``new -> in_review -> confirmed | dismissed``; ``in_review -> new`` gives
  a case back to the queue; a closed case is reopened to ``in_review``. Anything else is
  an :class:`IllegalTransition` (HTTP 409). A verdict may be recorded on a ``new`` or
  ``in_review`` case; a dismissal says why.
- **Verdicts** write one row per pattern of the case into ``labels`` (the latest verdict
  on an entity and pattern wins; ``export_labels`` writes the contract's ``labels``
  table) and move credit through ``serve.credit.record_verdict`` in the same
  transaction.
- **Events** (``case_events``) are the audit trail: filed, flag added, assigned, status
  changed, note, verdict, reopened; who (a key id, ``screening`` or ``scorer``) and when.
- **Regions.** A case belongs to the region of its entity: an institution's own, a
  patient's (where insured), a settlement's and a group's institution's; ``""`` when the
  store does not know the institution (only an admin sees those cases).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from features.flags import Flag, GroupMember
from features.store import patient_visits
from features.tables import PATTERNS
from rules.base import RuleBase
from rules.credit import CreditScheme
from serve import credit
from serve.decision import MODEL_RULE_ID
from serve.schemas import (
    SHANGHAI,
    CaseDetailOut,
    CaseEventOut,
    CaseFlagOut,
    CaseOut,
    CaseStatus,
    GroupMemberOut,
    HitOut,
    InstitutionOut,
    SettlementIn,
    SettlementRefOut,
    TraceCodeOut,
    TraceStepOut,
)
from serve.tables import (
    calibration,
    case_events,
    case_flags,
    cases,
    decisions,
    institutions,
    labels,
    patients,
)
from traceability.codes import TraceCode, canonicalize_codes
from traceability.store import dialect_insert, ledger_entries, stock_events

_C = cases.c
_F = case_flags.c
CHUNK: Final = 500
CENT: Final = Decimal("0.01")
UNIT: Final = Decimal("0.0001")


class Source(StrEnum):
    BATCH = "batch"
    ONLINE = "online"


class EventKind(StrEnum):
    FILED = "filed"
    FLAG_ADDED = "flag_added"
    ASSIGNED = "assigned"
    STATUS_CHANGED = "status_changed"
    NOTE = "note"
    VERDICT = "verdict"
    REOPENED = "reopened"
    REVEAL = "reveal"
    """An inspector asked to see the case's patient identifiers unmasked (web pages)."""


class UnknownCase(LookupError):
    """No such case, or not one the caller may see (answered alike: HTTP 404)."""


class IllegalTransition(ValueError):
    """A workflow step the case's status does not allow (HTTP 409)."""


CLOSED: Final = frozenset({CaseStatus.CONFIRMED.value, CaseStatus.DISMISSED.value})
_MOVES: Final = {
    (CaseStatus.NEW, CaseStatus.IN_REVIEW),
    (CaseStatus.IN_REVIEW, CaseStatus.NEW),
    (CaseStatus.CONFIRMED, CaseStatus.IN_REVIEW),
    (CaseStatus.DISMISSED, CaseStatus.IN_REVIEW),
}


def case_id_of(entity_type: str, entity_id: str) -> str:
    """The id of the case of an entity: the same entity always has the same case."""
    key = f"{entity_type}\x1f{entity_id}".encode()
    return "C" + hashlib.sha256(key).hexdigest()[:20]


def expected_loss(flags: Iterable[tuple[Decimal, Decimal]]) -> tuple[Decimal, Decimal, Decimal]:
    """(probability, amount at risk, priority) of a case from its flags' (probability,
    amount): noisy-OR of the probabilities, the largest amount, their product (yuan)."""
    miss, amount = Decimal(1), Decimal(0)
    for probability, flag_amount in flags:
        miss *= Decimal(1) - min(max(probability, Decimal(0)), Decimal(1))
        amount = max(amount, flag_amount)
    probability = (Decimal(1) - miss).quantize(UNIT)
    return probability, amount.quantize(CENT), (probability * amount).quantize(CENT)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


# --- regions --------------------------------------------------------------------------------


def institution_region(conn: Connection, institution_id: str) -> str:
    """The region of an institution ("" if the store does not know it)."""
    found = conn.execute(
        select(institutions.c.region_code).where(institutions.c.institution_id == institution_id)
    ).scalar()
    return str(found) if found else ""


def party_regions(conn: Connection, party: str, entity_id: str) -> set[str]:
    """The regions a credit account belongs to: an institution's, a patient's, and for a
    doctor those of the institutions their decided settlements were billed at."""
    if party == "institution":
        return {institution_region(conn, entity_id)} - {""}
    if party == "patient":
        found = conn.execute(
            select(patients.c.region_code).where(patients.c.patient_id == entity_id)
        ).scalar()
        return {str(found)} if found else set()
    rows = conn.execute(
        select(institutions.c.region_code)
        .distinct()
        .join_from(
            decisions, institutions, decisions.c.institution_id == institutions.c.institution_id
        )
        .where(decisions.c.doctor_id == entity_id)
    ).scalars()
    return {str(r) for r in rows if r}


def _lookup(conn: Connection, key: Any, value: Any, ids: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(ids))
    found: dict[str, str] = {}
    for chunk in _chunks(wanted):
        found.update(
            {str(k): str(v) for k, v in conn.execute(select(key, value).where(key.in_(chunk)))}
        )
    return found


def settlement_institutions(conn: Connection, settlement_ids: Iterable[str]) -> dict[str, str]:
    """The institution of each settlement, from the patient's visits, else the decisions."""
    ids = set(settlement_ids)
    found = _lookup(conn, patient_visits.c.settlement_id, patient_visits.c.institution_id, ids)
    missing = ids - found.keys()
    if missing:
        found |= _lookup(conn, decisions.c.settlement_id, decisions.c.institution_id, missing)
    return found


def _regions(conn: Connection, entities: Iterable[tuple[str, str, str | None]]) -> dict[str, str]:
    """The region of each (entity type, entity id, institution if known) by case id."""
    entities = list(entities)
    settlements = settlement_institutions(
        conn, [i for t, i, inst in entities if t == "settlement" and not inst]
    )
    of_institution: dict[tuple[str, str], str] = {}
    for entity_type, entity_id, institution in entities:
        if entity_type == "institution":
            institution = entity_id
        elif entity_type == "settlement" and not institution:
            institution = settlements.get(entity_id)
        if institution:
            of_institution[(entity_type, entity_id)] = institution
    by_institution = _lookup(
        conn, institutions.c.institution_id, institutions.c.region_code, of_institution.values()
    )
    by_patient = _lookup(
        conn,
        patients.c.patient_id,
        patients.c.region_code,
        [i for t, i, _ in entities if t == "patient"],
    )
    regions = {}
    for entity_type, entity_id, _ in entities:
        if entity_type == "patient":
            region = by_patient.get(entity_id, "")
        else:
            region = by_institution.get(of_institution.get((entity_type, entity_id), ""), "")
        regions[case_id_of(entity_type, entity_id)] = region
    return regions


# --- filing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    """A flag on its way into a case."""

    entity_type: str
    entity_id: str
    flag_id: str
    pattern: str
    score: Decimal
    action: str
    amount_at_risk: Decimal
    evidence: str
    institution_id: str | None = None

    @property
    def case_id(self) -> str:
        return case_id_of(self.entity_type, self.entity_id)


@dataclass(frozen=True)
class Filed:
    """What a filing did: cases opened, cases given new flags (opened ones included),
    flags added, closed cases reopened."""

    cases_opened: int
    cases_touched: int
    flags_added: int
    reopened: int


def _file(conn: Connection, incoming: Sequence[Incoming], *, source: Source, actor: str) -> Filed:
    if not incoming:
        return Filed(0, 0, 0, 0)
    now = datetime.now(UTC)
    case_ids = sorted({i.case_id for i in incoming})
    status: dict[str, str] = {}
    known: set[tuple[str, str]] = set()
    for chunk in _chunks(case_ids):
        for r in conn.execute(select(_C.case_id, _C.status).where(_C.case_id.in_(chunk))):
            status[r.case_id] = r.status
        known.update(
            (r.case_id, r.flag_id)
            for r in conn.execute(select(_F.case_id, _F.flag_id).where(_F.case_id.in_(chunk)))
        )
    fresh: dict[tuple[str, str], Incoming] = {}
    for flag in incoming:
        key = (flag.case_id, flag.flag_id)
        if key not in known and key not in fresh:
            fresh[key] = flag
    if not fresh:
        return Filed(0, 0, 0, 0)
    opened = {f.case_id: f for f in fresh.values() if f.case_id not in status}
    regions = _regions(
        conn, [(f.entity_type, f.entity_id, f.institution_id) for f in opened.values()]
    )
    events: list[dict[str, Any]] = []
    if opened:
        conn.execute(
            dialect_insert(conn, cases).on_conflict_do_nothing(index_elements=[_C.case_id]),
            [
                {
                    "case_id": case_id,
                    "entity_type": f.entity_type,
                    "entity_id": f.entity_id,
                    "region_code": regions.get(case_id, ""),
                    "status": CaseStatus.NEW.value,
                    "patterns": "",
                    "probability": Decimal(0),
                    "amount_at_risk": Decimal(0),
                    "priority": Decimal(0),
                    "assignee": None,
                    "created_at": now,
                    "updated_at": now,
                }
                for case_id, f in opened.items()
            ],
        )
    conn.execute(
        dialect_insert(conn, case_flags).on_conflict_do_nothing(
            index_elements=[_F.case_id, _F.flag_id]
        ),
        [
            {
                "case_id": f.case_id,
                "flag_id": f.flag_id,
                "pattern": f.pattern,
                "score": f.score,
                "action": f.action,
                "amount_at_risk": f.amount_at_risk,
                "evidence": f.evidence,
                "source": source.value,
                "filed_at": now,
            }
            for f in fresh.values()
        ],
    )
    touched = sorted({f.case_id for f in fresh.values()})
    added: dict[str, list[str]] = {}
    for f in fresh.values():
        added.setdefault(f.case_id, []).append(f.pattern)
    reopened = [c for c in touched if status.get(c) in CLOSED]
    for case_id in touched:
        kind = EventKind.FLAG_ADDED if case_id in status else EventKind.FILED
        events.append(
            _event(
                case_id,
                now,
                actor,
                kind,
                {"source": source.value, "patterns": sorted(added[case_id])},
            )
        )
        if case_id in reopened:
            events.append(
                _event(
                    case_id,
                    now,
                    actor,
                    EventKind.REOPENED,
                    {"from": status[case_id], "reason": "new evidence: a new flag"},
                )
            )
    _refresh(conn, touched, now, reopen=set(reopened))
    conn.execute(insert(case_events), events)
    return Filed(len(opened), len(touched), len(fresh), len(reopened))


def _event(
    case_id: str, at: datetime, actor: str, kind: EventKind, detail: dict[str, Any]
) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "at": at,
        "actor": actor,
        "kind": kind.value,
        "detail": _json(detail),
    }


def _refresh(
    conn: Connection,
    case_ids: Sequence[str],
    now: datetime,
    reopen: set[str],
    *,
    only_changed: bool = False,
) -> int:
    """Recompute the patterns, probability, amount and priority of ``case_ids`` from their
    flags, each flag's probability calibrated by the verdicts (the stored calibration of its
    pattern, read with the flags in one statement: filing an online decision's case costs
    no extra round trip), and reopen the closed ones in ``reopen``. ``only_changed``: leave a case whose figures
    stay the same untouched (its ``updated_at`` too). How many cases were written."""
    flags: dict[str, dict[str, Any]] = {}
    bins: dict[str, dict[Decimal, CalibrationBin]] = {}
    current: dict[str, Any] = {}
    k = calibration.c
    with_bins = select(  # a flag with each calibration bin of its pattern: one statement
        _F.case_id, _F.flag_id, _F.pattern, _F.score, _F.amount_at_risk,
        k.bin_low, k.bin_high, k.verdicts, k.confirmed, k.prior_strength,
    ).select_from(case_flags.outerjoin(calibration, k.pattern == _F.pattern))  # fmt: skip
    for chunk in _chunks(case_ids):
        for r in conn.execute(with_bins.where(_F.case_id.in_(chunk))):
            flags.setdefault(r.case_id, {})[r.flag_id] = r
            if r.bin_low is not None:
                bins.setdefault(r.pattern, {})[Decimal(r.bin_low)] = _bin(r)
        if only_changed:
            query = select(_C.case_id, _C.patterns, _C.probability, _C.amount_at_risk, _C.priority)
            current.update((r.case_id, r) for r in conn.execute(query.where(_C.case_id.in_(chunk))))
    fitted = Calibration({p: tuple(b[low] for low in sorted(b)) for p, b in bins.items()})
    rows = []
    for case_id in case_ids:
        of_case = list(flags.get(case_id, {}).values())
        probability, amount, priority = expected_loss(
            (fitted.probability(r.pattern, Decimal(r.score)), Decimal(r.amount_at_risk))
            for r in of_case
        )
        patterns = "|".join(sorted({r.pattern for r in of_case}))
        was = current.get(case_id)
        if (
            was is not None
            and case_id not in reopen
            and (was.patterns, Decimal(was.probability), Decimal(was.amount_at_risk))
            == (patterns, probability, amount)
            and Decimal(was.priority) == priority
        ):
            continue
        rows.append(
            {
                "b_case_id": case_id,
                "b_patterns": patterns,
                "b_probability": probability,
                "b_amount": amount,
                "b_priority": priority,
                "b_updated_at": now,
                "b_reopen": case_id in reopen,
            }
        )
    plain = [r for r in rows if not r["b_reopen"]]
    again = [r for r in rows if r["b_reopen"]]
    values: dict[str, Any] = {
        "patterns": bindparam("b_patterns"),
        "probability": bindparam("b_probability"),
        "amount_at_risk": bindparam("b_amount"),
        "priority": bindparam("b_priority"),
        "updated_at": bindparam("b_updated_at"),
    }
    where = _C.case_id == bindparam("b_case_id")
    if plain:
        conn.execute(update(cases).where(where).values(values), plain)
    if again:
        conn.execute(
            update(cases).where(where).values(values | {"status": CaseStatus.IN_REVIEW.value}),
            again,
        )
    return len(rows)


# --- probabilities calibrated by the verdicts -----------------------------------------------

PRIOR_STRENGTH: Final = 10
"""The Beta prior's weight, in verdicts: a flag's own score counts as this many verdicts
at that rate, so a pattern with few verdicts keeps (nearly) its score."""
MIN_BIN_VERDICTS: Final = 30
"""A pattern's flags are split by score only into bins of at least this many verdicts."""
MAX_BINS: Final = 4


@dataclass(frozen=True)
class CalibrationBin:
    """The verdicts on the flags of one pattern scoring from ``low`` on (up to the next
    bin's ``low``; ``high`` is the top score that fell in it when fitted)."""

    pattern: str
    low: Decimal
    high: Decimal
    verdicts: int
    confirmed: int
    prior_strength: Decimal

    def probability(self, score: Decimal) -> Decimal:
        """The posterior mean of a Beta(prior x score, prior x (1 - score)) prior on the
        flag's chance of being confirmed after this bin's verdicts: (prior x score +
        confirmed) / (prior + verdicts)."""
        score = min(max(score, Decimal(0)), Decimal(1))
        chance = (self.prior_strength * score + self.confirmed) / (
            self.prior_strength + self.verdicts
        )
        return chance.quantize(UNIT)


@dataclass(frozen=True)
class Calibration:
    """A pattern's bins, lowest first; a pattern without verdicts keeps its scores."""

    bins: dict[str, tuple[CalibrationBin, ...]]

    def bin_of(self, pattern: str, score: Decimal) -> CalibrationBin | None:
        found = None
        for b in self.bins.get(pattern, ()):
            if found is None or score >= b.low:
                found = b
        return found

    def probability(self, pattern: str, score: Decimal) -> Decimal:
        """The flag's calibrated probability of being confirmed."""
        found = self.bin_of(pattern, score)
        if found is None:
            return min(max(score, Decimal(0)), Decimal(1)).quantize(UNIT)
        return found.probability(score)


def load_calibration(conn: Connection, patterns: Iterable[str] | None = None) -> Calibration:
    """The calibration in the store (of ``patterns`` only, when given)."""
    k = calibration.c
    query = select(calibration).order_by(k.pattern, k.bin_low)
    if patterns is not None:
        wanted = sorted(set(patterns))
        if not wanted:
            return Calibration({})
        query = query.where(k.pattern.in_(wanted))
    bins: dict[str, list[CalibrationBin]] = {}
    for r in conn.execute(query):
        bins.setdefault(r.pattern, []).append(_bin(r))
    return Calibration({p: tuple(b) for p, b in bins.items()})


def _bin(row: Any) -> CalibrationBin:
    """A stored calibration bin (a row with the ``calibration`` table's columns)."""
    return CalibrationBin(
        pattern=row.pattern,
        low=Decimal(row.bin_low),
        high=Decimal(row.bin_high),
        verdicts=int(row.verdicts),
        confirmed=int(row.confirmed),
        prior_strength=Decimal(row.prior_strength),
    )


def _bins(
    pattern: str,
    verdicts: Sequence[tuple[Decimal, int]],
    *,
    prior_strength: Decimal,
    min_bin_verdicts: int,
    max_bins: int,
) -> list[CalibrationBin]:
    """One pattern's bins: as many as ``max_bins`` of about equal counts of its (score,
    label) verdicts where each holds ``min_bin_verdicts``, else one; ties never split."""
    ordered = sorted(verdicts)
    wanted = max(1, min(max_bins, len(ordered) // max(min_bin_verdicts, 1)))
    lows = sorted(
        {ordered[len(ordered) * j // wanted][0] for j in range(1, wanted)} - {ordered[0][0]}
    )
    groups: list[list[tuple[Decimal, int]]] = [[] for _ in range(len(lows) + 1)]
    for score, label in ordered:
        groups[sum(1 for low in lows if score >= low)].append((score, label))
    merged: list[list[tuple[Decimal, int]]] = []
    for group in groups:  # a bin thinner than the minimum (ties) joins the one below
        if merged and (len(group) < min_bin_verdicts or len(merged[-1]) < min_bin_verdicts):
            merged[-1].extend(group)
        else:
            merged.append(group)
    return [
        CalibrationBin(
            pattern=pattern,
            low=Decimal(0) if i == 0 else group[0][0],
            high=group[-1][0],
            verdicts=len(group),
            confirmed=sum(label for _, label in group),
            prior_strength=prior_strength,
        )
        for i, group in enumerate(merged)
        if group
    ]


def fit_calibration(
    verdicts: Iterable[tuple[str, Decimal, int]],
    *,
    prior_strength: int | Decimal = PRIOR_STRENGTH,
    min_bin_verdicts: int = MIN_BIN_VERDICTS,
    max_bins: int = MAX_BINS,
) -> Calibration:
    """The calibration of (pattern, flag score, label) verdicts: per pattern, and per score
    bin where a pattern has enough verdicts (:func:`_bins`)."""
    strength = Decimal(prior_strength)
    if strength <= 0:
        raise ValueError(f"prior_strength {prior_strength}: a positive number of verdicts")
    if min_bin_verdicts < 1 or max_bins < 1:
        raise ValueError(f"min_bin_verdicts {min_bin_verdicts}, max_bins {max_bins}: at least 1")
    by_pattern: dict[str, list[tuple[Decimal, int]]] = {}
    for pattern, score, label in verdicts:
        if label not in (0, 1):
            raise ValueError(f"label {label!r} of pattern {pattern}: 0 or 1")
        by_pattern.setdefault(pattern, []).append((Decimal(score), int(label)))
    return Calibration(
        {
            p: tuple(
                _bins(
                    p,
                    v,
                    prior_strength=strength,
                    min_bin_verdicts=min_bin_verdicts,
                    max_bins=max_bins,
                )
            )
            for p, v in sorted(by_pattern.items())
        }
    )


def verdicts_by_flag(conn: Connection) -> list[tuple[str, Decimal, int]]:
    """(pattern, flag score, label) of every flag with a verdict: the ``labels`` the cases'
    verdicts wrote, with the score of the flag of that pattern in that case."""
    rows = conn.execute(
        select(labels.c.pattern, _F.score, labels.c.label)
        .join_from(
            labels,
            case_flags,
            (_F.case_id == labels.c.case_id) & (_F.pattern == labels.c.pattern),
        )
        .order_by(labels.c.pattern, _F.score)
    )
    return [(str(r.pattern), Decimal(r.score), int(r.label)) for r in rows]


@dataclass(frozen=True)
class Recalibrated:
    """What :func:`recalibrate` did: the calibration it stored, how many open cases there
    are and how many of them got a new probability or priority."""

    calibration: Calibration
    open_cases: int
    reprioritised: int


def recalibrate(
    conn: Connection,
    *,
    prior_strength: int | Decimal = PRIOR_STRENGTH,
    min_bin_verdicts: int = MIN_BIN_VERDICTS,
    max_bins: int = MAX_BINS,
    now: datetime | None = None,
) -> Recalibrated:
    """Fit the calibration to the verdicts so far (:func:`fit_calibration`), store it (it
    replaces the one before) and re-prioritise the open cases (``new``, ``in_review``) by
    it, in the caller's transaction. A closed case keeps the figures it was decided on.

    The verdicts are those of the cases inspectors chose to work, the top of the queue: a
    pattern's confirmed rate there need not hold further down (measured in
    ``benchmarks/case_queue.py``: the large anomalous settlements worked first are mostly
    fraud, the small ones left mostly not, until verdicts reach them and a score bin splits
    them apart)."""
    fitted = fit_calibration(
        verdicts_by_flag(conn),
        prior_strength=prior_strength,
        min_bin_verdicts=min_bin_verdicts,
        max_bins=max_bins,
    )
    now = now or datetime.now(UTC)
    conn.execute(delete(calibration))
    rows = [
        {
            "pattern": b.pattern,
            "bin_low": b.low,
            "bin_high": b.high,
            "verdicts": b.verdicts,
            "confirmed": b.confirmed,
            "prior_strength": b.prior_strength,
            "fitted_at": now,
        }
        for of_pattern in fitted.bins.values()
        for b in of_pattern
    ]
    if rows:
        conn.execute(insert(calibration), rows)
    open_ids = list(
        conn.execute(
            select(_C.case_id)
            .where(_C.status.in_([CaseStatus.NEW.value, CaseStatus.IN_REVIEW.value]))
            .order_by(_C.case_id)
        ).scalars()
    )
    changed = _refresh(conn, open_ids, now, set(), only_changed=True)
    return Recalibrated(fitted, len(open_ids), changed)


def _incoming(flag: Flag, members: Sequence[GroupMember]) -> Incoming:
    evidence = dict(flag.evidence)
    if flag.entity_type == "group" and members and "group_members" not in evidence:
        evidence["group_members"] = [
            {"patient_id": m.patient_id, "institution_id": m.institution_id} for m in members
        ]
    institution = evidence.get("institution_id")
    if flag.entity_type == "group" and not institution and members:
        institution = members[0].institution_id
    return Incoming(
        entity_type=flag.entity_type,
        entity_id=flag.entity_id,
        flag_id=flag.flag_id,
        pattern=flag.pattern,
        score=Decimal(str(flag.score)).quantize(UNIT),
        action=flag.action,
        amount_at_risk=Decimal(flag.amount_at_risk).quantize(CENT),
        evidence=_json(evidence),
        institution_id=str(institution) if institution else None,
    )


def file_screening(
    conn: Connection, flags: Iterable[Flag], members: Iterable[GroupMember] = ()
) -> Filed:
    """File a screening's flags as cases (one per entity), in the caller's transaction;
    flags filed before (same pattern and entity) are not filed again."""
    by_group: dict[str, list[GroupMember]] = {}
    for m in members:
        by_group.setdefault(m.group_id, []).append(m)
    incoming = [_incoming(f, by_group.get(f.entity_id, [])) for f in flags]
    return _file(conn, incoming, source=Source.BATCH, actor="screening")


def file_decision(
    conn: Connection,
    *,
    settlement: SettlementIn,
    decision: str,
    hits: Sequence[HitOut],
    model_score: float | None,
) -> Filed:
    """File the settlement case of a ``review`` or ``reject`` answer, in the scorer's
    transaction: one flag per pattern of the hits that asked for it (section 4 patterns
    only: the credit policy's hits are not evidence of fraud). Its amount at risk is the
    amount of the lines hit (the fund's share when the hit names no line); its score is
    the model's for the model's hit, 1.0 for the rules' and the watch list's."""
    if decision not in ("review", "reject"):
        return Filed(0, 0, 0, 0)
    amounts = {item.line_no: item.amount for item in settlement.items}
    by_pattern: dict[str, list[HitOut]] = {}
    for hit in hits:
        if hit.action.value in ("review", "reject") and hit.pattern in PATTERNS:
            by_pattern.setdefault(hit.pattern, []).append(hit)
    incoming = []
    for pattern, of_pattern in sorted(by_pattern.items()):
        lines = sorted({h.line_no for h in of_pattern if h.line_no is not None})
        amount = sum((amounts.get(n, Decimal(0)) for n in lines), Decimal(0))
        if not lines or not amount:
            amount = settlement.fund_paid
        from_model = any(h.rule_id == MODEL_RULE_ID for h in of_pattern)
        score = model_score if from_model and model_score is not None else 1.0
        action = "reject" if any(h.action.value == "reject" for h in of_pattern) else "review"
        flag = Flag("settlement", settlement.settlement_id, pattern, score, action, amount, {})
        evidence: dict[str, object] = {
            "decision": decision,
            "institution_id": settlement.institution_id,
            "patient_id": settlement.patient.patient_id,
            "settled_at": settlement.settled_at.isoformat(),
            "rule_ids": sorted({h.rule_id for h in of_pattern}),
            "lines": lines,
            "messages": [h.message for h in of_pattern],
            "codes": sorted(
                {c for i in settlement.items if i.line_no in lines for c in i.trace_codes or ()}
            ),
        }
        if from_model:
            evidence["model_score"] = model_score
        incoming.append(
            Incoming(
                entity_type="settlement",
                entity_id=settlement.settlement_id,
                flag_id=flag.flag_id,
                pattern=pattern,
                score=Decimal(str(score)).quantize(UNIT),
                action=action,
                amount_at_risk=Decimal(amount).quantize(CENT),
                evidence=_json(evidence),
                institution_id=settlement.institution_id,
            )
        )
    return _file(conn, incoming, source=Source.ONLINE, actor="scorer")


# --- the queue ------------------------------------------------------------------------------

Visible = Callable[[str], bool]
"""Whether the caller may see a region (``Caller.sees_region``)."""


def _case_out(row: Any) -> CaseOut:
    return CaseOut(
        case_id=row.case_id,
        entity_type=row.entity_type,
        entity_id=row.entity_id,
        patterns=[p for p in row.patterns.split("|") if p],
        priority=row.priority,
        probability=float(row.probability),
        amount_at_risk=row.amount_at_risk,
        region_code=row.region_code,
        status=CaseStatus(row.status),
        assignee=row.assignee,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def queue(
    conn: Connection,
    *,
    regions: frozenset[str] | None,
    status: CaseStatus | None = None,
    region: str | None = None,
    pattern: str | None = None,
    institution: str | None = None,
    min_amount_at_risk: Decimal | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[CaseOut]:
    """The cases ``regions`` allow (None: every region), highest priority first, filtered
    by status, region, pattern, institution and the least amount at risk (yuan). A
    ``region`` outside ``regions`` gives no case. A case concerns an ``institution`` when
    it is the institution's own, when its settlement was billed there, when its patient
    was treated there, or when one of its flags' evidence names it (a group's)."""
    query = select(cases)
    if regions is not None:
        if region is not None and region not in regions:
            return []
        query = query.where(_C.region_code.in_(sorted(regions)))
    if region is not None:
        query = query.where(_C.region_code == region)
    if status is not None:
        query = query.where(_C.status == status.value)
    if pattern is not None:
        query = query.where(exists().where(_F.case_id == _C.case_id, _F.pattern == pattern))
    if institution is not None:
        v = patient_visits.c
        named = f'"institution_id": {json.dumps(institution, ensure_ascii=False)}'
        query = query.where(
            or_(
                and_(_C.entity_type == "institution", _C.entity_id == institution),
                and_(
                    _C.entity_type == "settlement",
                    or_(
                        _C.entity_id.in_(
                            select(v.settlement_id).where(v.institution_id == institution)
                        ),
                        _C.entity_id.in_(
                            select(decisions.c.settlement_id).where(
                                decisions.c.institution_id == institution
                            )
                        ),
                    ),
                ),
                and_(
                    _C.entity_type == "patient",
                    _C.entity_id.in_(select(v.patient_id).where(v.institution_id == institution)),
                ),
                exists().where(
                    _F.case_id == _C.case_id, _F.evidence.contains(named, autoescape=True)
                ),
            )
        )
    if min_amount_at_risk is not None:
        query = query.where(_C.amount_at_risk >= min_amount_at_risk)
    query = query.order_by(_C.priority.desc(), _C.created_at, _C.case_id)
    return [_case_out(r) for r in conn.execute(query.limit(limit).offset(offset))]


def _case_row(conn: Connection, case_id: str, visible: Visible, *, lock: bool = False) -> Any:
    query = select(cases).where(_C.case_id == case_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None or not visible(row.region_code):
        raise UnknownCase(case_id)
    return row


# --- the workflow ---------------------------------------------------------------------------


def _step(
    conn: Connection,
    case_id: str,
    now: datetime,
    actor: str,
    kind: EventKind,
    detail: dict[str, Any],
    **values: Any,
) -> None:
    """One workflow step: the case's new ``values`` and the event on its trail."""
    conn.execute(update(cases).where(_C.case_id == case_id).values(updated_at=now, **values))
    conn.execute(insert(case_events), [_event(case_id, now, actor, kind, detail)])


def set_status(
    engine: Engine,
    case_id: str,
    target: CaseStatus,
    *,
    actor: str,
    visible: Visible,
    reason: str = "",
) -> CaseOut:
    """Move a case in the workflow (taking it up, giving it back, reopening a closed case);
    :class:`IllegalTransition` for any other move."""
    with engine.begin() as conn:
        row = _case_row(conn, case_id, visible, lock=True)
        _move(conn, row, target, actor=actor, reason=reason, now=datetime.now(UTC))
        return _case_out(_case_row(conn, case_id, visible))


def _move(
    conn: Connection, row: Any, target: CaseStatus, *, actor: str, reason: str, now: datetime
) -> None:
    current = CaseStatus(row.status)
    if (current, target) not in _MOVES:
        raise IllegalTransition(
            f"case {row.case_id} is {current.value}: it cannot become {target.value}"
            + ("; a verdict closes a case" if target.value in CLOSED else "")
        )
    kind = EventKind.REOPENED if current.value in CLOSED else EventKind.STATUS_CHANGED
    detail = {"from": current.value, "to": target.value, "reason": reason}
    _step(conn, row.case_id, now, actor, kind, detail, status=target.value)


def take(engine: Engine, case_id: str, *, actor: str, visible: Visible) -> CaseOut:
    """An inspector takes a case up: ``in_review`` and assigned to them, both or neither."""
    with engine.begin() as conn:
        row = _case_row(conn, case_id, visible, lock=True)
        now = datetime.now(UTC)
        _move(conn, row, CaseStatus.IN_REVIEW, actor=actor, reason="领取", now=now)
        detail = {"from": row.assignee, "to": actor}
        _step(conn, case_id, now, actor, EventKind.ASSIGNED, detail, assignee=actor)
        return _case_out(_case_row(conn, case_id, visible))


def assign(
    engine: Engine, case_id: str, assignee: str | None, *, actor: str, visible: Visible
) -> CaseOut:
    """Give a case to an inspector (None: take it back)."""
    with engine.begin() as conn:
        row = _case_row(conn, case_id, visible, lock=True)
        detail = {"from": row.assignee, "to": assignee}
        now = datetime.now(UTC)
        _step(conn, case_id, now, actor, EventKind.ASSIGNED, detail, assignee=assignee)
        return _case_out(_case_row(conn, case_id, visible))


def add_note(engine: Engine, case_id: str, note: str, *, actor: str, visible: Visible) -> CaseOut:
    """Add an inspector's note to a case's trail."""
    with engine.begin() as conn:
        _case_row(conn, case_id, visible, lock=True)
        _step(conn, case_id, datetime.now(UTC), actor, EventKind.NOTE, {"note": note})
        return _case_out(_case_row(conn, case_id, visible))


def record_reveal(
    engine: Engine, case_id: str, *, actor: str, visible: Visible, detail: dict[str, Any]
) -> None:
    """Log on the case's trail that ``actor`` asked to see its patient identifiers (before
    they are shown); the case itself does not change."""
    with engine.begin() as conn:
        _case_row(conn, case_id, visible)
        event = _event(case_id, datetime.now(UTC), actor, EventKind.REVEAL, detail)
        conn.execute(insert(case_events), [event])


def _settlements_of(conn: Connection, row: Any) -> list[str]:
    """The settlements a case's verdict concerns (for credit): the settlement itself, or
    those its flags' evidence names (a group's admissions)."""
    if row.entity_type == "settlement":
        return [row.entity_id]
    found: set[str] = set()
    for (evidence,) in conn.execute(select(_F.evidence).where(_F.case_id == row.case_id)):
        facts = json.loads(evidence)
        for occasion in facts.get("occasion_dates", ()) or ():
            found.update(occasion.get("settlement_ids", ()))
    return sorted(found)


def record_verdict(
    engine: Engine,
    case_id: str,
    verdict: CaseStatus,
    note: str,
    *,
    actor: str,
    visible: Visible,
    scheme: CreditScheme | None,
) -> CaseOut:
    """Close a case with a verdict (``confirmed`` or ``dismissed``), in one transaction: the
    case's status and event, one label per pattern of the case, and credit (through
    ``serve.credit.record_verdict``; not moved when ``scheme`` is None)."""
    if verdict.value not in CLOSED:
        raise ValueError(f"verdict {verdict.value!r}: confirmed or dismissed")
    with engine.begin() as conn:
        row = _case_row(conn, case_id, visible, lock=True)
        if row.status in CLOSED:
            raise IllegalTransition(
                f"case {case_id} is {row.status} already: reopen it (status in_review) first"
            )
        now = datetime.now(UTC)
        patterns = [p for p in row.patterns.split("|") if p]
        count = conn.execute(
            select(func.count()).where(
                case_events.c.case_id == case_id, case_events.c.kind == EventKind.VERDICT.value
            )
        ).scalar_one()
        verdict_id = f"{case_id}-V{count + 1}"
        label = 1 if verdict is CaseStatus.CONFIRMED else 0
        upsert = dialect_insert(conn, labels)
        conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[labels.c.entity_type, labels.c.entity_id, labels.c.pattern],
                set_={
                    "label": upsert.excluded.label,
                    "decided_at": upsert.excluded.decided_at,
                    "case_id": upsert.excluded.case_id,
                },
            ),
            [
                {
                    "entity_type": row.entity_type,
                    "entity_id": row.entity_id,
                    "pattern": p,
                    "label": label,
                    "decided_at": now,
                    "case_id": case_id,
                }
                for p in patterns
            ],
        )
        moved: list[str] = []
        if scheme is not None:
            applied = credit.record_verdict(
                conn,
                scheme,
                verdict_id=verdict_id,
                entity_type=row.entity_type,
                entity_id=row.entity_id,
                patterns=patterns,
                verdict=verdict.value,
                decided_at=now,
                amount_at_risk=Decimal(row.amount_at_risk),
                settlement_ids=_settlements_of(conn, row),
                note=note,
            )
            moved = [f"{c.party.value} {c.entity_id}: {c.points:+d}" for c in applied.charges]
        detail = {
            "verdict": verdict.value,
            "note": note,
            "verdict_id": verdict_id,
            "labels": len(patterns),
            "credit": moved,
        }
        _step(conn, case_id, now, actor, EventKind.VERDICT, detail, status=verdict.value)
        return _case_out(_case_row(conn, case_id, visible))


# --- labels ---------------------------------------------------------------------------------

LABEL_SCHEMA: Final = pa.schema(
    [
        ("entity_type", pa.string()),
        ("entity_id", pa.string()),
        ("pattern", pa.string()),
        ("label", pa.int64()),
        ("decided_at", pa.timestamp("us", tz="Asia/Shanghai")),
    ]
)


def labels_table(engine: Engine) -> pa.Table:
    """The verdicts as the contract's ``labels`` table (CONTRACT.md §3)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                labels.c.entity_type,
                labels.c.entity_id,
                labels.c.pattern,
                labels.c.label,
                labels.c.decided_at,
            ).order_by(
                labels.c.decided_at, labels.c.entity_type, labels.c.entity_id, labels.c.pattern
            )
        ).all()
    return pa.table(
        {
            "entity_type": [r.entity_type for r in rows],
            "entity_id": [r.entity_id for r in rows],
            "pattern": [r.pattern for r in rows],
            "label": [int(r.label) for r in rows],
            "decided_at": [r.decided_at.astimezone(SHANGHAI) for r in rows],
        },
        schema=LABEL_SCHEMA,
    )


def export_labels(engine: Engine, out: Path) -> int:
    """Write the verdicts to ``out`` (``.csv``: CSV, otherwise parquet); how many rows."""
    table = labels_table(engine)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        pacsv.write_csv(table, out)
    else:
        pq.write_table(table, out)
    return int(table.num_rows)


# --- one case with its evidence -------------------------------------------------------------


def _words(pattern: str, evidence: dict[str, Any], messages: dict[str, str]) -> list[str]:
    words = [str(m) for m in evidence.get("messages", ()) or ()]
    if not words:
        words = [f"{r}: {messages[r]}" for r in evidence.get("rule_ids", ()) or () if r in messages]
    for reason in evidence.get("top_features", ()) or ():
        words.append(
            f"{reason.get('feature')} = {reason.get('value')}，同类机构中位数 "
            f"{reason.get('peer_median')}，稳健 z 值 {reason.get('z')} / {pattern}: "
            f"{reason.get('feature')} = {reason.get('value')} "
            f"(peer median {reason.get('peer_median')}, z {reason.get('z')})"
        )
    if pattern == "group_admission" and evidence.get("members"):
        members = len(evidence["members"])
        times = len(evidence.get("occasion_dates", ()) or ())
        institution = evidence.get("institution_id", "?")
        words.append(
            f"{members} 名参保人在 {institution} 共同入院 {times} 次 / group of {members} "
            f"patients admitted together {times} times at {institution}"
        )
    if not words:
        words.append(pattern)
    return words


def _visits(conn: Connection, settlement_ids: Iterable[str]) -> dict[str, Any]:
    wanted = sorted(set(settlement_ids))
    found: dict[str, Any] = {}
    v = patient_visits.c
    for chunk in _chunks(wanted):
        for r in conn.execute(select(patient_visits).where(v.settlement_id.in_(chunk))):
            found[r.settlement_id] = r
    return found


_STEP_ORDER: Final = {"received": 0, "returned": 1, "sold": 2, "billed": 3, "reversed": 4}


def _timelines(conn: Connection, row: Any, raw_codes: Iterable[str]) -> list[TraceCodeOut]:
    parsed = canonicalize_codes(sorted(set(raw_codes)))
    codes = sorted({p.canonical for p in parsed.values() if isinstance(p, TraceCode)})
    if not codes:
        return []
    s, e = stock_events.c, ledger_entries.c
    steps: dict[str, list[TraceStepOut]] = {c: [] for c in codes}
    received: dict[str, set[str]] = {c: set() for c in codes}
    for r in conn.execute(select(stock_events).where(s.canonical_code.in_(codes))):
        event = "received" if r.event_type == "purchase" else "returned"
        if event == "received":
            received[r.canonical_code].add(r.institution_id)
        steps[r.canonical_code].append(
            TraceStepOut(at=r.event_at, event=event, institution_id=r.institution_id)
        )
    sales = conn.execute(select(ledger_entries).where(e.canonical_code.in_(codes))).all()
    visits = _visits(conn, [r.settlement_id for r in sales] + [row.entity_id])
    sold_here = {(r.canonical_code, r.settlement_id) for r in sales}
    for r in sales:
        visit = visits.get(r.settlement_id)
        institution = visit.institution_id if visit is not None else None
        steps[r.canonical_code].append(
            TraceStepOut(
                at=r.settled_at,
                event="sold",
                institution_id=institution,
                settlement_id=r.settlement_id,
                patient_id=visit.patient_id if visit is not None else None,
                units=r.units,
                elsewhere=institution is not None and institution not in received[r.canonical_code],
            )
        )
        if r.released_at is not None:
            steps[r.canonical_code].append(
                TraceStepOut(
                    at=r.released_at,
                    event="reversed",
                    institution_id=institution,
                    settlement_id=r.settlement_id,
                )
            )
    this = visits.get(row.entity_id)
    if this is not None:
        for code in codes:
            if (code, row.entity_id) not in sold_here:
                steps[code].append(
                    TraceStepOut(
                        at=this.settled_at,
                        event="billed",
                        institution_id=this.institution_id,
                        settlement_id=row.entity_id,
                        patient_id=this.patient_id,
                        elsewhere=this.institution_id not in received[code],
                    )
                )
    return [
        TraceCodeOut(code=c, steps=sorted(steps[c], key=lambda t: (t.at, _STEP_ORDER[t.event])))
        for c in codes
    ]


def _members(conn: Connection, facts: Sequence[dict[str, Any]]) -> list[GroupMemberOut]:
    institution_of: dict[str, str | None] = {}
    for evidence in facts:
        for m in evidence.get("group_members", ()) or ():
            institution_of[str(m["patient_id"])] = m.get("institution_id")
        for patient in evidence.get("members", ()) or ():
            institution_of.setdefault(str(patient), evidence.get("institution_id"))
    admitted = [
        s
        for evidence in facts
        for o in evidence.get("occasion_dates", ()) or ()
        for s in o.get("settlement_ids", ())
    ]
    admissions: dict[str, list[datetime]] = {}
    for visit in _visits(conn, admitted).values():
        admissions.setdefault(visit.patient_id, []).append(visit.settled_at)
    return [
        GroupMemberOut(patient_id=p, institution_id=i, admissions=sorted(admissions.get(p, [])))
        for p, i in sorted(institution_of.items())
    ]


def _peer_group_size(conn: Connection, peer_group: object) -> int | None:
    """The institutions of a peer group (``features.institution_features.peer_groups``:
    ``kind|level|region``, ``kind|level`` or ``kind``) that the store knows; None when the
    group is not one of those."""
    parts = str(peer_group or "").split("|")
    if not parts[0] or len(parts) > 3:
        return None
    i = institutions.c
    query = select(func.count()).select_from(institutions).where(i.kind == parts[0])
    if len(parts) > 1:
        if not parts[1].isdigit():
            return None
        query = query.where(i.level == int(parts[1]))
    if len(parts) > 2:
        query = query.where(i.region_code == parts[2])
    return int(conn.execute(query).scalar_one())


def case_detail(
    conn: Connection, case_id: str, *, visible: Visible, rulebase: RuleBase | None = None
) -> CaseDetailOut:
    """A case with its flags, their evidence in words, and the facts around them."""
    row = _case_row(conn, case_id, visible)
    messages = {r.id: r.message for r in rulebase.rules} if rulebase is not None else {}
    flag_rows = conn.execute(
        select(case_flags).where(_F.case_id == case_id).order_by(_F.filed_at, _F.pattern)
    ).all()
    facts = [json.loads(f.evidence) for f in flag_rows]
    flags = [
        CaseFlagOut(
            flag_id=f.flag_id,
            pattern=f.pattern,
            score=float(f.score),
            action=f.action,
            amount_at_risk=f.amount_at_risk,
            source=f.source,
            filed_at=f.filed_at,
            words=_words(f.pattern, evidence, messages),
            evidence=evidence,
        )
        for f, evidence in zip(flag_rows, facts, strict=True)
    ]
    events = [
        CaseEventOut(at=e.at, actor=e.actor, kind=e.kind, detail=e.detail)
        for e in conn.execute(
            select(case_events)
            .where(case_events.c.case_id == case_id)
            .order_by(case_events.c.at, case_events.c.event_id)
        )
    ]
    codes = [str(c) for evidence in facts for c in evidence.get("codes", ()) or ()]
    trace = _timelines(conn, row, codes) if row.entity_type == "settlement" else []
    earlier_ids = {
        str(s) for evidence in facts for s in evidence.get("earlier_settlements", ()) or ()
    }
    earlier_ids |= {  # the settlements that sold the same packs
        str(step.settlement_id)
        for code in trace
        for step in code.steps
        if step.event == "sold" and step.settlement_id not in (None, row.entity_id)
    }
    earlier = [
        SettlementRefOut(
            settlement_id=v.settlement_id,
            institution_id=v.institution_id,
            patient_id=v.patient_id,
            settled_at=v.settled_at,
            visit_type=v.visit_type,
            total_amount=v.total_amount,
            reversed_at=v.reversed_at,
        )
        for v in sorted(_visits(conn, earlier_ids).values(), key=lambda v: v.settled_at)
    ]
    institution = None
    if row.entity_type == "institution":
        found = conn.execute(
            select(institutions).where(institutions.c.institution_id == row.entity_id)
        ).first()
        if found is not None:
            institution = InstitutionOut(**found._mapping)
    standing = next(
        (
            {
                k: evidence.get(k)
                for k in (
                    "peer_group",
                    "peer_group_level",
                    "judged_by",
                    "detector",
                    "score",
                    "threshold",
                    "top_features",
                )
            }
            for f, evidence in zip(flag_rows, facts, strict=True)
            if f.pattern == "anomalous_institution"
        ),
        None,
    )
    if standing is not None:  # how many institutions the store knows in that peer group
        standing["peer_group_size"] = _peer_group_size(conn, standing.get("peer_group"))
    reasons = [
        {"pattern": f.pattern, **reason}
        for f, evidence in zip(flag_rows, facts, strict=True)
        for reason in (evidence.get("top_features") or evidence.get("shap") or ())
        if isinstance(reason, dict)
    ]
    base = _case_out(row)
    return CaseDetailOut(
        **base.model_dump(),
        flags=flags,
        events=events,
        trace_codes=trace,
        earlier_settlements=earlier,
        members=_members(conn, facts) if row.entity_type == "group" else [],
        institution=institution,
        peer_standing=standing,
        reasons=reasons,
    )
