"""The credit scheme (医保信用评价方案): a versioned YAML file, validated before use, and the
pure arithmetic of credit: what a decision or a verdict costs each party, the score an
account has on a given day (信用修复 included), its grade, and what the grades ask of the
decision policy.

The file (``rules/credit.yaml`` is the one in force) is data, never code: read with the
rule base's strict safe loader, refused as a whole with every problem named by field
(``grades[2].min: ...``). Its checksum is the SHA-256 of its bytes; its version is its own.

An account is kept as points lost (``lost``, not yet repaired), the local day of its latest
cost, and for doctors and pharmacists the points of the yearly record. Its score on day
``d`` is ``start - lost + repair``, where every full ``repair.clean_days`` since the latest
cost give back ``repair.points`` (never more than was lost), clamped to the scale: a
function of the stored state and the day asked about, never of the wall clock of the
computation, so recomputing the accounts gives what the online updates gave.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Self
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from features.tables import PATTERNS
from rules.base import _loc, _StrictLoader

SHIPPED: Final = "credit.yaml"
SHANGHAI: Final = ZoneInfo("Asia/Shanghai")
DEFAULT: Final = "default"
CREDIT_RULE_ID: Final = "CREDIT"
CREDIT_PATTERNS: Final = ("suspended_doctor", "credit_supervision")
"""Patterns of the hits the credit policy itself makes (rule id ``CREDIT``): a suspended
doctor's settlement, a settlement drawn for review by the institution's grade. They extend
CONTRACT.md §4 and never cost credit themselves."""


class Party(StrEnum):
    """Who holds a credit account (医保信用): a designated institution, an insured person, a
    doctor or pharmacist."""

    INSTITUTION = "institution"
    PATIENT = "patient"
    DOCTOR = "doctor"


class EventKind(StrEnum):
    """What moved an account: a rejected settlement, a settlement sent to review (a flag), a
    confirmed case, a dismissed case giving back what its flags cost."""

    REJECTED = "rejected"
    FLAGGED = "flagged"
    CONFIRMED = "confirmed"
    DISMISSED = "dismissed"


def local_day(at: datetime) -> int:
    """The Asia/Shanghai calendar day of ``at`` as a day number (proleptic ordinal)."""
    return at.astimezone(SHANGHAI).date().toordinal()


def local_year(at: datetime) -> int:
    return at.astimezone(SHANGHAI).year


# --- the file, as pydantic reads it ---------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


Points = Annotated[int, Field(ge=0, le=100_000)]
Share = Annotated[float, Field(ge=0, le=1)]


def _known_patterns(points: Mapping[str, int]) -> Mapping[str, int]:
    allowed = {DEFAULT, *PATTERNS}
    unknown = sorted(set(points) - allowed)
    if unknown:
        raise ValueError(f"unknown pattern(s) {', '.join(unknown)} (CONTRACT.md §4, or default)")
    if DEFAULT not in points:
        raise ValueError("missing default: the points of every pattern not listed")
    return points


class _ScaleIn(_In):
    start: Points
    min: Points
    max: Points

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.min <= self.start <= self.max:
            raise ValueError(f"start {self.start} is not within min {self.min}..max {self.max}")
        return self


class _LabelIn(_In):
    zh: Annotated[str, Field(min_length=1)]
    en: str = ""

    @model_validator(mode="after")
    def _chinese(self) -> Self:
        if not re.search(r"[\u4e00-\u9fff]", self.zh):
            raise ValueError(f"zh {self.zh!r} has no Chinese in it")
        return self


class _GradeIn(_In):
    grade: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9+-]{0,3}$")]
    min: Points
    label: _LabelIn
    review_bar: Annotated[float, Field(gt=0, le=1)] = 1.0
    sample_review: Share = 0.0
    blacklist: bool = False
    prepayment: bool = True
    supervision: str = ""


class _AmountIn(_In):
    per_yuan: Annotated[Decimal, Field(gt=0)]
    points: Points
    max: Points


class _CostIn(_In):
    parties: dict[Party, Share]
    points: dict[str, Points]
    amount: _AmountIn | None = None

    @field_validator("points")
    @classmethod
    def _patterns(cls, points: dict[str, int]) -> dict[str, int]:
        return dict(_known_patterns(points))


class _EventsIn(_In):
    rejected: _CostIn
    flagged: _CostIn
    confirmed: _CostIn


class _RepairIn(_In):
    clean_days: Annotated[int, Field(gt=0, le=3650)]
    points: Points


class _DoctorRecordIn(_In):
    limit: Annotated[int, Field(gt=0, le=100)] = 12
    points: dict[str, Points]

    @field_validator("points")
    @classmethod
    def _patterns(cls, points: dict[str, int]) -> dict[str, int]:
        return dict(_known_patterns(points))


class _SchemeIn(_In):
    version: Annotated[str, Field(min_length=1, max_length=64)]
    description: str = ""
    scale: _ScaleIn
    grades: Annotated[list[_GradeIn], Field(min_length=1, max_length=10)]
    events: _EventsIn
    repair: _RepairIn
    doctor_record: _DoctorRecordIn

    @model_validator(mode="after")
    def _grades(self) -> Self:
        names = [g.grade for g in self.grades]
        if len(set(names)) != len(names):
            raise ValueError(f"grades: a grade is named twice ({', '.join(names)})")
        mins = [g.min for g in self.grades]
        if any(a <= b for a, b in itertools.pairwise(mins)):
            raise ValueError(f"grades: best first, each min below the one before (got {mins})")
        if mins[-1] > self.scale.min:
            raise ValueError(
                f"grades: the last grade's min {mins[-1]} must reach scale.min {self.scale.min}"
                " (every score has a grade)"
            )
        return self


# --- the scheme in use ----------------------------------------------------------------------


@dataclass(frozen=True)
class Grade:
    """One grade band (信用等级) and what it asks of the decision policy."""

    name: str
    min_score: int
    label_zh: str
    label_en: str
    review_bar: float
    sample_review: float
    blacklist: bool
    prepayment: bool
    supervision: str

    @property
    def label(self) -> str:
        return f"{self.label_zh} / {self.label_en}" if self.label_en else self.label_zh


@dataclass(frozen=True)
class Cost:
    """What one kind of event costs: points by pattern, extra points by amount, and the share
    of it each party bears."""

    points: Mapping[str, int]
    shares: Mapping[Party, float]
    per_yuan: Decimal | None = None
    amount_points: int = 0
    amount_max: int = 0

    def base(self, pattern: str) -> int:
        return self.points.get(pattern, self.points[DEFAULT])

    def total(self, pattern: str, amount: Decimal) -> int:
        """Points of one event of ``pattern`` with ``amount`` yuan of the fund at risk (0 when
        the pattern costs nothing, whatever the amount)."""
        base = self.base(pattern)
        if base == 0 or self.per_yuan is None or amount <= 0:
            return base
        return base + min(self.amount_max, int(amount // self.per_yuan) * self.amount_points)

    def share(self, party: Party, points: int) -> int:
        return int(
            (Decimal(points) * Decimal(str(self.shares.get(party, 0.0)))).quantize(
                Decimal(1), rounding=ROUND_HALF_UP
            )
        )


@dataclass(frozen=True)
class Charge:
    """Points one event moves on one party's account: ``points`` < 0 costs, > 0 gives back;
    ``year_points`` are added to a doctor's yearly record."""

    party: Party
    entity_id: str
    kind: EventKind
    pattern: str
    patterns: tuple[str, ...]
    points: int
    year_points: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Account:
    """An account as stored: points lost and not yet repaired, the day of its latest cost,
    and a doctor's yearly record."""

    lost: int = 0
    last_day: int | None = None
    year: int | None = None
    year_points: int = 0


