"""The trace-code checks over a whole history, out of core, in DuckDB.

The caller hands over a DuckDB connection on which the contract tables are views with the
contract's column names and types (``features.batch`` registers them): ``settlements``,
``settlement_items`` (``trace_codes`` a list of strings), ``trace_events``, ``reversals``,
``products`` and ``drugs``. DuckDB computes the code facts of every (drug line, code): the
ledger just before the sale (a running sum over the code's sales and releases in time
order) and the stock (an as-of join on the institution's supply-chain events). The
predicates of ``traceability.checks`` then run over those facts in batches of rows, exactly
as they run over the facts of one settlement online.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import duckdb
import numpy as np
import pyarrow as pa

from traceability.checks import CHECKS, CodeFacts, TracePattern
from traceability.codes import InvalidTraceCode, canonicalize_codes

BATCH_ROWS: Final = 1_000_000

# A 20-digit code is its own canonical form (CONTRACT.md §2): DuckDB takes that fast path
# (regexp_full_match(raw, '[0-9]{20}')) and every other spelling goes once, by distinct
# spelling, through traceability.codes.


@dataclass(frozen=True)
class CodeHit:
    """One check that fired on one settlement, with the lines and codes behind it."""

    settlement_id: str
    pattern: TracePattern
    line_nos: tuple[int, ...]
    codes: tuple[str, ...]
    amount_at_risk: Decimal
    earlier_settlements: tuple[str, ...] = field(default=())
    reasons: tuple[str, ...] = field(default=())

    def evidence(self) -> str:
        return json.dumps(
            {
                "lines": list(self.line_nos),
                "codes": list(self.codes),
                "earlier_settlements": list(self.earlier_settlements),
                "reasons": list(self.reasons),
            },
            ensure_ascii=False,
        )


def _register_code_map(con: duckdb.DuckDBPyConnection) -> None:
    """Canonicalise every spelling that is not a plain 20-digit code, once per spelling."""
    raws = [
        row[0]
        for row in con.execute(
            """
            SELECT DISTINCT raw FROM (
                SELECT unnest(trace_codes) AS raw FROM settlement_items WHERE item_type = 'drug'
                UNION ALL
                SELECT trace_code AS raw FROM trace_events
            ) WHERE raw IS NOT NULL AND NOT regexp_full_match(raw, '[0-9]{20}')
            """
        ).fetchall()
    ]
    by_spelling = canonicalize_codes(raws)
    parsed = [by_spelling[raw] for raw in raws]
    table = pa.table(
        {
            "raw": pa.array(raws, pa.string()),
            "canonical": pa.array(
                [None if isinstance(p, InvalidTraceCode) else p.canonical for p in parsed],
                pa.string(),
            ),
            "product_code": pa.array(
                [None if isinstance(p, InvalidTraceCode) else p.product_code for p in parsed],
                pa.string(),
            ),
            "reason": pa.array(
                [p.reason if isinstance(p, InvalidTraceCode) else None for p in parsed],
                pa.string(),
            ),
        }
    )
    _materialise(con, "code_map", table)


_RESOLVED_SQL: Final = """
CREATE OR REPLACE TEMP TABLE drug_lines AS
    SELECT i.settlement_id, i.line_no, i.item_code, i.quantity, i.amount,
           coalesce(i.split_sale, false) AS split_sale,
           coalesce(i.trace_codes, []) AS trace_codes,
           len(coalesce(i.trace_codes, [])) AS n_codes,
           s.institution_id, s.settled_at, r.reversed_at,
           d.pack_units
    FROM settlement_items i
    JOIN settlements s USING (settlement_id)
    LEFT JOIN reversals r USING (settlement_id)
    LEFT JOIN drugs d ON d.drug_code = i.item_code
    WHERE i.item_type = 'drug';
CREATE OR REPLACE TEMP TABLE stock AS
    SELECT e.institution_id, e.event_at, e.event_type,
           CASE WHEN regexp_full_match(e.trace_code, '[0-9]{20}') THEN e.trace_code
                ELSE m.canonical END AS canonical
    FROM trace_events e LEFT JOIN code_map m ON m.raw = e.trace_code;
CREATE OR REPLACE TEMP TABLE resolved AS
    WITH code_lines AS (
        SELECT l.* EXCLUDE (trace_codes), u.raw, u.pos
        FROM drug_lines l,
             LATERAL (SELECT unnest(l.trace_codes) AS raw,
                             generate_subscripts(l.trace_codes, 1) AS pos) u
    ),
    canonical AS (
        SELECT c.*,
               CASE WHEN regexp_full_match(c.raw, '[0-9]{20}') THEN c.raw ELSE m.canonical END
                   AS canonical,
               CASE WHEN regexp_full_match(c.raw, '[0-9]{20}') THEN substr(c.raw, 1, 7)
                    ELSE m.product_code END AS product_code,
               m.reason AS invalid_reason,
               CASE WHEN c.split_sale THEN c.quantity::DOUBLE / c.n_codes
                    ELSE c.pack_units::DOUBLE END AS units
        FROM code_lines c LEFT JOIN code_map m ON m.raw = c.raw
    )
    SELECT c.*, coalesce(p.drug_code, '') AS product_drug_code,
           coalesce(st.event_type, '') AS last_stock_event
    FROM canonical c
    LEFT JOIN products p ON p.product_code = c.product_code
    ASOF LEFT JOIN stock st
        ON st.institution_id = c.institution_id AND st.canonical = c.canonical
       AND st.event_at <= c.settled_at;
