"""The rule templates: predicates on hand-written facts, and batch facts on hand-made histories.

Each predicate runs on one row and on arrays of rows and must agree; each template's batch
SQL, run by the batch executor over a short history written as contract CSV files, must
give exactly the expected hits with the facts behind them.
"""

from __future__ import annotations

import csv
import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features.batch import open_history
from rules.base import Action, Rule, RuleBase, Severity, shipped_rulebase
from rules.batch import RuleHit, findings, screen_rules
from rules.templates import TEMPLATES

CST = timezone(timedelta(hours=8))
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=CST)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def rule(template: str, params: dict[str, Any] | None = None, rule_id: str = "R1") -> Rule:
    t = TEMPLATES[template]
    return Rule(
        id=rule_id,
        template=t,
        params=t.params_model.model_validate(params or {}),
        action=Action.REVIEW,
        severity=Severity.MEDIUM,
        message_zh="测试",
        message_en="test",
        examples=(),
    )


def rulebase(*rules: Rule) -> RuleBase:
    return RuleBase(version="test", checksum="0" * 64, source="test", rules=rules)


# --- predicates: one row and arrays agree ---------------------------------------------------

CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("gender_restriction", {}, {"patient_gender": "M", "item_gender_restriction": "F"}, True),
    ("gender_restriction", {}, {"patient_gender": "F", "item_gender_restriction": "F"}, False),
    ("gender_restriction", {}, {"patient_gender": "F", "item_gender_restriction": None}, False),
    ("gender_restriction", {}, {"patient_gender": None, "item_gender_restriction": "F"}, False),
    ("age_restriction", {}, {"patient_age": 17, "min_age": 18, "max_age": None}, True),
    ("age_restriction", {}, {"patient_age": 18, "min_age": 18, "max_age": None}, False),
    ("age_restriction", {}, {"patient_age": 14, "min_age": None, "max_age": 14}, False),
    ("age_restriction", {}, {"patient_age": 15, "min_age": None, "max_age": 14}, True),
    ("age_restriction", {}, {"patient_age": 50, "min_age": None, "max_age": None}, False),
    ("over_frequency", {}, {"times_in_period": 2, "max_times": 1}, True),
    ("over_frequency", {}, {"times_in_period": 1, "max_times": 1}, False),
    ("over_quantity", {}, {"units_in_window": 61, "max_units_per_day": 2, "window_days": 30}, True),
    (
        "over_quantity",
        {},
        {"units_in_window": 60, "max_units_per_day": 2, "window_days": 30},
        False,
    ),
    ("split_admission", {}, {"days_since_discharge": 0, "max_gap_days": 15}, True),
    ("split_admission", {}, {"days_since_discharge": 15, "max_gap_days": 15}, True),
    ("split_admission", {}, {"days_since_discharge": 16, "max_gap_days": 15}, False),
    ("split_admission", {}, {"days_since_discharge": None, "max_gap_days": 15}, False),
    ("blacklisted_institution", {}, {"institution_blacklisted": True}, True),
    ("blacklisted_institution", {}, {"institution_blacklisted": False}, False),
]


@pytest.mark.parametrize(("template", "params", "facts", "hit"), CASES)
def test_predicate_on_one_row(
    template: str, params: dict[str, Any], facts: dict[str, Any], hit: bool
) -> None:
    r = rule(template, params)
    assert r.fires(r.template.facts_of(facts)) is hit


def _shipped_examples() -> list[tuple[Rule, list[dict[str, Any]], list[bool]]]:
    out = []
    for r in shipped_rulebase().rules:
        rows = [e.facts.model_dump() for e in r.examples]
        out.append((r, rows, [e.kind.value == "hit" for e in r.examples]))
    return out


@pytest.mark.parametrize(
    ("r", "rows", "expected"), _shipped_examples(), ids=lambda v: getattr(v, "id", "")
)
def test_predicates_give_on_arrays_what_they_give_row_by_row(
    r: Rule, rows: list[dict[str, Any]], expected: list[bool]
) -> None:
    names = [f.name for f in dataclasses.fields(r.template.facts_type)]
    columns = {n: np.array([row[n] for row in rows], dtype=object) for n in names}
    if any(isinstance(v, bool) for row in rows for v in row.values()):
        columns = {
            n: (np.array(c.tolist()) if all(isinstance(v, bool | int | float) for v in c) else c)
            for n, c in columns.items()
        }
    on_arrays = np.asarray(r.template.predicate(r.params, r.template.facts_of(columns)))
    row_by_row = [r.fires(r.template.facts_of(row)) for row in rows]
    assert on_arrays.tolist() == row_by_row == expected


