"""The rule base for one settlement against the store: the online executor.

Every template's facts are computed here for one settlement, from the knowledge base in
the store (``drugs``, ``services``) and the patient's history (``features.store``), with
exactly the meaning the batch SQL gives them (``rules.templates``), and the same
predicates decide. The trace-code rules take their hits from the ledger check the caller
ran (``traceability.ledger.settle_codes``). Every rule's execution is reported: hit, no
hit or error, with its duration; a rule that errors is reported and decides nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select

from features.settlement import LineView, SettlementView
from features.store import earlier_stays, services, window_quantities
from rules.base import Rule, RuleBase
from rules.templates import (
    AgeRestriction,
    BlacklistedInstitution,
    GenderRestriction,
    OverFrequency,
    OverQuantity,
    SplitAdmission,
    TraceCode,
)
from traceability.ledger import CodeCheckHit
from traceability.store import MergedRead, drugs, one_of

SHANGHAI: Final = ZoneInfo("Asia/Shanghai")

__all__ = ["Execution", "LineView", "Outcome", "SettlementView", "evaluate"]


class Outcome(StrEnum):
    HIT = "hit"
    NO_HIT = "no_hit"
    ERROR = "error"


@dataclass(frozen=True)
class Execution:
    """One rule run on one settlement."""

    rule: Rule
    outcome: Outcome
    micros: int
    line_nos: tuple[int | None, ...] = ()
    facts: tuple[dict[str, Any], ...] = field(default=())
    error: str = ""


@dataclass(frozen=True)
class _Catalog:
    """The knowledge base rows of the settlement's items, by (item_type, item_code)."""

    rows: dict[tuple[str, str], dict[str, Any]]

    def get(self, item_type: str, item_code: str, name: str) -> Any:
        return self.rows.get((item_type, item_code), {}).get(name)


_CATALOG: Final = MergedRead(
    lambda dialect: {
        "drug": select(
            drugs.c.drug_code.label("code"),
            drugs.c.gender_restriction,
            drugs.c.min_age,
            drugs.c.max_age,
            drugs.c.max_units_per_day,
        ).where(one_of(drugs.c.drug_code, "drugs", dialect)),
        "service": select(
            services.c.service_code.label("code"),
            services.c.gender_restriction,
            services.c.min_age,
            services.c.max_age,
            services.c.max_times,
            services.c.period_days,
        ).where(one_of(services.c.service_code, "services", dialect)),
    }
)
"""The knowledge base rows of a settlement's drugs and services (their limits), in one
statement."""


def _catalog(conn: Connection, view: SettlementView) -> _Catalog:
    codes = {
        item_type: sorted({line.item_code for line in view.lines if line.item_type == item_type})
        for item_type in ("drug", "service")
    }
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    if codes["drug"] or codes["service"]:
        read = _CATALOG.read(conn, {"drugs": codes["drug"], "services": codes["service"]})
        for item_type, found in read.items():
            for row in found:
                mapping = row._asdict()
                rows[(item_type, mapping.pop("code"))] = mapping
    return _Catalog(rows)