@dataclass(frozen=True)
class Position:
    """One party's credit on a given day: score, grade, what is pending repair and, for a
    doctor, the yearly record."""

    party: Party
    entity_id: str
    score: int
    grade: Grade
    pending_repair: int
    year_points: int = 0
    suspended: bool = False

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.entity_id, "grade": self.grade.name, "score": self.score}
        if self.party is Party.DOCTOR:
            out |= {"year_points": self.year_points, "suspended": self.suspended}
        return out


@dataclass(frozen=True)
class Standing:
    """The credit of a settlement's parties as the decision policy reads it."""

    scheme_version: str
    positions: tuple[Position, ...]

    def of(self, party: Party) -> Position | None:
        return next((p for p in self.positions if p.party is party), None)

    @property
    def review_bar(self) -> float:
        """The poorest grade's bar: what the review thresholds are multiplied by."""
        return min((p.grade.review_bar for p in self.positions), default=1.0)

    @property
    def blacklisted(self) -> bool:
        institution = self.of(Party.INSTITUTION)
        return institution is not None and institution.grade.blacklist

    @property
    def suspended_doctor(self) -> Position | None:
        doctor = self.of(Party.DOCTOR)
        return doctor if doctor is not None and doctor.suspended else None

    def sampled(self, settlement_id: str) -> bool:
        """Whether the institution's grade draws this settlement for review (deterministic:
        from the settlement id)."""
        institution = self.of(Party.INSTITUTION)
        if institution is None or institution.grade.sample_review <= 0:
            return False
        draw = int.from_bytes(hashlib.sha256(settlement_id.encode()).digest()[:8], "big")
        return draw / 2**64 < institution.grade.sample_review

    def as_json(self) -> dict[str, Any]:
        """The ``credit`` field of the scorer's answer: the grades used, and the bar."""
        return {
            "scheme": self.scheme_version,
            **{p.party.value: p.as_json() for p in self.positions},
            "review_bar": self.review_bar,
        }