# --- batch facts on hand-made histories -----------------------------------------------------


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


@dataclasses.dataclass
class History:
    """A short history: settlements (id, patient, institution, at, lines, extra columns)."""

    settlements: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    items: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reversals: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def sale(
        self,
        sid: str,
        at: datetime,
        lines: list[tuple[str, str, int]],
        *,
        patient: str = "U1",
        institution: str = "H1",
        visit_type: str = "outpatient",
        reversed_at: datetime | None = None,
        **extra: Any,
    ) -> None:
        self.settlements.append(
            {
                "settlement_id": sid,
                "institution_id": institution,
                "patient_id": patient,
                "settled_at": at.isoformat(),
                "visit_type": visit_type,
                "total_amount": "100.00",
                "fund_paid": "50.00",
                **extra,
            }
        )
        for n, (item_type, code, quantity) in enumerate(lines, start=1):
            self.items.append(
                {
                    "settlement_id": sid,
                    "line_no": n,
                    "item_type": item_type,
                    "item_code": code,
                    "quantity": quantity,
                    "unit_price": "10.00",
                    "amount": f"{10 * quantity}.00",
                }
            )
        if reversed_at is not None:
            self.reversals.append({"settlement_id": sid, "reversed_at": reversed_at.isoformat()})

    def stay(
        self,
        sid: str,
        at: datetime,
        admit: str,
        discharge: str,
        diagnosis: str,
        **kwargs: Any,
    ) -> None:
        self.sale(
            sid,
            at,
            [("service", "BED", 1)],
            visit_type="inpatient",
            admit_date=admit,
            discharge_date=discharge,
            diagnosis_code=diagnosis,
            **kwargs,
        )

    def write(self, folder: Path) -> Path:
        write_csv(
            folder / "institutions.csv",
            [
                {"institution_id": i, "name": i, "kind": "hospital", "level": 2}
                | {"region_code": "320100"}
                for i in ("H1", "H2", "H3")
            ],
            ["institution_id", "name", "kind", "level", "region_code"],
        )
        write_csv(
            folder / "patients.csv",
            [
                {"patient_id": "U1", "gender": "M", "birth_date": "1980-06-01"},
                {"patient_id": "U2", "gender": "F", "birth_date": "2007-03-15"},
            ],
            ["patient_id", "gender", "birth_date"],
        )
        write_csv(
            folder / "drugs.csv",
            [
                {"drug_code": "D1", "generic_name": "d1", "pack_units": 30, "max_units_per_day": 2},
                {"drug_code": "D2", "generic_name": "d2", "pack_units": 10, "min_age": 18},
                {"drug_code": "D3", "generic_name": "d3", "pack_units": 10},
            ],
            ["drug_code", "generic_name", "pack_units", "max_units_per_day", "min_age"],
        )
        write_csv(
            folder / "services.csv",
            [
                {"service_code": "HBA", "name": "hba1c", "max_times": 1, "period_days": 90},
                {"service_code": "PSA", "name": "psa", "gender_restriction": "M"},
                {"service_code": "KID", "name": "kid", "max_age": 14},
                {"service_code": "BED", "name": "bed"},
                {"service_code": "CBC", "name": "cbc"},
            ],
            ["service_code", "name", "gender_restriction", "max_age", "max_times", "period_days"],
        )
        write_csv(
            folder / "settlements.csv",
            self.settlements,
            [
                "settlement_id",
                "institution_id",
                "patient_id",
                "settled_at",
                "visit_type",
                "admit_date",
                "discharge_date",
                "diagnosis_code",
                "total_amount",
                "fund_paid",
            ],
        )
        write_csv(
            folder / "settlement_items.csv",
            self.items,
            [
                *("settlement_id", "line_no", "item_type", "item_code", "quantity"),
                "unit_price",
                "amount",
            ],
        )
        write_csv(folder / "reversals.csv", self.reversals, ["settlement_id", "reversed_at"])
        return folder


def hits_of(
    history: History, folder: Path, *rules: Rule, blacklist: frozenset[str] = frozenset()
) -> list[RuleHit]:
    con = open_history(history.write(folder))
    try:
        return screen_rules(con, rulebase(*rules), blacklist=blacklist)
    finally:
        con.close()


def hit_ids(hits: list[RuleHit]) -> set[str]:
    return {h.settlement_id for h in hits}


