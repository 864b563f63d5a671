"""The scorer's HTTP schemas (CONTRACT.md §6): one per direction, strict on the way in.

Money is ``Decimal`` (yuan, at most two decimals, never negative); a time without an
offset is Asia/Shanghai local time; unknown fields are refused (``extra="forbid"``), so a
typo in a field name is a 422 that names it, never a silently ignored value.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from rules.base import Action
from traceability.codes import InvalidTraceCode, try_parse_trace_code

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _zoned(value: datetime) -> datetime:
    return value.replace(tzinfo=SHANGHAI) if value.tzinfo is None else value


def _cents(value: Decimal) -> Decimal:
    if value.as_tuple().exponent < -2:  # type: ignore[operator]
        raise ValueError("money has at most two decimals (yuan and fen)")
    return value


Id = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
Money = Annotated[Decimal, Field(ge=0, max_digits=16), AfterValidator(_cents)]
Time = Annotated[datetime, AfterValidator(_zoned)]
LocalTime = Annotated[datetime, AfterValidator(lambda t: _zoned(t).astimezone(SHANGHAI))]
"""A time as the answers give it: in Asia/Shanghai, whatever zone it was stored in."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gender(StrEnum):
    M = "M"
    F = "F"


class VisitType(StrEnum):
    OUTPATIENT = "outpatient"
    INPATIENT = "inpatient"
    PHARMACY = "pharmacy"


class ItemType(StrEnum):
    DRUG = "drug"
    SERVICE = "service"
    MATERIAL = "material"


class Decision(StrEnum):
    PASS = "pass"  # noqa: S105 - a decision, not a password
    REVIEW = "review"
    REJECT = "reject"


class PatientIn(Strict):
    patient_id: Id
    gender: Gender
    birth_date: date
    locality_code: Annotated[str, StringConstraints(pattern=r"^\d{12}$")] | None = None


class ItemIn(Strict):
    line_no: Annotated[int, Field(ge=1)]
    item_type: ItemType
    item_code: Id
    quantity: Annotated[Decimal, Field(gt=0, max_digits=14)]
    unit_price: Money
    amount: Money
    trace_codes: list[Annotated[str, StringConstraints(max_length=200)]] | None = None
    split_sale: bool | None = None


class SettlementIn(Strict):
    settlement_id: Id
    institution_id: Id
    patient: PatientIn
    doctor_id: Id | None = None
    settled_at: Time
    visit_type: VisitType
    admit_date: date | None = None
    discharge_date: date | None = None
    diagnosis_code: Annotated[str, StringConstraints(max_length=16)] | None = None
    total_amount: Money
    fund_paid: Money
    items: Annotated[list[ItemIn], Field(min_length=1, max_length=500)]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        if self.fund_paid > self.total_amount:
            problems.append(f"fund_paid {self.fund_paid} exceeds total_amount {self.total_amount}")
        line_nos = [item.line_no for item in self.items]
        if len(set(line_nos)) != len(line_nos):
            problems.append("items: line_no repeated")
        if self.visit_type is VisitType.INPATIENT and (
            self.admit_date is None or self.discharge_date is None
        ):
            problems.append("an inpatient settlement needs admit_date and discharge_date")
        if self.admit_date and self.discharge_date and self.discharge_date < self.admit_date:
            problems.append(
                f"discharge_date {self.discharge_date} is before admit_date {self.admit_date}"
            )
        for item in self.items:
            if item.split_sale and not item.trace_codes:
                problems.append(f"items line {item.line_no}: a split sale without its code")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class HitOut(BaseModel):
    rule_id: str
    pattern: str
    action: Action
    """What the rule asks: ``reject``, ``review`` or ``info``."""
    line_no: int | None = None
    message: str


class ModelOut(BaseModel):
    name: str | None = None
    version: str | None = None
    score: float | None = None


