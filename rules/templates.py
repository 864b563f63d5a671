"""The rule templates of the rule base (规则库), each defined once.

A template is one kind of rule: what its parameters are, what *facts* it looks at, the
predicate over those facts, and how DuckDB computes the facts of a whole history. A rule
of the rule file is a template with parameters (``rules.base``).

The facts are what an executor must know about one line (or one settlement) for the
predicate to decide; they are the same whoever computes them:
- batch: ``batch_sql`` computes the facts of every line of a history (``rules.batch``);
- online: the scorer computes them for one settlement from the store.
Every predicate is written with ``&``, ``|`` and ``~`` over ``numpy`` arrays, so it runs
on a batch of lines and on one line (scalars) alike, exactly as ``traceability.checks``.

Facts that a rule's parameters fix (an overriding limit, a window) are filled in from the
parameters (``fixed_facts``); the others come from the history and the catalog (the
knowledge base, 知识库): a rule uses the catalog's limits unless its parameters override
them for the items they list.

History semantics (semantics.md): a window of N days before a settlement settled at t is
``(t - N days, t]``; it counts every settlement of the patient at any institution settled
before t (ties by settlement id) and the settlement itself, except those reversed at or
before t. Ages are whole years on the local (Asia/Shanghai) date of the settlement.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Generic, Literal, TypeVar

import numpy as np
import pyarrow as pa
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    model_validator,
)

from traceability.checks import CHECKS, CodeFacts, Flags, TracePattern

# --- parameter and fact types ----------------------------------------------------------


def _text_code(value: object) -> object:
    if isinstance(value, int | float):  # bool too
        raise ValueError(
            f"write item codes in quotes, e.g. '{value}': YAML reads {value} as"
            f" {type(value).__name__}, not text"
        )
    return value


def _non_empty(items: tuple[str, ...]) -> tuple[str, ...]:
    if not items:
        raise ValueError("list at least one item code, or leave items out")
    return items


ItemCode = Annotated[
    str, BeforeValidator(_text_code), StringConstraints(min_length=1, max_length=64)
]
ItemType = Literal["drug", "service"]
Gender = Literal["M", "F"]
Count = Annotated[int, Strict(), Field(ge=1)]
Age = Annotated[int, Strict(), Field(ge=0, le=150)]
Days = Annotated[int, Strict(), Field(ge=0, le=3650)]
Level = Literal["line", "settlement"]


class Params(BaseModel):
    """A template's parameters: strict, no unknown names."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FactsIn(BaseModel):
    """A template's facts as a rule's examples write them (scalars, no unknown names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ItemScope(Params):
    """Which lines a catalog rule looks at: item types, and optionally only some items."""

    items: Annotated[tuple[ItemCode, ...], AfterValidator(_non_empty)] | None = None
    """Only these items (drug or service codes); a rule's overriding limits apply to them."""

    def _require_items(self, *overrides: str) -> None:
        given = [name for name in overrides if getattr(self, name) is not None]
        if given and self.items is None:
            raise ValueError(
                f"{', '.join(given)}: a rule's own limit applies only to the items it lists;"
                " add items"
            )


P = TypeVar("P", bound=Params)
F = TypeVar("F")

DAY_US: Final = 86_400_000_000