def test_over_frequency_counts_a_half_open_window_at_any_institution(tmp_path: Path) -> None:
    h = History()
    h.sale("A1", day(0), [("service", "HBA", 1)])
    h.sale("A2", day(90), [("service", "HBA", 1)], institution="H2")  # A1 at t - 90 d: out
    h.sale("A3", day(179.99), [("service", "HBA", 1)], institution="H3")  # A2 in: hit
    h.sale("A4", day(200), [("service", "HBA", 1), ("service", "CBC", 1)])  # A3 in: hit
    h.sale("B1", day(0), [("service", "HBA", 1)], patient="U2")
    h.sale("B2", day(10), [("service", "CBC", 5)], patient="U2")  # another service
    h.sale("B3", day(20), [("service", "HBA", 2)], patient="U2")  # 1 + 2 > 1
    hits = hits_of(h, tmp_path, rule("over_frequency"))
    assert hit_ids(hits) == {"A3", "A4", "B3"}
    a4 = next(x for x in hits if x.settlement_id == "A4")
    assert a4.line_nos == (1,)
    assert a4.earlier_settlements == ("A3",)
    assert a4.facts[0]["times_in_period"] == 2
    assert a4.facts[0]["max_times"] == 1
    assert a4.facts[0]["period_days"] == 90


def test_a_reversed_settlement_stops_counting_when_it_is_reversed(tmp_path: Path) -> None:
    h = History()
    h.sale("A1", day(0), [("service", "HBA", 1)], reversed_at=day(10))
    h.sale("A2", day(10), [("service", "HBA", 1)])  # reversed at t exactly: no longer counts
    h.sale("B1", day(0), [("service", "HBA", 1)], patient="U2", reversed_at=day(30))
    h.sale("B2", day(20), [("service", "HBA", 1)], patient="U2")  # B1 still counts at t
    h.sale("B3", day(40), [("service", "HBA", 1)], patient="U2")  # B1 gone, B2 counts
    assert hit_ids(hits_of(h, tmp_path, rule("over_frequency"))) == {"B2", "B3"}


def test_settlements_at_the_same_second_count_in_settlement_id_order(tmp_path: Path) -> None:
    h = History()
    h.sale("A2", day(1), [("service", "HBA", 1)])
    h.sale("A1", day(1), [("service", "HBA", 1)])
    assert hit_ids(hits_of(h, tmp_path, rule("over_frequency"))) == {"A2"}


def test_a_new_frequency_limit_given_as_parameters(tmp_path: Path) -> None:
    h = History()
    for n in range(4):
        h.sale(f"A{n}", day(10 * n), [("service", "CBC", 1)])
    h.sale("B1", day(0), [("service", "HBA", 1)])
    h.sale("B2", day(50), [("service", "HBA", 1)])  # catalog: 1 per 90 days; overridden
    new = rule("over_frequency", {"items": ["CBC", "HBA"], "max_times": 2, "period_days": 25})
    hits = hits_of(h, tmp_path, new)
    # A0, A1, A2 lie in A2's 25 days, A1, A2, A3 in A3's: 3 > 2; B2 is 50 days after B1
    assert hit_ids(hits) == {"A2", "A3"}
    assert hits[0].facts[0]["max_times"] == 2
    assert hits[0].facts[0]["period_days"] == 25


def test_over_quantity_sums_units_over_the_window(tmp_path: Path) -> None:
    h = History()
    h.sale("A1", day(0), [("drug", "D1", 40)])
    h.sale("A2", day(29), [("drug", "D1", 20)], institution="H2")  # 60 = 2 x 30: fine
    h.sale("A3", day(29.5), [("drug", "D1", 1)])  # 61: hit
    h.sale("A4", day(45), [("drug", "D3", 1000)])  # no limit in the catalog
    hits = hits_of(h, tmp_path, rule("over_quantity"))
    assert hit_ids(hits) == {"A3"}
    assert hits[0].facts[0]["units_in_window"] == 61
    assert hits[0].earlier_settlements == ("A1", "A2")
    tight = rule("over_quantity", {"items": ["D3"], "max_units_per_day": 10, "window_days": 7})
    assert hit_ids(hits_of(h, tmp_path, tight)) == {"A4"}


