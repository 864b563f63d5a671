"""The rule base (规则库): a versioned YAML file of rules, validated before use.

A rule is an instance of a template (``rules.templates``) with its parameters, an action
(``reject``, ``review``, ``info``), a severity, a message in Chinese (English beside it)
and its own examples, written as the template's facts, that must hit and must not::

    version: "2025.1"
    rules:
      - id: GR001
        template: gender_restriction
        params: {}
        action: review
        severity: medium
        message:
          zh: 项目限定性别与患者性别不符
          en: item restricted to the other gender
        examples:
          hit:
            - {patient_gender: M, item_gender_restriction: F}
          no_hit:
            - {patient_gender: F, item_gender_restriction: F}

The file is data, never code: it is read with ``yaml.safe_load``'s loader (and a key given
twice is refused), nothing in it is evaluated. A bad file is refused as a whole with every
problem named by rule (its id, or its position when the id is unusable) and field. The
checksum is the SHA-256 of the file's bytes; the version is the file's own.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml
from pydantic import ValidationError

from rules.templates import TEMPLATES, FactsIn, Params, Template

SHIPPED: Final = "rulebase.yaml"
"""The rule base in force, shipped in this package."""

RULE_ID: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}")
_RULE_KEYS: Final = (
    "id",
    "template",
    "params",
    "action",
    "severity",
    "message",
    "examples",
    "enabled",
    "description",
)
_TOP_KEYS: Final = ("version", "description", "rules")


class Action(StrEnum):
    """What a hit asks of the settlement: ``reject`` (do not pay), ``review`` (pay, then
    inspect), ``info`` (report only)."""

    REJECT = "reject"
    REVIEW = "review"
    INFO = "info"

    @property
    def strength(self) -> int:
        return {Action.INFO: 0, Action.REVIEW: 1, Action.REJECT: 2}[self]


class Severity(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class ExampleKind(StrEnum):
    HIT = "hit"
    NO_HIT = "no_hit"


@dataclass(frozen=True)
class Example:
    """One of a rule's examples: the facts it states, and whether the rule must fire."""

    kind: ExampleKind
    index: int
    given: dict[str, Any]
    facts: FactsIn
    """The facts the predicate sees: ``given`` plus what the rule's parameters fix plus
    the template's defaults."""

    @property
    def label(self) -> str:
        return f"examples.{self.kind.value}[{self.index}]"


@dataclass(frozen=True)
class Rule:
    id: str
    template: Template[Any, Any]
    params: Params
    action: Action
    severity: Severity
    message_zh: str
    message_en: str
    examples: tuple[Example, ...]
    enabled: bool = True
    description: str = ""

    @property
    def pattern(self) -> str:
        """The pattern (CONTRACT.md §4) this rule's hits flag."""
        return self.template.pattern(self.params)

    @property
    def message(self) -> str:
        """Chinese first, English beside it."""
        return f"{self.message_zh} / {self.message_en}" if self.message_en else self.message_zh

    def fires(self, facts: Any) -> bool:
        """The rule on the facts of one row (a facts dataclass)."""
        return self.template.fires(self.params, facts)