def age_on(birth: date, day: date) -> int:
    """Whole years of age on ``day``."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _in_scope(rule: Rule, line: LineView) -> bool:
    items = getattr(rule.params, "items", None)
    return items is None or line.item_code in items


def _limit(rule: Rule, catalog: _Catalog, line: LineView, name: str) -> Any:
    """The rule's own limit for its listed items, else the catalog's."""
    own = getattr(rule.params, name, None)
    if getattr(rule.params, "items", None) is not None and own is not None:
        return own
    return catalog.get(line.item_type, line.item_code, name)


class _Evaluation:
    def __init__(
        self,
        conn: Connection,
        view: SettlementView,
        trace_hits: Sequence[CodeCheckHit],
        blacklisted: bool,
    ) -> None:
        self.conn = conn
        self.view = view
        self.trace_hits = trace_hits
        self.blacklisted = blacklisted
        self.catalog = _catalog(conn, view)
        self.local_day = view.settled_at.astimezone(SHANGHAI).date()

    def run(self, rule: Rule) -> list[tuple[int | None, dict[str, Any]]]:
        """The (line, facts) on which ``rule`` fires."""
        template = rule.template
        if isinstance(template, TraceCode):
            pattern = rule.pattern
            return [
                (h.line_no, {"code": h.code, "reason": h.reason})
                for h in self.trace_hits
                if h.pattern == pattern
            ]
        if isinstance(template, BlacklistedInstitution):
            return self._fires(rule, [(None, {"institution_blacklisted": self.blacklisted})])
        if isinstance(template, GenderRestriction):
            return self._fires(rule, self._gender_facts(rule))
        if isinstance(template, AgeRestriction):
            return self._fires(rule, self._age_facts(rule))
        if isinstance(template, OverFrequency):
            return self._fires(rule, self._window_facts(rule, "service"))
        if isinstance(template, OverQuantity):
            return self._fires(rule, self._window_facts(rule, "drug"))
        if isinstance(template, SplitAdmission):
            return self._fires(rule, self._readmission_facts(rule))
        raise TypeError(f"no online executor for template {template.name}")

    def _fires(
        self, rule: Rule, candidates: list[tuple[int | None, dict[str, Any]]]
    ) -> list[tuple[int | None, dict[str, Any]]]:
        return [
            (line_no, facts)
            for line_no, facts in candidates
            if rule.fires(rule.template.facts_of(facts))
        ]

    def _lines(self, rule: Rule, item_types: Sequence[str]) -> list[LineView]:
        return [
            line
            for line in self.view.lines
            if line.item_type in item_types and _in_scope(rule, line)
        ]

    def _gender_facts(self, rule: Rule) -> list[tuple[int | None, dict[str, Any]]]:
        own = getattr(rule.params, "gender", None)
        out: list[tuple[int | None, dict[str, Any]]] = []
        for line in self._lines(rule, rule.params.item_types):  # type: ignore[attr-defined]
            restriction = own or self.catalog.get(
                line.item_type, line.item_code, "gender_restriction"
            )
            if restriction is not None:
                out.append(
                    (
                        line.line_no,
                        {
                            "patient_gender": self.view.patient_gender,
                            "item_gender_restriction": restriction,
                        },
                    )
                )
        return out

    def _age_facts(self, rule: Rule) -> list[tuple[int | None, dict[str, Any]]]:
        age = age_on(self.view.birth_date, self.local_day)
        out: list[tuple[int | None, dict[str, Any]]] = []
        for line in self._lines(rule, rule.params.item_types):  # type: ignore[attr-defined]
            lo = _limit(rule, self.catalog, line, "min_age")
            hi = _limit(rule, self.catalog, line, "max_age")
            if lo is not None or hi is not None:
                out.append((line.line_no, {"patient_age": age, "min_age": lo, "max_age": hi}))
        return out

    def _window_facts(self, rule: Rule, item_type: str) -> list[tuple[int | None, dict[str, Any]]]:
        frequency = item_type == "service"
        lines = self._lines(rule, (item_type,))
        own_units: dict[str, Decimal] = {}
        for line in lines:
            own_units[line.item_code] = own_units.get(line.item_code, Decimal(0)) + line.quantity
        limited: list[tuple[LineView, Any, int]] = []
        for line in lines:
            if frequency:
                limit = _limit(rule, self.catalog, line, "max_times")
                days = _limit(rule, self.catalog, line, "period_days")
            else:
                limit = _limit(rule, self.catalog, line, "max_units_per_day")
                days = rule.params.window_days  # type: ignore[attr-defined]
            if limit is not None and days is not None:
                limited.append((line, limit, int(days)))
        # one look-up per window length (one for the whole rule, as a rule's items
        # usually share their period), each summing every item of that length
        earlier: dict[tuple[int, str], Decimal] = {}
        for days in sorted({days for _, _, days in limited}):
            sums = window_quantities(
                self.conn,
                patient_id=self.view.patient_id,
                item_codes=sorted({line.item_code for line, _, d in limited if d == days}),
                since=self.view.settled_at - timedelta(days=days),
                until=self.view.settled_at,
                item_type=item_type,
            )
            earlier.update({(days, code): total for code, total in sums.items()})
        out: list[tuple[int | None, dict[str, Any]]] = []
        for line, limit, days in limited:
            count = int(earlier.get((days, line.item_code), Decimal(0)) + own_units[line.item_code])
            if frequency:
                facts = {"times_in_period": count, "max_times": int(limit)}
            else:
                facts = {
                    "units_in_window": count,
                    "max_units_per_day": limit,
                    "window_days": days,
                }
            out.append((line.line_no, facts))
        return out

    def _readmission_facts(self, rule: Rule) -> list[tuple[int | None, dict[str, Any]]]:
        view = self.view
        if view.visit_type != "inpatient" or view.admit_date is None or not view.diagnosis_code:
            return []
        chars = rule.params.diagnosis_chars  # type: ignore[attr-defined]
        group = view.diagnosis_code[:chars]
        gaps = [
            (view.admit_date - stay.discharge_date).days
            for stay in earlier_stays(self.conn, patient_id=view.patient_id, before=view.settled_at)
            if stay.institution_id == view.institution_id
            and stay.diagnosis_code
            and stay.diagnosis_code[:chars] == group
            and stay.discharge_date <= view.admit_date
        ]
        return [
            (
                None,
                {
                    "days_since_discharge": min(gaps) if gaps else None,
                    "max_gap_days": rule.params.max_gap_days,  # type: ignore[attr-defined]
                },
            )
        ]


def evaluate(
    conn: Connection,
    rulebase: RuleBase,
    view: SettlementView,
    *,
    trace_hits: Sequence[CodeCheckHit],
    blacklisted: bool = False,
) -> list[Execution]:
    """Run every enabled rule of ``rulebase`` on ``view``; one execution a rule."""
    evaluation = _Evaluation(conn, view, trace_hits, blacklisted)
    executions = []
    for rule in rulebase.enabled:
        started = time.perf_counter_ns()
        try:
            fired = evaluation.run(rule)
        except Exception as exc:
            executions.append(
                Execution(
                    rule,
                    Outcome.ERROR,
                    (time.perf_counter_ns() - started) // 1000,
                    error=f"{type(exc).__name__}: {exc}",
                )
            )
            continue
        executions.append(
            Execution(
                rule,
                Outcome.HIT if fired else Outcome.NO_HIT,
                (time.perf_counter_ns() - started) // 1000,
                tuple(line_no for line_no, _ in fired),
                tuple(facts for _, facts in fired),
            )
        )
    return executions