class ScoreOut(BaseModel):
    settlement_id: str
    decision: Decision
    risk_score: float
    hits: list[HitOut]
    model: ModelOut
    credit: dict[str, Any]
    degraded: bool
    degraded_reason: str | None = None
    """Why the model had no say in a degraded answer (no model, over its time budget, ...)."""


class ReversalIn(Strict):
    reversed_at: Time


class ReversalOut(BaseModel):
    settlement_id: str
    reversed_at: LocalTime
    released_codes: int


class StockEventType(StrEnum):
    PURCHASE = "purchase"
    RETURN = "return"


def _valid_code(raw: str) -> str:
    parsed = try_parse_trace_code(raw)
    if isinstance(parsed, InvalidTraceCode):
        raise ValueError(f"invalid traceability code: {parsed.reason}")
    return raw


class TraceEventIn(Strict):
    trace_code: Annotated[
        str, StringConstraints(min_length=1, max_length=200), AfterValidator(_valid_code)
    ]
    event_type: StockEventType
    institution_id: Id
    event_at: Time


class TraceEventsOut(BaseModel):
    received: int
    recorded: int


class BlacklistIn(Strict):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500, strip_whitespace=True)]


class BlacklistOut(BaseModel):
    institution_id: str
    reason: str
    added_at: LocalTime


class RuleExecutionOut(BaseModel):
    """One rule run on the settlement: ``hit``, ``no_hit`` or ``error``, and how long it took."""

    rule_id: str
    outcome: str
    micros: int
    error: str | None = None


class RuleBaseOut(BaseModel):
    version: str
    sha256: str


class DecisionOut(BaseModel):
    """A past decision explained (``GET /v1/decisions/{settlement_id}``): the answer as it was
    given, what decided it and when, and the reversal if the settlement was refunded."""

    settlement_id: str
    institution_id: str
    patient_id: str
    settled_at: LocalTime
    decided_at: LocalTime
    latency_us: int
    request_sha256: str
    rulebase: RuleBaseOut
    answer: ScoreOut
    rule_executions: list[RuleExecutionOut]
    reversal: ReversalOut | None = None


class CreditEventOut(BaseModel):
    """One event that moved a credit account: a rejected settlement, a settlement sent to
    review (a flag), a confirmed case, a dismissed case giving a flag's cost back."""

    at: LocalTime
    """When it counts from: the settlement's time, or the verdict's."""
    kind: str
    pattern: str
    patterns: list[str]
    points: int
    """Negative: a cost; positive: points given back."""
    year_points: int
    """Points on a doctor's yearly record (医保支付资格记分)."""
    source: str
    """The settlement or the verdict behind it."""
    settlement_id: str | None = None
    restored_by: str | None = None
    """The dismissed verdict that gave this cost back."""
    reason: str


class CreditOut(BaseModel):
    """The credit of an institution, a patient or a doctor (``GET /v1/credit/...``): score,
    grade and the events behind them, newest first, in words an inspector can read."""

    entity_type: str
    entity_id: str
    score: int
    grade: str
    grade_label: str
    as_of: LocalTime
    scheme_version: str
    lost: int
    """Points lost and not yet repaired."""
    repaired: int
    """Points a clean record repaired (信用修复)."""
    restored: int
    """Points given back by dismissed cases."""
    prepayment: bool
    blacklisted: bool
    year_points: int | None = None
    suspended: bool | None = None
    summary: str
    events: list[CreditEventOut]


class ErrorOut(BaseModel):
    """An error that is not a validation problem (401, 403, 404, 503): what went wrong."""

    detail: str


# --- cases (CONTRACT.md §6: the inspectors' queue) ------------------------------------------


class CaseStatus(StrEnum):
    """Where a case stands: ``new`` (in the queue), ``in_review`` (an inspector works it),
    ``confirmed`` or ``dismissed`` (a verdict was recorded; reopening sends it back to
    ``in_review``)."""

    NEW = "new"
    IN_REVIEW = "in_review"
    CONFIRMED = "confirmed"
    DISMISSED = "dismissed"