"""
"""The lines with their codes resolved: canonical form, product, the institution's last
stock event at the sale. None of it depends on what was rejected: computed once, read by
every round of the screening."""

_FACTS_SQL: Final = """
WITH sales AS (
    SELECT r.*, n.settlement_id IS NOT NULL AS rejected
    FROM resolved r LEFT JOIN not_consuming n USING (settlement_id)
    WHERE r.canonical IS NOT NULL {only_affected}
),
moves AS (
    -- a sale adds its units at settled_at, unless it was rejected (it took nothing); a
    -- reversal releases them at reversed_at, before any sale at the same instant; a
    -- rejected settlement's own later lines still see its earlier ones, as online
    SELECT *, settled_at AS t, 1 AS kind,
           CASE WHEN split_sale THEN 0 ELSE units END AS own_full,
           CASE WHEN split_sale THEN units ELSE 0 END AS own_split,
           CASE WHEN split_sale OR rejected THEN 0 ELSE units END AS full_delta,
           CASE WHEN split_sale AND NOT rejected THEN units ELSE 0 END AS split_delta
    FROM sales
    UNION ALL BY NAME
    SELECT canonical, settlement_id, line_no, pos, false AS rejected, reversed_at AS t,
           0 AS kind, 0 AS own_full, 0 AS own_split,
           CASE WHEN split_sale THEN 0 ELSE -units END AS full_delta,
           CASE WHEN split_sale THEN -units ELSE 0 END AS split_delta
    FROM sales WHERE reversed_at IS NOT NULL AND NOT rejected
),
ledger AS (
    SELECT *,
           coalesce(sum(full_delta) OVER w, 0)
             + CASE WHEN rejected THEN coalesce(sum(own_full) OVER own, 0) ELSE 0 END
             AS prior_full_units,
           coalesce(sum(split_delta) OVER w, 0)
             + CASE WHEN rejected THEN coalesce(sum(own_split) OVER own, 0) ELSE 0 END
             AS prior_split_units,
           last_value(CASE WHEN kind = 1 AND NOT rejected THEN settlement_id END IGNORE NULLS)
             OVER w AS earlier_settlement
    FROM moves
    WINDOW w AS (PARTITION BY canonical ORDER BY t, kind, settlement_id, line_no, pos
                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
           own AS (PARTITION BY canonical, settlement_id, kind ORDER BY line_no, pos
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
)
SELECT settlement_id, line_no, pos, item_code, amount, raw, canonical,
       true AS has_code, true AS code_valid, invalid_reason,
       split_sale, units, pack_units, product_drug_code,
       prior_full_units, prior_split_units, earlier_settlement, last_stock_event
FROM ledger WHERE kind = 1
"""
"""The facts of every (line, valid code); ``{only_affected}`` narrows it to some codes."""

_NO_LEDGER_FACTS_SQL: Final = """
SELECT settlement_id, line_no, pos, item_code, amount, raw, NULL AS canonical,
       true AS has_code, false AS code_valid, invalid_reason,
       split_sale, units, pack_units, product_drug_code,
       0 AS prior_full_units, 0 AS prior_split_units, NULL AS earlier_settlement,
       last_stock_event
FROM resolved WHERE canonical IS NULL
UNION ALL
SELECT settlement_id, line_no, NULL, item_code, amount, NULL, NULL,
       false, false, 'no traceability code on a drug line',
       split_sale, 0, pack_units, '', 0, 0, NULL, ''
FROM drug_lines WHERE n_codes = 0
"""
"""The facts of lines without a valid code: the ledger has nothing to say of them."""


def _facts(batch: pa.RecordBatch) -> CodeFacts:
    def col(name: str) -> np.ndarray[Any, Any]:
        values: np.ndarray[Any, Any] = batch.column(name).to_numpy(zero_copy_only=False)
        return values

    return CodeFacts(
        has_code=col("has_code"),
        code_valid=col("code_valid"),
        split_sale=col("split_sale"),
        units=col("units"),
        pack_units=np.nan_to_num(col("pack_units").astype(float)),
        item_code=col("item_code"),
        product_drug_code=col("product_drug_code"),
        prior_full_units=col("prior_full_units"),
        prior_split_units=col("prior_split_units"),
        last_stock_event=col("last_stock_event"),
    )


def prepare(con: duckdb.DuckDBPyConnection) -> None:
    """Resolve every code of the history once: the tables every round reads."""
    _register_code_map(con)
    con.execute(_RESOLVED_SQL)


def _code_hit_rows(con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[dict[str, Any]]:
    """Every (line, code) of ``sql``'s facts on which a check fired, with the pattern and
    the facts behind it."""
    reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
    for batch in reader:
        facts = _facts(batch)
        fired = {pattern: np.asarray(check(facts), dtype=bool) for pattern, check in CHECKS.items()}
        any_fired = np.logical_or.reduce(list(fired.values()))
        if not any_fired.any():
            continue
        rows = batch.filter(pa.array(any_fired)).to_pylist()
        masks = {p: m[any_fired] for p, m in fired.items()}
        for i, row in enumerate(rows):
            for pattern, mask in masks.items():
                if mask[i]:
                    yield {"pattern": pattern, **row}


def _materialise(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """An Arrow table from Python as DuckDB temp table ``name`` (replacing one before)."""
    con.register(f"{name}_arrow", table)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")  # noqa: S608 - our own names
    con.unregister(f"{name}_arrow")


def _ids(column: str, values: set[str]) -> pa.Table:
    return pa.table({column: pa.array(sorted(values), pa.string())})


HitKey = tuple[str, int, int | None, TracePattern]


def screen_codes(con: duckdb.DuckDBPyConnection, *, max_rounds: int = 20) -> list[CodeHit]:
    """Screen a whole history: one hit per (settlement, pattern), in settlement order.

    A settlement that a check fires on is rejected, and a rejected settlement consumes no
    code (exactly as online): its pack stays where it was. Whether a settlement is rejected
    depends on the ones before it, so the screening runs in rounds: the first screens every
    code as if every settlement consumed its codes; each next round screens again only the
    codes of the settlements whose fate the last round changed, with the rejected ones
    consuming nothing, until no fate changes (a history needs as many rounds as its longest
    chain of rejections that free a pack for a later sale, rarely more than two or three).
    """
    prepare(con)
    fired: dict[HitKey, dict[str, Any]] = {}
    for row in _code_hit_rows(con, _NO_LEDGER_FACTS_SQL):
        fired[(row["settlement_id"], row["line_no"], row["pos"], row["pattern"])] = row
    rejected: set[str] = set()
    sql = _FACTS_SQL.format(only_affected="")
    for round_no in range(max_rounds):
        _materialise(con, "not_consuming", _ids("settlement_id", rejected))
        if round_no:  # a later round: forget what it screens again
            affected = {r[0] for r in con.execute("SELECT canonical FROM affected").fetchall()}
            fired = {k: r for k, r in fired.items() if r["canonical"] not in affected}
        for row in _code_hit_rows(con, sql):
            fired[(row["settlement_id"], row["line_no"], row["pos"], row["pattern"])] = row
        now_rejected = {key[0] for key in fired}
        changed = now_rejected ^ rejected
        if not changed:
            break
        rejected = now_rejected
        _materialise(con, "changed", _ids("settlement_id", changed))
        con.execute(
            """CREATE OR REPLACE TEMP TABLE affected AS
               SELECT DISTINCT canonical FROM resolved
               WHERE canonical IS NOT NULL
                 AND settlement_id IN (SELECT settlement_id FROM changed)"""
        )
        sql = _FACTS_SQL.format(only_affected="AND r.canonical IN (SELECT canonical FROM affected)")
    else:
        raise RuntimeError(f"trace-code screening did not settle in {max_rounds} rounds")
    grouped: dict[tuple[str, TracePattern], list[dict[str, Any]]] = {}
    for (settlement_id, _line, _pos, pattern), row in sorted(
        fired.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0, kv[0][3])
    ):
        grouped.setdefault((settlement_id, pattern), []).append(row)
    hits = []
    for (settlement_id, pattern), rows in sorted(grouped.items()):
        line_amounts = {r["line_no"]: r["amount"] for r in rows}
        hits.append(
            CodeHit(
                settlement_id=settlement_id,
                pattern=pattern,
                line_nos=tuple(sorted(line_amounts)),
                codes=tuple(r["canonical"] or r["raw"] or "" for r in rows),
                amount_at_risk=sum(line_amounts.values(), Decimal("0")),
                earlier_settlements=tuple(
                    sorted({r["earlier_settlement"] for r in rows if r["earlier_settlement"]})
                )
                if pattern in (TracePattern.DUPLICATE, TracePattern.SPLIT_OVERRUN)
                else (),
                reasons=tuple(sorted({r["invalid_reason"] for r in rows if r["invalid_reason"]}))
                if pattern is TracePattern.MISSING
                else (),
            )
        )
    return hits
