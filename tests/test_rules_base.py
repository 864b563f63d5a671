"""The rule base file: the shipped one is valid and its examples hold; a bad one is refused
as a whole, naming the rule and the field of every problem; a file is data, never code."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from rules.base import (
    RuleFileError,
    load_rulebase,
    parse_rulebase,
    shipped_bytes,
    shipped_rulebase,
)
from rules.examples import ExampleResult, run_examples
from rules.templates import TEMPLATES, TraceCode
from traceability.checks import TracePattern

SHIPPED = shipped_rulebase()


def test_the_shipped_rule_base_has_a_version_and_the_checksum_of_its_bytes() -> None:
    assert SHIPPED.version
    assert SHIPPED.checksum == hashlib.sha256(shipped_bytes()).hexdigest()
    assert load_rulebase() is SHIPPED
    assert SHIPPED.stamp() == {"version": SHIPPED.version, "sha256": SHIPPED.checksum}


def test_the_trace_code_rules_keep_their_ids() -> None:
    trace = {r.pattern: r.id for r in SHIPPED.rules if isinstance(r.template, TraceCode)}
    assert trace == {
        TracePattern.MISSING.value: "TC001",
        TracePattern.DUPLICATE.value: "TC002",
        TracePattern.SPLIT_OVERRUN.value: "TC003",
        TracePattern.MISMATCH.value: "TC004",
        TracePattern.UNPURCHASED.value: "TC005",
    }
    assert {SHIPPED.get(i).action.value for i in trace.values()} == {"reject"}


def test_the_default_actions() -> None:
    actions = {r.pattern: r.action.value for r in SHIPPED.rules}
    for pattern in (
        "gender_restriction",
        "age_restriction",
        "over_frequency",
        "over_quantity",
        "split_admission",
    ):
        assert actions[pattern] == "review"
    assert actions["blacklisted_institution"] == "reject"


def test_every_template_has_a_rule_in_force_and_examples_both_ways() -> None:
    assert {r.template.name for r in SHIPPED.rules} == set(TEMPLATES)
    for r in SHIPPED.rules:
        assert {e.kind.value for e in r.examples} == {"hit", "no_hit"}, r.id
        assert r.message_zh
        assert r.message_en


def test_each_templates_example_facts_are_its_facts() -> None:
    for template in TEMPLATES.values():
        fields = [f.name for f in dataclasses.fields(template.facts_type)]
        assert list(template.facts_model.model_fields) == fields, template.name


@pytest.mark.parametrize("result", run_examples(SHIPPED), ids=str)
def test_the_shipped_examples_hold(result: ExampleResult) -> None:
    assert result.passed, str(result)


def test_a_wrong_example_fails() -> None:
    text = (
        shipped_bytes()
        .decode()
        .replace("- {times_in_period: 2, max_times: 1}", "- {times_in_period: 1, max_times: 1}")
    )
    failed = [r for r in run_examples(parse_rulebase(text.encode())) if not r.passed]
    assert [(r.rule_id, r.example.label) for r in failed] == [("OF001", "examples.hit[0]")]


GOOD_RULE = """\
  - id: OF101
    template: over_frequency
    params: {items: ["250304005"], max_times: 2, period_days: 30}
    action: review
    severity: medium
    message: {zh: 糖化血红蛋白30天内超过2次, en: HbA1c more than twice in 30 days}
    examples:
      hit: [{times_in_period: 3}]
      no_hit: [{times_in_period: 2}]