@dataclass(frozen=True)
class RuleBase:
    version: str
    checksum: str
    """SHA-256 of the file's bytes, hex."""
    source: str
    rules: tuple[Rule, ...]
    description: str = ""

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)

    def get(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def for_pattern(self, pattern: str) -> tuple[Rule, ...]:
        """The enabled rules whose hits flag ``pattern``, in file order."""
        return tuple(r for r in self.enabled if r.pattern == pattern)

    def stamp(self) -> dict[str, str]:
        """What every flag records of the rule base that made it."""
        return {"version": self.version, "sha256": self.checksum}


# --- problems ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleProblem:
    """One reason a rule file is refused: which rule (id or position), which field, why."""

    rule: str
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"rule {self.rule}" if self.rule else "file"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class RuleFileError(ValueError):
    """A rule file that cannot be used; ``problems`` names every reason."""

    def __init__(self, source: str, problems: Sequence[RuleProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) in the rule file:\n{lines}")


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_problems(
    rule: str, prefix: str, error: ValidationError, known: Sequence[str] = ()
) -> list[RuleProblem]:
    problems = []
    for e in error.errors(include_url=False):
        field = _loc([prefix, *e["loc"]] if prefix else e["loc"])
        if e["type"] == "extra_forbidden":
            reason = "unknown name"
            if known:
                reason += f" (known: {', '.join(known)})"
        elif e["type"] == "missing":
            reason = "missing"
        else:
            reason = e["msg"]
            if e["type"] not in ("value_error", "assertion_error") and "input" in e:
                reason += f", got {e['input']!r}"
        if reason.startswith("Value error, "):
            reason = reason.removeprefix("Value error, ")
        problems.append(RuleProblem(rule, field, reason))
    return problems


# --- reading -------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _example(
    rule_ref: str,
    rule_template: Template[Any, Any],
    params: Params,
    kind: ExampleKind,
    index: int,
    given: object,
    problems: list[RuleProblem],
) -> Example | None:
    field = f"examples.{kind.value}[{index}]"
    if not isinstance(given, dict):
        problems.append(RuleProblem(rule_ref, field, "an example is a mapping of facts"))
        return None
    fixed = rule_template.fixed_facts(params)
    clash = sorted(set(given) & set(fixed))
    if clash:
        problems.extend(
            RuleProblem(
                rule_ref, f"{field}.{name}", f"fixed to {fixed[name]!r} by params; leave it out"
            )
            for name in clash
        )
        return None
    model = rule_template.facts_model
    try:
        facts = model.model_validate({**given, **fixed})
    except ValidationError as error:
        problems.extend(_pydantic_problems(rule_ref, field, error, list(model.model_fields)))
        return None
    return Example(kind=kind, index=index, given=dict(given), facts=facts)


def _rule(index: int, raw: object, problems: list[RuleProblem]) -> Rule | None:
    if not isinstance(raw, dict):
        problems.append(RuleProblem(f"#{index + 1}", "", "a rule is a mapping"))
        return None
    rule_id = raw.get("id")
    ref = (
        str(rule_id) if isinstance(rule_id, str) and RULE_ID.fullmatch(rule_id) else f"#{index + 1}"
    )
    before = len(problems)
    if rule_id is None:
        problems.append(RuleProblem(ref, "id", "missing"))
    elif not (isinstance(rule_id, str) and RULE_ID.fullmatch(rule_id)):
        problems.append(
            RuleProblem(
                ref,
                "id",
                f"{rule_id!r} is not a rule id (a letter, then up to 31 of A-Z a-z 0-9 _ . -)",
            )
        )
    problems.extend(
        RuleProblem(ref, str(key), f"unknown name (known: {', '.join(_RULE_KEYS)})")
        for key in raw
        if key not in _RULE_KEYS
    )
    template = None
    name = raw.get("template")
    if name is None:
        problems.append(RuleProblem(ref, "template", "missing"))
    elif not isinstance(name, str) or name not in TEMPLATES:
        problems.append(
            RuleProblem(
                ref, "template", f"unknown template {name!r} (known: {', '.join(TEMPLATES)})"
            )
        )
    else:
        template = TEMPLATES[name]
    action = _choice(ref, "action", raw.get("action"), Action, problems)
    severity = _choice(ref, "severity", raw.get("severity"), Severity, problems)
    zh, en = _message(ref, raw.get("message"), problems)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(RuleProblem(ref, "enabled", f"true or false, got {enabled!r}"))
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.append(RuleProblem(ref, "description", "text"))
    params: Params | None = None
    raw_params = raw.get("params", {})
    if raw_params is None:
        raw_params = {}
    if not isinstance(raw_params, dict):
        problems.append(RuleProblem(ref, "params", "a mapping of parameters"))
    elif template is not None:
        try:
            params = template.params_model.model_validate(raw_params)
        except ValidationError as error:
            problems.extend(
                _pydantic_problems(ref, "params", error, list(template.params_model.model_fields))
            )
    examples: list[Example] = []
    raw_examples = raw.get("examples")
    if raw_examples is None:
        problems.append(RuleProblem(ref, "examples", "missing (at least one hit and one no_hit)"))
    elif not isinstance(raw_examples, dict):
        problems.append(RuleProblem(ref, "examples", "a mapping with hit and no_hit lists"))
    else:
        for key in raw_examples:
            if key not in ("hit", "no_hit"):
                problems.append(RuleProblem(ref, f"examples.{key}", "unknown name (hit, no_hit)"))
        for kind in ExampleKind:
            listed = raw_examples.get(kind.value)
            if not isinstance(listed, list) or not listed:
                problems.append(
                    RuleProblem(ref, f"examples.{kind.value}", "a list of at least one example")
                )
                continue
            if template is None or params is None:
                continue
            for i, given in enumerate(listed):
                example = _example(ref, template, params, kind, i, given, problems)
                if example is not None:
                    examples.append(example)
    if len(problems) > before or template is None or params is None:
        return None
    if action is None or severity is None:
        return None
    return Rule(
        id=str(rule_id),
        template=template,
        params=params,
        action=action,
        severity=severity,
        message_zh=zh,
        message_en=en,
        examples=tuple(examples),
        enabled=bool(enabled),
        description=str(description),
    )


E = TypeVar("E", bound=StrEnum)


def _choice(
    ref: str, field: str, value: object, kind: type[E], problems: list[RuleProblem]
) -> E | None:
    allowed = [v.value for v in kind]
    if value is None:
        problems.append(RuleProblem(ref, field, f"missing (one of {', '.join(allowed)})"))
        return None
    if not isinstance(value, str) or value not in allowed:
        problems.append(RuleProblem(ref, field, f"{value!r} is not one of {', '.join(allowed)}"))
        return None
    return kind(value)


def _message(ref: str, value: object, problems: list[RuleProblem]) -> tuple[str, str]:
    if value is None:
        problems.append(RuleProblem(ref, "message", "missing (zh: the message in Chinese)"))
        return "", ""
    if isinstance(value, str):
        value = {"zh": value}
    if not isinstance(value, dict):
        problems.append(RuleProblem(ref, "message", "a mapping with zh (and en)"))
        return "", ""
    for key in value:
        if key not in ("zh", "en"):
            problems.append(RuleProblem(ref, f"message.{key}", "unknown name (zh, en)"))
    zh, en = value.get("zh"), value.get("en", "")
    if not isinstance(zh, str) or not zh.strip():
        problems.append(RuleProblem(ref, "message.zh", "missing: every rule has a Chinese message"))
        zh = ""
    elif not re.search(r"[\u4e00-\u9fff]", zh):
        problems.append(RuleProblem(ref, "message.zh", f"{zh!r} has no Chinese in it"))
    if not isinstance(en, str):
        problems.append(RuleProblem(ref, "message.en", "text"))
        en = ""
    return str(zh).strip(), en.strip()


def parse_rulebase(data: bytes, source: str = "<rules>") -> RuleBase:
    """The rule base in ``data`` (a rule file's bytes); RuleFileError names every problem."""
    checksum = hashlib.sha256(data).hexdigest()
    try:
        text = io.StringIO(data.decode("utf-8"))
        text.name = source  # where PyYAML's messages say the error is
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as error:
        raise RuleFileError(source, [RuleProblem("", "", f"not UTF-8 text: {error}")]) from None
    except yaml.YAMLError as error:
        raise RuleFileError(source, [RuleProblem("", "", f"not valid YAML: {error}")]) from None
    if not isinstance(document, dict):
        raise RuleFileError(source, [RuleProblem("", "", "a mapping with version and rules")])
    problems: list[RuleProblem] = [
        RuleProblem("", str(key), f"unknown name (known: {', '.join(_TOP_KEYS)})")
        for key in document
        if key not in _TOP_KEYS
    ]
    version = document.get("version")
    if not isinstance(version, str) or not version.strip():
        problems.append(
            RuleProblem("", "version", f'text, e.g. version: "2025.1" (in quotes), got {version!r}')
        )
    description = document.get("description", "")
    if not isinstance(description, str):
        problems.append(RuleProblem("", "description", "text"))
    raw_rules = document.get("rules")
    if not isinstance(raw_rules, list):
        problems.append(RuleProblem("", "rules", "a list of rules"))
        raw_rules = []
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        rule = _rule(index, raw, problems)
        rule_id = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(rule_id, str):
            if rule_id in seen:
                problems.append(
                    RuleProblem(
                        rule_id, "id", f"given twice (rules #{seen[rule_id] + 1} and #{index + 1})"
                    )
                )
            seen.setdefault(rule_id, index)
        if rule is not None:
            rules.append(rule)
    if problems:
        raise RuleFileError(source, problems)
    return RuleBase(
        version=str(version).strip(),
        checksum=checksum,
        source=source,
        rules=tuple(rules),
        description=str(description),
    )


def load_rulebase(path: Path | None = None) -> RuleBase:
    """The rule base in the file at ``path``, or the one in force (shipped) without one."""
    if path is None:
        return shipped_rulebase()
    return parse_rulebase(path.read_bytes(), str(path))


def shipped_bytes() -> bytes:
    return resources.files("rules").joinpath(SHIPPED).read_bytes()


@functools.cache
def shipped_rulebase() -> RuleBase:
    """The rule base in force: ``rules/rulebase.yaml`` of this package (read once)."""
    return parse_rulebase(shipped_bytes(), f"rules/{SHIPPED}")
