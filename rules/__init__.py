"""The rule base (规则库): rules as data over the knowledge base (知识库, the catalogs).

- ``rules.templates``: the templates, each defined once: parameters, facts, predicate, and
  the DuckDB SQL that computes the facts of a whole history;
- ``rules.base``: the rule file (``rules/rulebase.yaml``, the one in force): loading,
  validation, version and checksum;
- ``rules.examples``: running the rules' own hit / no-hit examples;
- ``rules.batch``: the batch executor over a history, findings and backtests.
"""
