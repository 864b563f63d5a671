"""Running the rules' own examples: every ``hit`` must fire, every ``no_hit`` must not.

An example states a rule's facts (``rules.templates``); the template's predicate, with the
rule's parameters, decides on that one row exactly as it decides on a batch of lines.
"""

from __future__ import annotations

from dataclasses import dataclass

from rules.base import Example, ExampleKind, Rule, RuleBase


@dataclass(frozen=True)
class ExampleResult:
    rule_id: str
    example: Example
    fired: bool

    @property
    def passed(self) -> bool:
        return self.fired is (self.example.kind is ExampleKind.HIT)

    def __str__(self) -> str:
        want = "hit" if self.example.kind is ExampleKind.HIT else "no hit"
        got = "hit" if self.fired else "no hit"
        verdict = "ok" if self.passed else f"FAILED: expected {want}, got {got}"
        return f"rule {self.rule_id}: {self.example.label} {self.example.given}: {verdict}"


def run_rule_examples(rule: Rule) -> list[ExampleResult]:
    results = []
    for example in rule.examples:
        facts = rule.template.facts_of(example.facts.model_dump())
        results.append(ExampleResult(rule.id, example, rule.fires(facts)))
    return results


def run_examples(rulebase: RuleBase) -> list[ExampleResult]:
    """Every example of every rule (disabled rules too: their examples must still hold)."""
    return [result for rule in rulebase.rules for result in run_rule_examples(rule)]