def test_gender_and_age_restrictions_read_the_catalog_or_the_rule(tmp_path: Path) -> None:
    h = History()
    h.sale("A1", day(0), [("service", "PSA", 1)])  # U1 is a man
    h.sale("B1", day(0), [("service", "PSA", 1), ("service", "CBC", 1)], patient="U2")
    # U2 was born 2007-03-15: 17 until 18 on 2025-03-15 (local date)
    h.sale("B2", datetime(2025, 3, 14, 23, 59, tzinfo=CST), [("drug", "D2", 10)], patient="U2")
    h.sale("B3", datetime(2025, 3, 15, 0, 30, tzinfo=CST), [("drug", "D2", 10)], patient="U2")
    h.sale("B4", day(20), [("service", "KID", 1)], patient="U2")  # 18 > 14
    h.sale("A2", day(0), [("service", "KID", 1)])
    assert hit_ids(hits_of(h, tmp_path, rule("gender_restriction"))) == {"B1"}
    age_hits = hits_of(h, tmp_path, rule("age_restriction"))
    assert hit_ids(age_hits) == {"B2", "B4", "A2"}
    b2 = next(x for x in age_hits if x.settlement_id == "B2")
    assert b2.facts[0]["patient_age"] == 17
    only_drugs = rule("age_restriction", {"item_types": ["drug"]})
    assert hit_ids(hits_of(h, tmp_path, only_drugs)) == {"B2"}
    cbc_for_men = rule("gender_restriction", {"items": ["CBC"], "gender": "M"})
    assert hit_ids(hits_of(h, tmp_path, cbc_for_men)) == {"B1"}
    hits = hits_of(h, tmp_path, cbc_for_men)
    assert hits[0].line_nos == (2,)  # only the listed item: PSA is not this rule's


def test_split_admission_same_institution_same_category_within_the_gap(tmp_path: Path) -> None:
    h = History()
    h.stay("A1", day(9), "2025-03-01", "2025-03-10", "I25.1")
    h.stay("A2", day(25), "2025-03-25", "2025-03-30", "I25.9")  # 15 days: hit
    h.stay("A3", day(50), "2025-04-15", "2025-04-20", "I25.1")  # 16 days: no
    h.stay("A4", day(55), "2025-04-20", "2025-04-25", "J18.0")  # another category
    h.stay("A5", day(60), "2025-04-25", "2025-04-28", "I25.1", institution="H2")  # elsewhere
    h.stay("B1", day(9), "2025-03-01", "2025-03-10", "I25.1", patient="U2", reversed_at=day(12))
    h.stay("B2", day(15), "2025-03-15", "2025-03-20", "I25.1", patient="U2")  # B1 refunded
    hits = hits_of(h, tmp_path, rule("split_admission"))
    assert hit_ids(hits) == {"A2"}
    assert hits[0].earlier_settlements == ("A1",)
    assert hits[0].facts[0]["days_since_discharge"] == 15
    assert hits[0].line_nos == ()
    wider = rule("split_admission", {"max_gap_days": 16})
    assert hit_ids(hits_of(h, tmp_path, wider)) == {"A2", "A3"}


def test_blacklisted_institution_takes_the_list_as_an_argument(tmp_path: Path) -> None:
    h = History()
    h.sale("A1", day(0), [("service", "CBC", 1)])
    h.sale("A2", day(1), [("service", "CBC", 1)], institution="H2")
    r = rule("blacklisted_institution")
    assert hits_of(h, tmp_path, r) == []
    hits = hits_of(h, tmp_path, r, blacklist=frozenset({"H2"}))
    assert hit_ids(hits) == {"A2"}
    assert hits[0].amount_at_risk == 100


def test_one_finding_per_settlement_and_pattern_with_the_strongest_action(
    tmp_path: Path,
) -> None:
    h = History()
    h.sale("A1", day(0), [("service", "HBA", 1), ("service", "CBC", 1)])
    h.sale("A2", day(1), [("service", "HBA", 1), ("service", "CBC", 1)])
    catalog = rule("over_frequency", rule_id="OF001")
    new = dataclasses.replace(
        rule("over_frequency", {"items": ["CBC"], "max_times": 1, "period_days": 30}, "OF101"),
        action=Action.REJECT,
    )
    found = findings(hits_of(h, tmp_path, catalog, new))
    assert len(found) == 1
    assert found[0].settlement_id == "A2"
    assert found[0].action is Action.REJECT
    assert [x.rule_id for x in found[0].hits] == ["OF101", "OF001"]
    assert found[0].amount_at_risk == 20  # both lines, once each
    evidence = found[0].evidence(rulebase(catalog, new))
    assert evidence["rule_ids"] == ["OF101", "OF001"]
    assert evidence["lines"] == [1, 2]
    assert evidence["rulebase"] == {"version": "test", "sha256": "0" * 64}