@dataclass(frozen=True)
class CreditScheme:
    version: str
    checksum: str
    source: str
    start: int
    minimum: int
    maximum: int
    grades: tuple[Grade, ...]
    costs: Mapping[EventKind, Cost]
    repair_days: int
    repair_points: int
    doctor_limit: int
    doctor_points: Mapping[str, int]
    description: str = ""

    def stamp(self) -> dict[str, str]:
        return {"version": self.version, "sha256": self.checksum}

    def grade(self, score: int) -> Grade:
        for grade in self.grades:
            if score >= grade.min_score:
                return grade
        return self.grades[-1]

    def pending_repair(self, account: Account, day: int) -> int:
        """Points a clean record has earned back by ``day`` and not yet banked."""
        if account.last_day is None or day <= account.last_day or account.lost <= 0:
            return 0
        return min(account.lost, (day - account.last_day) // self.repair_days * self.repair_points)

    def position(self, party: Party, entity_id: str, account: Account, at: datetime) -> Position:
        """``account``'s credit at ``at``."""
        pending = self.pending_repair(account, local_day(at))
        score = max(self.minimum, min(self.maximum, self.start - account.lost + pending))
        year_points = account.year_points if account.year == local_year(at) else 0
        return Position(
            party=party,
            entity_id=entity_id,
            score=score,
            grade=self.grade(score),
            pending_repair=pending,
            year_points=year_points,
            suspended=party is Party.DOCTOR and year_points >= self.doctor_limit,
        )

    def year_points_of(self, patterns: Sequence[str]) -> int:
        """Points on a doctor's yearly record for one confirmed violation (its costliest
        pattern)."""
        return max(
            (self.doctor_points.get(p, self.doctor_points[DEFAULT]) for p in patterns), default=0
        )

    def charges(
        self,
        kind: EventKind,
        patterns: Sequence[str],
        amount: Decimal,
        parties: Sequence[tuple[Party, str]],
    ) -> list[Charge]:
        """What one event of ``kind`` (``rejected``, ``flagged``, ``confirmed``) deciding on
        ``patterns`` costs each of ``parties``; nothing for a party whose share rounds to 0."""
        cost = self.costs[kind]
        found = sorted(set(patterns))
        if not found:
            return []
        costliest = max(found, key=lambda p: (cost.base(p), p))
        total = cost.total(costliest, amount)
        out = []
        for party, entity_id in parties:
            points = cost.share(party, total)
            year_points = 0
            if kind is EventKind.CONFIRMED and party is Party.DOCTOR:
                year_points = self.year_points_of(found)
            if points <= 0 and year_points <= 0:
                continue
            reason = _REASONS[kind].format(pattern=costliest, points=points, amount=amount)
            if year_points:
                reason += f"; 记分 {year_points} (doctor's yearly record)"
            out.append(
                Charge(
                    party, entity_id, kind, costliest, tuple(found), -points, year_points, reason
                )
            )
        return out


_REASONS: Final = {
    EventKind.REJECTED: "拒付结算 rejected settlement ({pattern}): -{points}",
    EventKind.FLAGGED: "结算转人工审核 settlement sent to review ({pattern}): -{points}",
    EventKind.CONFIRMED: "案件查实 confirmed case ({pattern}, {amount} yuan at risk): -{points}",
}


# --- reading --------------------------------------------------------------------------------


class CreditSchemeError(ValueError):
    """A credit scheme that cannot be used; ``problems`` names every reason by field."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"{source}: {len(self.problems)} problem(s) in the credit scheme:\n{lines}"
        )


def _problems(error: ValidationError) -> list[str]:
    out = []
    for e in error.errors(include_url=False):
        where = _loc([str(p) if not isinstance(p, int) else p for p in e["loc"]]) or "file"
        if e["type"] == "extra_forbidden":
            reason = "unknown name"
        elif e["type"] == "missing":
            reason = "missing"
        else:
            reason = str(e["msg"]).removeprefix("Value error, ")
            if e["type"] not in ("value_error", "assertion_error") and "input" in e:
                reason += f", got {e['input']!r}"
        out.append(f"{where}: {reason}")
    return out


def _cost(raw: _CostIn) -> Cost:
    return Cost(
        points=dict(raw.points),
        shares=dict(raw.parties),
        per_yuan=raw.amount.per_yuan if raw.amount else None,
        amount_points=raw.amount.points if raw.amount else 0,
        amount_max=raw.amount.max if raw.amount else 0,
    )


def parse_scheme(data: bytes, source: str = "<credit>") -> CreditScheme:
    """The credit scheme in ``data`` (a scheme file's bytes); CreditSchemeError names every
    problem."""
    checksum = hashlib.sha256(data).hexdigest()
    try:
        text = io.StringIO(data.decode("utf-8"))
        text.name = source
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as error:
        raise CreditSchemeError(source, [f"file: not UTF-8 text: {error}"]) from None
    except yaml.YAMLError as error:
        raise CreditSchemeError(source, [f"file: not valid YAML: {error}"]) from None
    if not isinstance(document, dict):
        raise CreditSchemeError(source, ["file: a mapping with version, scale, grades, ..."])
    try:
        raw = _SchemeIn.model_validate(document)
    except ValidationError as error:
        raise CreditSchemeError(source, _problems(error)) from None
    return CreditScheme(
        version=raw.version.strip(),
        checksum=checksum,
        source=source,
        start=raw.scale.start,
        minimum=raw.scale.min,
        maximum=raw.scale.max,
        grades=tuple(
            Grade(
                name=g.grade,
                min_score=g.min,
                label_zh=g.label.zh,
                label_en=g.label.en,
                review_bar=g.review_bar,
                sample_review=g.sample_review,
                blacklist=g.blacklist,
                prepayment=g.prepayment,
                supervision=g.supervision,
            )
            for g in raw.grades
        ),
        costs={
            EventKind.REJECTED: _cost(raw.events.rejected),
            EventKind.FLAGGED: _cost(raw.events.flagged),
            EventKind.CONFIRMED: _cost(raw.events.confirmed),
        },
        repair_days=raw.repair.clean_days,
        repair_points=raw.repair.points,
        doctor_limit=raw.doctor_record.limit,
        doctor_points=dict(raw.doctor_record.points),
        description=raw.description,
    )


def load_scheme(path: Path | None = None) -> CreditScheme:
    """The scheme in the file at ``path``, or the one in force (shipped) without one."""
    if path is None:
        return shipped_scheme()
    return parse_scheme(path.read_bytes(), str(path))


@functools.cache
def shipped_scheme() -> CreditScheme:
    """The scheme in force: ``rules/credit.yaml`` of this package (read once)."""
    data = resources.files("rules").joinpath(SHIPPED).read_bytes()
    return parse_scheme(data, f"rules/{SHIPPED}")