class OpenStatus(StrEnum):
    """The statuses ``POST /v1/cases/{case_id}/status`` may set (a verdict closes a case)."""

    NEW = "new"
    IN_REVIEW = "in_review"


class VerdictKind(StrEnum):
    CONFIRMED = "confirmed"
    DISMISSED = "dismissed"


Words = Annotated[str, StringConstraints(max_length=2000, strip_whitespace=True)]


class VerdictIn(Strict):
    """An inspector's verdict on a case; a dismissal says why (``note``)."""

    verdict: VerdictKind
    note: Words = ""

    @model_validator(mode="after")
    def _dismissal_has_a_reason(self) -> Self:
        if self.verdict is VerdictKind.DISMISSED and not self.note:
            raise ValueError("note: a dismissed case says why it is dismissed")
        return self


class AssignIn(Strict):
    """Who works the case (a name or an account); null takes the assignment back."""

    assignee: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None


class StatusIn(Strict):
    status: OpenStatus
    reason: Words = ""


class NoteIn(Strict):
    note: Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]


class CaseOut(BaseModel):
    """One case of the queue: the flags of one entity gathered, ordered by ``priority``, the
    expected loss (``probability`` x ``amount_at_risk``, yuan)."""

    case_id: str
    entity_type: str
    entity_id: str
    patterns: list[str]
    priority: Decimal
    probability: float
    amount_at_risk: Decimal
    region_code: str
    status: CaseStatus
    assignee: str | None = None
    created_at: LocalTime
    updated_at: LocalTime


class CaseFlagOut(BaseModel):
    """A flag of the case, with its evidence and what it says in words."""

    flag_id: str
    pattern: str
    score: float
    action: str
    amount_at_risk: Decimal
    source: str
    """``batch`` (a screening) or ``online`` (a decision of the scorer)."""
    filed_at: LocalTime
    words: list[str]
    """The rule hits and model reasons in words."""
    evidence: dict[str, Any]


class CaseEventOut(BaseModel):
    at: LocalTime
    actor: str
    kind: str
    detail: str


class TraceStepOut(BaseModel):
    """One step of a traceability code's life: ``received`` or ``returned`` by an
    institution (the supply chain), ``sold`` by a settlement, ``reversed`` (refunded,
    released), ``billed`` (this case's settlement, when it consumed nothing)."""

    at: LocalTime
    event: str
    institution_id: str | None = None
    settlement_id: str | None = None
    patient_id: str | None = None
    units: Decimal | None = None
    elsewhere: bool = False
    """Sold by an institution that never received the pack: it reappeared elsewhere."""


class TraceCodeOut(BaseModel):
    code: str
    steps: list[TraceStepOut]


class SettlementRefOut(BaseModel):
    """An earlier settlement the evidence names."""

    settlement_id: str
    institution_id: str
    patient_id: str
    settled_at: LocalTime
    visit_type: str | None = None
    total_amount: Decimal | None = None
    reversed_at: LocalTime | None = None


class GroupMemberOut(BaseModel):
    patient_id: str
    institution_id: str | None = None
    admissions: list[LocalTime]


class InstitutionOut(BaseModel):
    institution_id: str
    name: str
    kind: str
    level: int
    region_code: str


class CaseDetailOut(CaseOut):
    """A case with its flags and their evidence (``GET /v1/cases/{case_id}``): each trace
    code's timeline and the earlier settlements (settlement cases), the members and their
    admissions (groups), where the institution stands in its peer group, the models'
    reasons, and the case's events (the audit trail)."""

    flags: list[CaseFlagOut]
    events: list[CaseEventOut]
    trace_codes: list[TraceCodeOut]
    earlier_settlements: list[SettlementRefOut]
    members: list[GroupMemberOut]
    institution: InstitutionOut | None = None
    peer_standing: dict[str, Any] | None = None
    reasons: list[dict[str, Any]]