"""


def rule_file(rule: str = GOOD_RULE, version: str = '"t1"') -> bytes:
    return f"version: {version}\nrules:\n{rule}".encode()


def test_a_good_file_parses() -> None:
    base = parse_rulebase(rule_file(), "x.yaml")
    assert base.version == "t1"
    (rule,) = base.rules
    assert (rule.id, rule.pattern, rule.action.value) == ("OF101", "over_frequency", "review")
    assert rule.message == "糖化血红蛋白30天内超过2次 / HbA1c more than twice in 30 days"
    assert all(r.passed for r in run_examples(base))


BROKEN = [
    ("template: over_frequency", "template: over_frequncy", "OF101", "template", "unknown"),
    ("max_times: 2,", "max_time: 2,", "OF101", "params.max_time", "unknown name"),
    ("max_times: 2,", "max_times: two,", "OF101", "params.max_times", "integer"),
    ("max_times: 2,", "max_times: 0,", "OF101", "params.max_times", "greater than"),
    ('["250304005"]', "[250304005]", "OF101", "params.items[0]", "quotes"),
    ("action: review", "action: block", "OF101", "action", "not one of"),
    ("severity: medium", "severity: urgent", "OF101", "severity", "not one of"),
    ("zh: 糖化血红蛋白30天内超过2次, ", "", "OF101", "message.zh", "Chinese"),
    ("zh: 糖化血红蛋白30天内超过2次", "zh: too often", "OF101", "message.zh", "Chinese"),
    (
        "{times_in_period: 3}",
        "{times_in_period: x}",
        "OF101",
        "examples.hit[0].times_in_period",
        "integer",
    ),
    ("{times_in_period: 3}", "{count: 3}", "OF101", "examples.hit[0].count", "unknown"),
    (
        "{times_in_period: 3}",
        "{times_in_period: 3, max_times: 9}",
        "OF101",
        "examples.hit[0].max_times",
        "fixed to 2 by params",
    ),
    ("no_hit: [{times_in_period: 2}]", "", "OF101", "examples.no_hit", "at least one"),
    ("id: OF101", "id: 7", "#1", "id", "not a rule id"),
    ("    action: review\n", "", "OF101", "action", "missing"),
    ("params: {items", "param: {items", "OF101", "param", "unknown name"),
]


@pytest.mark.parametrize(("old", "new", "rule", "field", "reason"), BROKEN)
def test_a_broken_rule_is_refused_naming_the_rule_and_the_field(
    old: str, new: str, rule: str, field: str, reason: str
) -> None:
    assert old in GOOD_RULE
    with pytest.raises(RuleFileError) as refused:
        parse_rulebase(rule_file(GOOD_RULE.replace(old, new)), "bad.yaml")
    assert (rule, field) in [(p.rule, p.field) for p in refused.value.problems]
    said = next(p for p in refused.value.problems if (p.rule, p.field) == (rule, field))
    assert reason in said.reason, str(said)
    assert f"rule {rule}: {field}" in str(refused.value)


def test_a_duplicate_id_is_refused() -> None:
    with pytest.raises(RuleFileError, match=r"rule OF101: id: given twice \(rules #1 and #2\)"):
        parse_rulebase(rule_file(GOOD_RULE + GOOD_RULE))


def test_every_problem_of_a_file_is_named_at_once() -> None:
    bad = GOOD_RULE.replace("action: review", "action: block") + GOOD_RULE.replace(
        "OF101", "OF102"
    ).replace("severity: medium", "severity: urgent")
    with pytest.raises(RuleFileError) as refused:
        parse_rulebase(rule_file(bad, version="2025.1"))
    assert {(p.rule, p.field) for p in refused.value.problems} == {
        ("", "version"),
        ("OF101", "action"),
        ("OF102", "severity"),
    }


def test_a_limit_of_its_own_needs_the_items_it_applies_to() -> None:
    with pytest.raises(RuleFileError, match=r"rule OF101: params: .*add items"):
        parse_rulebase(rule_file(GOOD_RULE.replace('items: ["250304005"], ', "")))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b"version: '1'\nrules:\n  - !!python/object/apply:os.system ['echo hi']\n", "YAML"),
        (b"version: '1'\nversion: '2'\nrules: []\n", "given twice"),
        (b"- just a list\n", "a mapping"),
        (b"version: '1'\nrules: []\nextra: 1\n", "unknown name"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_a_file_is_data_never_code(text: bytes, reason: str) -> None:
    with pytest.raises(RuleFileError, match=reason):
        parse_rulebase(text)


def test_a_rule_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_bytes(rule_file())
    base = load_rulebase(path)
    assert base.source == str(path)
    assert base.checksum == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_disabled_rule_keeps_its_id_and_does_not_run() -> None:
    base = parse_rulebase(
        rule_file(GOOD_RULE.replace("action: review", "action: review\n    enabled: false"))
    )
    assert [r.id for r in base.rules] == ["OF101"]
    assert base.enabled == ()
    assert base.for_pattern("over_frequency") == ()
