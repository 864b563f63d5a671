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
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
from sqlalchemy import Connection

from features.knowledge import KnowledgeBase, knowledge_base
from features.settlement import LineView, SettlementView
from features.store import PatientHistory, Window, read_patient_history
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

SHANGHAI: Final = ZoneInfo("Asia/Shanghai")

__all__ = [
    "Execution",
    "LineView",
    "Outcome",
    "SettlementView",
    "evaluate",
    "evaluate_in_store",
    "windows_needed",
]


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


def age_on(birth: date, day: date) -> int:
    """Whole years of age on ``day``."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _in_scope(rule: Rule, line: LineView) -> bool:
    items = getattr(rule.params, "items", None)
    return items is None or line.item_code in items


def _limit(rule: Rule, knowledge: KnowledgeBase, line: LineView, name: str) -> Any:
    """The rule's own limit for its listed items, else the catalog's."""
    own = getattr(rule.params, name, None)
    if getattr(rule.params, "items", None) is not None and own is not None:
        return own
    return knowledge.limit(line.item_type, line.item_code, name)


def _window_plan(
    rule: Rule, knowledge: KnowledgeBase, view: SettlementView
) -> list[tuple[LineView, Any, int]]:
    """The lines of a look-back rule (over-frequency: services; over-quantity: drugs) that
    have a limit, each with its limit and window length in days."""
    frequency = isinstance(rule.template, OverFrequency)
    item_type = "service" if frequency else "drug"
    planned: list[tuple[LineView, Any, int]] = []
    for line in view.lines:
        if line.item_type != item_type or not _in_scope(rule, line):
            continue
        if frequency:
            limit = _limit(rule, knowledge, line, "max_times")
            days = _limit(rule, knowledge, line, "period_days")
        else:
            limit = _limit(rule, knowledge, line, "max_units_per_day")
            days = rule.params.window_days  # type: ignore[attr-defined]
        if limit is not None and days is not None:
            planned.append((line, limit, int(days)))
    return planned


def windows_needed(
    rulebase: RuleBase, knowledge: KnowledgeBase, view: SettlementView
) -> list[Window]:
    """The look-back windows the rule base reads for ``view``: what the patient's history
    must give (``features.store.PatientHistory``) before the rules run."""
    return list(
        dict.fromkeys(
            Window(line.item_type, line.item_code, days)
            for rule in rulebase.enabled
            if isinstance(rule.template, OverFrequency | OverQuantity)
            for line, _, days in _window_plan(rule, knowledge, view)
        )
    )


class _Evaluation:
    def __init__(
        self,
        view: SettlementView,
        knowledge: KnowledgeBase,
        history: PatientHistory,
        trace_hits: Sequence[CodeCheckHit],
        blacklisted: bool,
    ) -> None:
        self.view = view
        self.knowledge = knowledge
        self.history = history
        self.trace_hits = trace_hits
        self.blacklisted = blacklisted
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
        """The candidates (line, facts) on which the rule's predicate holds: one call of
        the predicate over all of them, a column per fact, as batch calls it."""
        if not candidates:
            return []
        facts = rule.template.facts_of(
            {name: [each[name] for _, each in candidates] for name in candidates[0][1]}
        )
        fired = np.broadcast_to(
            np.asarray(rule.template.predicate(rule.params, facts)), (len(candidates),)
        )
        return [candidate for candidate, hit in zip(candidates, fired, strict=True) if hit]

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
            restriction = own or self.knowledge.limit(
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
            lo = _limit(rule, self.knowledge, line, "min_age")
            hi = _limit(rule, self.knowledge, line, "max_age")
            if lo is not None or hi is not None:
                out.append((line.line_no, {"patient_age": age, "min_age": lo, "max_age": hi}))
        return out

    def _window_facts(self, rule: Rule, item_type: str) -> list[tuple[int | None, dict[str, Any]]]:
        frequency = item_type == "service"
        own_units: dict[str, Decimal] = {}
        for line in self._lines(rule, (item_type,)):
            own_units[line.item_code] = own_units.get(line.item_code, Decimal(0)) + line.quantity
        quantities = self.history.quantities
        out: list[tuple[int | None, dict[str, Any]]] = []
        for line, limit, days in _window_plan(rule, self.knowledge, self.view):
            earlier = quantities[Window(line.item_type, line.item_code, days)]
            count = int(earlier + own_units[line.item_code])
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
            for stay in self.history.stays
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
    rulebase: RuleBase,
    view: SettlementView,
    *,
    knowledge: KnowledgeBase,
    history: PatientHistory,
    trace_hits: Sequence[CodeCheckHit],
    blacklisted: bool = False,
) -> list[Execution]:
    """Run every enabled rule of ``rulebase`` on ``view``; one execution a rule. The facts
    come from the knowledge base, the patient's history before the settlement (read for
    :func:`windows_needed`) and the code checks."""
    evaluation = _Evaluation(view, knowledge, history, trace_hits, blacklisted)
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


def evaluate_in_store(
    conn: Connection,
    rulebase: RuleBase,
    view: SettlementView,
    *,
    trace_hits: Sequence[CodeCheckHit],
    blacklisted: bool = False,
) -> list[Execution]:
    """:func:`evaluate` with its facts read from ``conn``'s store (the scorer reads them
    within its first statement instead)."""
    knowledge = knowledge_base(conn)
    history = read_patient_history(
        conn,
        patient_id=view.patient_id,
        at=view.settled_at,
        windows=windows_needed(rulebase, knowledge, view),
    )
    return evaluate(
        rulebase,
        view,
        knowledge=knowledge,
        history=history,
        trace_hits=trace_hits,
        blacklisted=blacklisted,
    )