def _floats(values: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Numbers with None as NaN, so a comparison with a missing limit is False."""
    return np.asarray(values, dtype=np.float64)


def _bools(values: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
    return np.asarray(values, dtype=np.bool_)


# --- templates -----------------------------------------------------------------------------


class Template(ABC, Generic[P, F]):
    """One kind of rule. Subclasses set the class attributes and the methods below."""

    name: ClassVar[str]
    summary: ClassVar[str]
    level: ClassVar[Level]
    """``line``: facts per settlement line; ``settlement``: facts per settlement."""
    params_model: ClassVar[type[Params]]
    facts_model: ClassVar[type[FactsIn]]
    """The facts as examples write them; its fields are those of ``facts_type``."""
    facts_type: ClassVar[type[Any]]
    """The frozen dataclass the predicate takes (arrays in batch, scalars for one row)."""

    @abstractmethod
    def pattern(self, params: P) -> str:
        """The pattern (CONTRACT.md §4) a hit of this rule flags."""

    @abstractmethod
    def predicate(self, params: P, facts: F) -> Flags:
        """True where the rule fires (most templates read the facts alone)."""

    def fixed_facts(self, params: P) -> dict[str, object]:
        """The facts the parameters fix (examples leave them out)."""
        return {}

    def items_table(self, params: P) -> pa.Table | None:
        """The rule's listed items with their overriding limits (a table the SQL joins)."""
        return None

    @abstractmethod
    def batch_sql(self, params: P, items: str) -> str | None:
        """DuckDB SQL giving the facts of every line (or settlement) of a history.

        It reads the executor's tables (``rule_lines``, ``rule_catalog``, ``rule_blacklist``
        and the contract views) and ``items`` (the name of this rule's ``items_table``),
        and returns ``settlement_id``, ``line_no`` (NULL for a settlement), ``amount``, a
        column per fact, and evidence columns. None: the batch hits come from elsewhere.
        """

    def facts_of(self, columns: dict[str, Any]) -> F:
        """The facts dataclass from columns (arrays) or values (one row) by field name."""
        names = [f.name for f in dataclasses.fields(self.facts_type)]
        built: F = self.facts_type(**{name: columns[name] for name in names})
        return built

    def fires(self, params: P, facts: F) -> bool:
        """The predicate on one row."""
        return bool(np.asarray(self.predicate(params, facts)).all())


# gender_restriction ------------------------------------------------------------------------


@dataclass(frozen=True)
class GenderFacts:
    """``item_gender_restriction``: ``M``/``F``, or None when the item is not restricted."""

    patient_gender: Any
    item_gender_restriction: Any


class GenderFactsIn(FactsIn):
    patient_gender: Gender
    item_gender_restriction: Gender | None = None


class GenderParams(ItemScope):
    item_types: tuple[ItemType, ...] = Field(default=("drug", "service"), min_length=1)
    gender: Gender | None = None
    """The gender the listed items are restricted to, instead of the catalog's."""

    @model_validator(mode="after")
    def _overrides(self) -> GenderParams:
        self._require_items("gender")
        return self


def gender_mismatch(f: GenderFacts) -> Flags:
    """A drug or service restricted to the other gender (e.g. 前列腺特异性抗原 for a woman)."""
    restriction = np.asarray(f.item_gender_restriction, dtype=object)
    gender = np.asarray(f.patient_gender, dtype=object)
    restricted = _bools(restriction == "M") | _bools(restriction == "F")
    known = _bools(gender == "M") | _bools(gender == "F")
    return np.asarray(restricted & known & _bools(restriction != gender), dtype=np.bool_)


def _item_types(types: tuple[str, ...]) -> str:
    return ", ".join(f"'{t}'" for t in sorted(set(types)))  # validated literals


def _scope_join(params: ItemScope, items: str) -> str:
    return f"JOIN {items} o USING (item_code)" if params.items is not None else ""


def _items_rows(params: ItemScope, **limits: object) -> pa.Table | None:
    if params.items is None:
        return None
    codes = sorted(set(params.items))
    columns: dict[str, pa.Array] = {"item_code": pa.array(codes, pa.string())}
    for name, value in limits.items():
        kind = pa.string() if isinstance(value, str) else pa.int64()
        columns[name] = pa.array([value] * len(codes), kind)
    return pa.table(columns)


def _limit(params: ItemScope, name: str) -> str:
    """The catalog's limit, or the rule's for its listed items."""
    if params.items is not None and getattr(params, name, None) is not None:
        return f"o.{name}"
    return f"c.{name}"


class GenderRestriction(Template[GenderParams, GenderFacts]):
    name = "gender_restriction"
    summary = "a drug or service restricted to the other gender"
    level = "line"
    params_model = GenderParams
    facts_model = GenderFactsIn
    facts_type = GenderFacts

    def pattern(self, params: GenderParams) -> str:
        return "gender_restriction"

    def predicate(self, params: GenderParams, facts: GenderFacts) -> Flags:
        return gender_mismatch(facts)

    def items_table(self, params: GenderParams) -> pa.Table | None:
        return _items_rows(params, gender=params.gender)

    def batch_sql(self, params: GenderParams, items: str) -> str:
        restriction = "o.gender" if params.gender is not None else "c.gender_restriction"
        return f"""
            SELECT l.settlement_id, l.line_no, l.amount, l.item_type, l.item_code,
                   l.patient_gender, {restriction} AS item_gender_restriction
            FROM rule_lines l
            LEFT JOIN rule_catalog c USING (item_type, item_code)
            {_scope_join(params, items)}
            WHERE l.item_type IN ({_item_types(params.item_types)})
              AND {restriction} IS NOT NULL
        """  # noqa: S608 - validated literals and our own table names


# age_restriction ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AgeFacts:
    """``patient_age``: whole years on the local settlement date; a missing bound is None."""

    patient_age: Any
    min_age: Any
    max_age: Any


class AgeFactsIn(FactsIn):
    patient_age: Age
    min_age: Age | None = None
    max_age: Age | None = None


class AgeParams(ItemScope):
    item_types: tuple[ItemType, ...] = Field(default=("drug", "service"), min_length=1)
    min_age: Age | None = None
    max_age: Age | None = None

    @model_validator(mode="after")
    def _overrides(self) -> AgeParams:
        self._require_items("min_age", "max_age")
        if self.min_age is not None and self.max_age is not None and self.min_age > self.max_age:
            raise ValueError(f"min_age {self.min_age} is above max_age {self.max_age}")
        return self


def age_outside(f: AgeFacts) -> Flags:
    """The patient's age is outside the item's range (bounds inclusive)."""
    age = _floats(f.patient_age)
    return np.asarray((age < _floats(f.min_age)) | (age > _floats(f.max_age)), dtype=np.bool_)


class AgeRestriction(Template[AgeParams, AgeFacts]):
    name = "age_restriction"
    summary = "a drug or service outside its age range (whole years on the settlement date)"
    level = "line"
    params_model = AgeParams
    facts_model = AgeFactsIn
    facts_type = AgeFacts

    def pattern(self, params: AgeParams) -> str:
        return "age_restriction"

    def predicate(self, params: AgeParams, facts: AgeFacts) -> Flags:
        return age_outside(facts)

    def items_table(self, params: AgeParams) -> pa.Table | None:
        return _items_rows(params, min_age=params.min_age, max_age=params.max_age)

    def batch_sql(self, params: AgeParams, items: str) -> str:
        lo, hi = _limit(params, "min_age"), _limit(params, "max_age")
        return f"""
            SELECT l.settlement_id, l.line_no, l.amount, l.item_type, l.item_code,
                   l.patient_age, {lo} AS min_age, {hi} AS max_age
            FROM rule_lines l
            LEFT JOIN rule_catalog c USING (item_type, item_code)
            {_scope_join(params, items)}
            WHERE l.item_type IN ({_item_types(params.item_types)})
              AND ({lo} IS NOT NULL OR {hi} IS NOT NULL)
        """  # noqa: S608 - validated literals and our own table names


# over_frequency and over_quantity: a patient's units of one item in a window ---------------

_WINDOW_SQL: Final = """
WITH scoped AS (
    SELECT l.settlement_id, l.line_no, l.amount, l.item_code, l.quantity, l.patient_id,
           l.t_us, l.r_us, {limit} AS item_limit, {period} AS period_days
    FROM rule_lines l
    LEFT JOIN rule_catalog c USING (item_type, item_code)
    {scope}
    WHERE l.item_type = '{item_type}' AND {limit} IS NOT NULL AND {period} IS NOT NULL
),
uses AS (  -- one row per (patient, item, settlement): a settlement is one moment
    SELECT patient_id, item_code, settlement_id, any_value(t_us) AS t_us,
           any_value(r_us) AS r_us, any_value(period_days) AS period_days,
           sum(quantity)::BIGINT AS units,
           any_value(t_us) // (any_value(period_days) * {day_us}) AS bucket
    FROM scoped GROUP BY patient_id, item_code, settlement_id
),
probes AS (  -- a window (t - N days, t] lies in the bucket of t or the one before
    SELECT u.*, unnest([u.bucket, u.bucket - 1]) AS probe FROM uses u
),
counted AS (
    SELECT u.settlement_id, u.item_code, sum(e.units)::BIGINT AS in_window,
           list(e.settlement_id ORDER BY e.t_us, e.settlement_id)
               FILTER (WHERE e.settlement_id <> u.settlement_id) AS earlier
    FROM probes u
    JOIN uses e ON e.patient_id = u.patient_id AND e.item_code = u.item_code
               AND e.bucket = u.probe
    WHERE e.t_us > u.t_us - u.period_days * {day_us}
      AND (e.t_us < u.t_us OR (e.t_us = u.t_us AND e.settlement_id <= u.settlement_id))
      AND (e.r_us IS NULL OR e.r_us > u.t_us)
    GROUP BY u.settlement_id, u.item_code
)
SELECT s.settlement_id, s.line_no, s.amount, s.item_code,
       coalesce(c.in_window, 0) AS {count_fact}, s.item_limit AS {limit_fact},
       s.period_days AS {period_fact}, coalesce(c.earlier, []) AS earlier_settlements
FROM scoped s LEFT JOIN counted c USING (settlement_id, item_code)
"""


@dataclass(frozen=True)
class FrequencyFacts:
    """``times_in_period``: the patient's quantity of this service over the settlements in
    ``(t - period_days, t]`` (any institution, not reversed by t), this settlement's
    lines included; ``max_times``: the limit (the catalog's or the rule's)."""

    times_in_period: Any
    max_times: Any


class FrequencyFactsIn(FactsIn):
    times_in_period: Annotated[int, Strict(), Field(ge=0)]
    max_times: Count


class FrequencyParams(ItemScope):
    max_times: Count | None = None
    period_days: Count | None = None

    @model_validator(mode="after")
    def _overrides(self) -> FrequencyParams:
        self._require_items("max_times", "period_days")
        return self


def over_frequency(f: FrequencyFacts) -> Flags:
    """A service billed more than ``max_times`` in its period (e.g. 糖化血红蛋白)."""
    return np.asarray(_floats(f.times_in_period) > _floats(f.max_times), dtype=np.bool_)


class OverFrequency(Template[FrequencyParams, FrequencyFacts]):
    name = "over_frequency"
    summary = "a service billed more than max_times per period_days window per patient"
    level = "line"
    params_model = FrequencyParams
    facts_model = FrequencyFactsIn
    facts_type = FrequencyFacts

    def pattern(self, params: FrequencyParams) -> str:
        return "over_frequency"

    def predicate(self, params: FrequencyParams, facts: FrequencyFacts) -> Flags:
        return over_frequency(facts)

    def fixed_facts(self, params: FrequencyParams) -> dict[str, object]:
        return {} if params.max_times is None else {"max_times": params.max_times}

    def items_table(self, params: FrequencyParams) -> pa.Table | None:
        return _items_rows(params, max_times=params.max_times, period_days=params.period_days)

    def batch_sql(self, params: FrequencyParams, items: str) -> str:
        return _WINDOW_SQL.format(
            limit=_limit(params, "max_times"),
            period=_limit(params, "period_days"),
            scope=_scope_join(params, items),
            item_type="service",
            day_us=DAY_US,
            count_fact="times_in_period",
            limit_fact="max_times",
            period_fact="period_days",
        )


@dataclass(frozen=True)
class QuantityFacts:
    """``units_in_window``: the patient's units of this drug over the settlements in
    ``(t - window_days, t]`` (any institution, not reversed by t), this settlement's lines
    included; the limit is ``max_units_per_day × window_days``."""

    units_in_window: Any
    max_units_per_day: Any
    window_days: Any


class QuantityFactsIn(FactsIn):
    units_in_window: Annotated[int, Strict(), Field(ge=0)]
    max_units_per_day: Count
    window_days: Count


class QuantityParams(ItemScope):
    max_units_per_day: Count | None = None
    window_days: Count = 30

    @model_validator(mode="after")
    def _overrides(self) -> QuantityParams:
        self._require_items("max_units_per_day")
        return self


def over_quantity(f: QuantityFacts) -> Flags:
    """More units of a drug than ``max_units_per_day`` for every day of the window."""
    limit = _floats(f.max_units_per_day) * _floats(f.window_days)
    return np.asarray(_floats(f.units_in_window) > limit, dtype=np.bool_)


class OverQuantity(Template[QuantityParams, QuantityFacts]):
    name = "over_quantity"
    summary = "drug units beyond max_units_per_day × window_days across recent purchases"
    level = "line"
    params_model = QuantityParams
    facts_model = QuantityFactsIn
    facts_type = QuantityFacts

    def pattern(self, params: QuantityParams) -> str:
        return "over_quantity"

    def predicate(self, params: QuantityParams, facts: QuantityFacts) -> Flags:
        return over_quantity(facts)

    def fixed_facts(self, params: QuantityParams) -> dict[str, object]:
        fixed: dict[str, object] = {"window_days": params.window_days}
        if params.max_units_per_day is not None:
            fixed["max_units_per_day"] = params.max_units_per_day
        return fixed

    def items_table(self, params: QuantityParams) -> pa.Table | None:
        return _items_rows(params, max_units_per_day=params.max_units_per_day)

    def batch_sql(self, params: QuantityParams, items: str) -> str:
        return _WINDOW_SQL.format(
            limit=_limit(params, "max_units_per_day"),
            period=str(int(params.window_days)),
            scope=_scope_join(params, items),
            item_type="drug",
            day_us=DAY_US,
            count_fact="units_in_window",
            limit_fact="max_units_per_day",
            period_fact="window_days",
        )


# split_admission ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadmissionFacts:
    """``days_since_discharge``: admit_date minus the discharge_date of the nearest earlier
    stay (settled before, not reversed by then) of the patient at the same institution with
    the same diagnosis category, counting only stays discharged on or before this admission;
    None when there is none."""

    days_since_discharge: Any
    max_gap_days: Any


class ReadmissionFactsIn(FactsIn):
    days_since_discharge: Annotated[int, Strict(), Field(ge=0)] | None
    max_gap_days: Days


class SplitAdmissionParams(Params):
    max_gap_days: Days = 15
    diagnosis_chars: Annotated[int, Strict(), Field(ge=1, le=8)] = 3
    """How many leading characters of the ICD-10 code make the "same condition" (3: the
    category)."""


def readmitted_soon(f: ReadmissionFacts) -> Flags:
    """Readmitted within ``max_gap_days`` of a discharge for the same condition (分解住院)."""
    gap = _floats(f.days_since_discharge)
    return np.asarray((gap >= 0) & (gap <= _floats(f.max_gap_days)), dtype=np.bool_)


class SplitAdmission(Template[SplitAdmissionParams, ReadmissionFacts]):
    name = "split_admission"
    summary = "readmission at the same institution soon after discharge, same diagnosis group"
    level = "settlement"
    params_model = SplitAdmissionParams
    facts_model = ReadmissionFactsIn
    facts_type = ReadmissionFacts

    def pattern(self, params: SplitAdmissionParams) -> str:
        return "split_admission"

    def predicate(self, params: SplitAdmissionParams, facts: ReadmissionFacts) -> Flags:
        return readmitted_soon(facts)

    def fixed_facts(self, params: SplitAdmissionParams) -> dict[str, object]:
        return {"max_gap_days": params.max_gap_days}

    def batch_sql(self, params: SplitAdmissionParams, items: str) -> str:
        return f"""
            WITH stays AS (
                SELECT s.settlement_id, s.patient_id, s.institution_id, s.total_amount,
                       left(s.diagnosis_code, {int(params.diagnosis_chars)}) AS diagnosis_group,
                       s.admit_date, s.discharge_date,
                       epoch_us(s.settled_at) AS t_us, epoch_us(r.reversed_at) AS r_us
                FROM settlements s LEFT JOIN reversals r USING (settlement_id)
                WHERE s.visit_type = 'inpatient' AND s.diagnosis_code IS NOT NULL
                  AND s.admit_date IS NOT NULL
            ),
            gaps AS (
                SELECT s.settlement_id, e.settlement_id AS earlier_stay,
                       date_diff('day', e.discharge_date, s.admit_date) AS gap
                FROM stays s
                JOIN stays e ON e.patient_id = s.patient_id
                            AND e.institution_id = s.institution_id
                            AND e.diagnosis_group = s.diagnosis_group
                WHERE (e.t_us < s.t_us OR (e.t_us = s.t_us AND e.settlement_id < s.settlement_id))
                  AND (e.r_us IS NULL OR e.r_us > s.t_us)
                  AND e.discharge_date IS NOT NULL AND e.discharge_date <= s.admit_date
            ),
            nearest AS (
                SELECT settlement_id, min(gap) AS gap,
                       first(earlier_stay ORDER BY gap, earlier_stay) AS earlier_stay
                FROM gaps GROUP BY settlement_id
            )
            SELECT s.settlement_id, NULL::BIGINT AS line_no, s.total_amount AS amount,
                   s.diagnosis_group, n.gap AS days_since_discharge,
                   {int(params.max_gap_days)} AS max_gap_days,
                   CASE WHEN n.earlier_stay IS NULL THEN []::VARCHAR[]
                        ELSE [n.earlier_stay] END AS earlier_settlements
            FROM stays s LEFT JOIN nearest n USING (settlement_id)
        """  # noqa: S608 - validated integers and our own table names


# blacklisted_institution -------------------------------------------------------------------


@dataclass(frozen=True)
class BlacklistFacts:
    """``institution_blacklisted``: the settling institution is on the black list (kept in
    the store; batch takes it as an argument)."""

    institution_blacklisted: Any


class BlacklistFactsIn(FactsIn):
    institution_blacklisted: Annotated[bool, Strict()]


class BlacklistParams(Params):
    pass


def blacklisted(f: BlacklistFacts) -> Flags:
    """The institution is on the black list."""
    return np.asarray(_bools(f.institution_blacklisted), dtype=np.bool_)


class BlacklistedInstitution(Template[BlacklistParams, BlacklistFacts]):
    name = "blacklisted_institution"
    summary = "the settling institution is on the black list"
    level = "settlement"
    params_model = BlacklistParams
    facts_model = BlacklistFactsIn
    facts_type = BlacklistFacts

    def pattern(self, params: BlacklistParams) -> str:
        return "blacklisted_institution"

    def predicate(self, params: BlacklistParams, facts: BlacklistFacts) -> Flags:
        return blacklisted(facts)

    def batch_sql(self, params: BlacklistParams, items: str) -> str:
        # only the settlements of listed institutions: the others' fact is False
        return """
            SELECT s.settlement_id, NULL::BIGINT AS line_no, s.total_amount AS amount,
                   s.institution_id, true AS institution_blacklisted
            FROM settlements s
            WHERE s.institution_id IN (SELECT institution_id FROM rule_blacklist)
        """


# trace_code --------------------------------------------------------------------------------


class TraceCodeFactsIn(FactsIn):
    """The code facts of ``traceability.checks``. An example starts from a clean full-pack
    sale of a purchased, valid code of the billed drug and says only what differs."""

    has_code: Annotated[bool, Strict()] = True
    code_valid: Annotated[bool, Strict()] = True
    split_sale: Annotated[bool, Strict()] = False
    units: Annotated[float, Field(ge=0)] = 10
    pack_units: Annotated[float, Field(ge=0)] = 10
    item_code: str = "D1"
    product_drug_code: str = "D1"
    prior_full_units: Annotated[float, Field(ge=0)] = 0
    prior_split_units: Annotated[float, Field(ge=0)] = 0
    last_stock_event: Literal["purchase", "return", ""] = "purchase"


class TraceCodeParams(Params):
    check: TracePattern


class TraceCode(Template[TraceCodeParams, CodeFacts]):
    """The five trace-code checks as rules. Their facts are the ledger's and the stock's
    (``traceability.checks``); batch hits come from ``traceability.batch.screen_codes``,
    online ones from ``traceability.ledger.settle_codes``."""

    name = "trace_code"
    summary = "a traceability-code check (traceability.checks) as a rule"
    level = "line"
    params_model = TraceCodeParams
    facts_model = TraceCodeFactsIn
    facts_type = CodeFacts

    def pattern(self, params: TraceCodeParams) -> str:
        return params.check.value

    def predicate(self, params: TraceCodeParams, facts: CodeFacts) -> Flags:
        return CHECKS[params.check](facts)

    def batch_sql(self, params: TraceCodeParams, items: str) -> None:
        return None


TEMPLATES: Final[dict[str, Template[Any, Any]]] = {
    t.name: t
    for t in (
        TraceCode(),
        GenderRestriction(),
        AgeRestriction(),
        OverFrequency(),
        OverQuantity(),
        SplitAdmission(),
        BlacklistedInstitution(),
    )
}
"""Every template by name: the ``template`` of a rule names one of these."""
