"""The trace-code checks over a whole history, out of core, in DuckDB.

The caller hands over a DuckDB connection on which the contract tables are views with the
contract's column names and types (``features.batch`` registers them): ``settlements``,
``settlement_items`` (``trace_codes`` a list of strings), ``trace_events``, ``reversals``,
``products`` and ``drugs``. DuckDB computes the code facts of every (drug line, code): the
ledger just before the sale (a running sum over the code's sales and releases in time
order) and the stock (an as-of join on the institution's supply-chain events). The
predicates of ``traceability.checks`` then run over those facts in batches of rows, exactly
as they run over the facts of one settlement online.

Every fact of a code depends on that code's sales and stock alone, so the history is
screened in partitions of the canonical codes (by hash, as DESIGN.md's ledger partitioned by
code): the (line, code) rows and the stock are written once, partitioned, to Parquet beside
DuckDB's spill folder, and each partition's as-of join and ledger windows fit in the memory
limit. The only thing the partitions share is the (small) set of rejected settlements,
which couples the codes of one settlement from round to round.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np
import pyarrow as pa

from traceability.checks import CHECKS, CodeFacts, TracePattern
from traceability.codes import InvalidTraceCode, canonicalize_codes

BATCH_ROWS: Final = 1_000_000
CODE_MAP_CHUNK: Final = 100_000

ROW_BYTES: Final = 1000
"""Memory one (line, code) row takes in a partition's as-of join and ledger windows
(measured: ~1 KB, the peak RSS of one partition of 2.5M rows of the benchmark's history
screened without a memory limit)."""

MEMORY_SHARE: Final = 0.5
"""The share of DuckDB's memory limit one partition is sized to."""

MAX_PARTITIONS: Final = 1024

NO_LEDGER: Final = -1
"""The partition of the lines without a valid code: the ledger has nothing to say of them."""

_PARTITION_OF: Final = "(hash(canonical) % {partitions})::BIGINT"
"""The partition of a canonical code (column ``canonical``) among ``partitions``."""

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
    """Canonicalise every spelling that is not a plain 20-digit code, once per spelling, in
    chunks (Python holds one chunk's parsed codes at a time, however many spellings)."""
    spellings = con.sql(
        """
        SELECT DISTINCT raw FROM (
            SELECT unnest(trace_codes) AS raw FROM settlement_items WHERE item_type = 'drug'
            UNION ALL
            SELECT trace_code AS raw FROM trace_events
        ) WHERE raw IS NOT NULL AND NOT regexp_full_match(raw, '[0-9]{20}')
        """
    ).to_arrow_table()
    con.execute(
        """CREATE OR REPLACE TEMP TABLE code_map
           (raw VARCHAR, canonical VARCHAR, product_code VARCHAR, reason VARCHAR)"""
    )
    for chunk in spellings.column("raw").chunks:
        for start in range(0, len(chunk), CODE_MAP_CHUNK):
            raws = chunk.slice(start, CODE_MAP_CHUNK).to_pylist()
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
                        [
                            None if isinstance(p, InvalidTraceCode) else p.product_code
                            for p in parsed
                        ],
                        pa.string(),
                    ),
                    "reason": pa.array(
                        [p.reason if isinstance(p, InvalidTraceCode) else None for p in parsed],
                        pa.string(),
                    ),
                }
            )
            con.register("code_map_arrow", table)
            con.execute("INSERT INTO code_map SELECT * FROM code_map_arrow")
            con.unregister("code_map_arrow")


_RESOLVED_SQL: Final = """
CREATE OR REPLACE TEMP VIEW drug_lines AS
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
CREATE OR REPLACE TEMP VIEW stock AS
    SELECT e.institution_id, e.event_at, e.event_type,
           CASE WHEN regexp_full_match(e.trace_code, '[0-9]{20}') THEN e.trace_code
                ELSE m.canonical END AS canonical
    FROM trace_events e LEFT JOIN code_map m ON m.raw = e.trace_code;
CREATE OR REPLACE TEMP VIEW code_lines AS
    WITH padded AS (
        -- a line without a code stays, as one row with pos NULL
        SELECT l.* EXCLUDE (trace_codes),
               CASE WHEN l.n_codes > 0 THEN l.trace_codes ELSE [NULL::VARCHAR] END AS slots
        FROM drug_lines l
    ),
    unnested AS (
        SELECT p.* EXCLUDE (slots), u.raw, CASE WHEN p.n_codes > 0 THEN u.pos END AS pos
        FROM padded p,
             LATERAL (SELECT unnest(p.slots) AS raw, generate_subscripts(p.slots, 1) AS pos) u
    ),
    canonical AS (
        SELECT c.*,
               CASE WHEN regexp_full_match(c.raw, '[0-9]{20}') THEN c.raw ELSE m.canonical END
                   AS canonical,
               CASE WHEN regexp_full_match(c.raw, '[0-9]{20}') THEN substr(c.raw, 1, 7)
                    ELSE m.product_code END AS product_code,
               m.reason AS invalid_reason,
               CASE WHEN c.pos IS NULL THEN 0
                    WHEN c.split_sale THEN c.quantity::DOUBLE / c.n_codes
                    ELSE c.pack_units::DOUBLE END AS units
        FROM unnested c LEFT JOIN code_map m ON m.raw = c.raw
    )
    SELECT c.*, coalesce(p.drug_code, '') AS product_drug_code
    FROM canonical c LEFT JOIN products p ON p.product_code = c.product_code;
CREATE OR REPLACE TEMP VIEW resolved AS
    SELECT c.*, coalesce(st.event_type, '') AS last_stock_event
    FROM (SELECT * FROM code_lines WHERE pos IS NOT NULL) c
    ASOF LEFT JOIN stock st
        ON st.institution_id = c.institution_id AND st.canonical = c.canonical
       AND st.event_at <= c.settled_at;
"""
"""The lines with their codes resolved: canonical form, product, the institution's last
stock event at the sale (``resolved``: one row per (line, code)). None of it depends on what
was rejected. Views, computed where they are read: the screening reads ``code_lines`` and
``stock`` once, to partition them; ``resolved`` is there for other readers of the history
(the ledger load, the institution features)."""

_PARTITION_LINES_SQL: Final = """
COPY (
    SELECT settlement_id, line_no, pos, item_code, amount, raw, canonical, invalid_reason,
           split_sale, units, pack_units, product_drug_code, institution_id, settled_at,
           reversed_at,
           CASE WHEN canonical IS NULL THEN {no_ledger} ELSE {partition_of} END AS part
    FROM code_lines
) TO {folder} (FORMAT parquet, PARTITION_BY (part), ROW_GROUP_SIZE 16384, RETURN_STATS)
"""
"""Every (line, code) into its code's partition; lines without a valid code into their own."""

_PARTITION_STOCK_SQL: Final = """
COPY (
    SELECT institution_id, event_at, event_type, canonical, {partition_of} AS part
    FROM stock WHERE canonical IS NOT NULL
) TO {folder} (FORMAT parquet, PARTITION_BY (part), ROW_GROUP_SIZE 16384, RETURN_STATS)
"""
"""The supply-chain events into their code's partition (an invalid code was never stocked)."""

_NO_STOCK_SQL: Final = """
SELECT NULL::VARCHAR AS institution_id, NULL::TIMESTAMPTZ AS event_at,
       NULL::VARCHAR AS event_type, NULL::VARCHAR AS canonical WHERE false
"""

_FACTS_SQL: Final = """
WITH lines AS (
    SELECT * FROM {lines} {only_affected}
),
part_stock AS (
    SELECT * FROM {stock} {only_affected}
),
sales AS (
    SELECT l.*, coalesce(st.event_type, '') AS last_stock_event,
           n.settlement_id IS NOT NULL AS rejected
    FROM lines l
    LEFT JOIN not_consuming n USING (settlement_id)
    ASOF LEFT JOIN part_stock st
        ON st.institution_id = l.institution_id AND st.canonical = l.canonical
       AND st.event_at <= l.settled_at
),
moves AS (
    -- a sale adds its units at settled_at, unless it was rejected (it took nothing); a
    -- reversal releases them at reversed_at, before any sale at the same instant
    SELECT *, settled_at AS t, 1 AS kind,
           CASE WHEN split_sale OR rejected THEN 0 ELSE units END AS full_delta,
           CASE WHEN split_sale AND NOT rejected THEN units ELSE 0 END AS split_delta
    FROM sales
    UNION ALL BY NAME
    SELECT canonical, settlement_id, line_no, pos, false AS rejected, reversed_at AS t,
           0 AS kind,
           CASE WHEN split_sale THEN 0 ELSE -units END AS full_delta,
           CASE WHEN split_sale THEN -units ELSE 0 END AS split_delta
    FROM sales WHERE reversed_at IS NOT NULL AND NOT rejected
),
own AS (
    -- a rejected settlement's own later lines still see its earlier ones, as online (a
    -- window over the rejected sales alone, few)
    SELECT settlement_id, line_no, pos,
           coalesce(sum(CASE WHEN split_sale THEN 0 ELSE units END) OVER o, 0) AS own_full,
           coalesce(sum(CASE WHEN split_sale THEN units ELSE 0 END) OVER o, 0) AS own_split
    FROM sales WHERE rejected
    WINDOW o AS (PARTITION BY canonical, settlement_id ORDER BY line_no, pos
                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
),
ledger AS (
    SELECT *,
           coalesce(sum(full_delta) OVER w, 0) AS prior_full,
           coalesce(sum(split_delta) OVER w, 0) AS prior_split,
           last_value(CASE WHEN kind = 1 AND NOT rejected THEN settlement_id END IGNORE NULLS)
             OVER w AS earlier_settlement
    FROM moves
    WINDOW w AS (PARTITION BY canonical ORDER BY t, kind, settlement_id, line_no, pos
                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
)
SELECT settlement_id, line_no, pos, item_code, amount, raw, canonical,
       true AS has_code, true AS code_valid, invalid_reason,
       split_sale, units, pack_units, product_drug_code,
       prior_full + coalesce(own_full, 0) AS prior_full_units,
       prior_split + coalesce(own_split, 0) AS prior_split_units,
       earlier_settlement, last_stock_event
FROM ledger LEFT JOIN own USING (settlement_id, line_no, pos)
WHERE kind = 1
"""
"""The facts of every (line, valid code) of one partition; ``{only_affected}`` narrows it
to some codes."""

_NO_LEDGER_FACTS_SQL: Final = """
SELECT settlement_id, line_no, pos, item_code, amount, raw, NULL::VARCHAR AS canonical,
       pos IS NOT NULL AS has_code, false AS code_valid,
       CASE WHEN pos IS NULL THEN 'no traceability code on a drug line'
            ELSE invalid_reason END AS invalid_reason,
       split_sale, units, pack_units, product_drug_code,
       0 AS prior_full_units, 0 AS prior_split_units, NULL::VARCHAR AS earlier_settlement,
       '' AS last_stock_event
FROM {lines}
"""
"""The facts of lines without a valid code (no code, or an invalid one): the ledger has
nothing to say of them, and an invalid code matches no stock."""


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
    """Resolve every code spelling of the history once (``code_map``) and define the views
    of the resolved lines (``drug_lines``, ``code_lines``, ``stock``, ``resolved``)."""
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


def materialise(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """An Arrow table from Python as DuckDB temp table ``name`` (replacing one before): the
    one way the batch executors (codes, rules, features, graphs) hand Python results back
    to DuckDB."""
    con.register(f"{name}_arrow", table)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")  # noqa: S608 - our own names
    finally:
        con.unregister(f"{name}_arrow")


def _ids(column: str, values: set[str]) -> pa.Table:
    return pa.table({column: pa.array(sorted(values), pa.string())})


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_BYTE_UNITS: Final = {
    "": 1,
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def setting_bytes(con: duckdb.DuckDBPyConnection, name: str = "memory_limit") -> int:
    """A DuckDB size setting on ``con`` (``memory_limit``, ``max_temp_directory_size``) in
    bytes: DuckDB reports it as text (``2.7 GiB``)."""
    text = str(con.execute("SELECT current_setting(?)", [name]).fetchall()[0][0])
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if match is None or match.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"unreadable DuckDB {name} {text!r}")
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])


def code_partition(con: duckdb.DuckDBPyConnection, canonical: str, partitions: int) -> int:
    """The partition of the canonical code ``canonical`` among ``partitions``."""
    sql = f"SELECT {_PARTITION_OF.format(partitions=int(partitions))} FROM (SELECT ? AS canonical)"  # noqa: S608 - an int
    return int(con.execute(sql, [canonical]).fetchall()[0][0])


def partition_count(con: duckdb.DuckDBPyConnection) -> int:
    """How many code partitions the history on ``con`` needs so that one partition's rows
    (``ROW_BYTES`` each) take ``MEMORY_SHARE`` of the memory limit: from the number of item
    lines (a count Parquet answers from its metadata) and the codes per line of the first
    lines."""
    lines = int(con.execute("SELECT count(*) FROM settlement_items").fetchall()[0][0])
    per_line = con.execute(
        """SELECT avg(len(coalesce(trace_codes, [])))
           FROM (SELECT trace_codes FROM settlement_items LIMIT 100000)"""
    ).fetchall()[0][0]
    rows = lines * max(float(per_line or 0), 1.0)
    budget = setting_bytes(con) * MEMORY_SHARE
    return max(1, min(MAX_PARTITIONS, math.ceil(rows * ROW_BYTES / budget)))


@contextmanager
def _scratch_folder(con: duckdb.DuckDBPyConnection) -> Iterator[Path]:
    """A fresh folder beside DuckDB's spill folder (on the disk meant for it, but not in it:
    DuckDB removes a spill folder it created when it closes), removed afterwards."""
    setting = str(con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0])
    spill = Path(setting) if setting else Path(tempfile.gettempdir()) / "duckdb"
    spill.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{spill.name}-codes-", dir=spill.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class CodePartitions:
    """The (line, code) rows and the stock of a history, written to Parquet partitioned by
    the hash of the canonical code; partition ``NO_LEDGER`` holds the lines without a
    valid code."""

    count: int
    lines: dict[int, list[str]]
    stock: dict[int, list[str]]
    rows: dict[int, int]

    @classmethod
    def write(cls, con: duckdb.DuckDBPyConnection, folder: Path, count: int) -> CodePartitions:
        """Partition the resolved lines and the stock of ``con`` (``prepare`` ran) into
        ``count`` code partitions under ``folder``: one pass over the history each."""
        lines, rows = _copy_partitioned(con, _PARTITION_LINES_SQL, folder / "lines", count)
        stock, _ = _copy_partitioned(con, _PARTITION_STOCK_SQL, folder / "stock", count)
        return cls(count=count, lines=lines, stock=stock, rows=rows)

    def source(self, part: int) -> str:
        """The (line, code) rows of partition ``part`` as a SQL table expression."""
        return _parquet(self.lines.get(part, []))

    def stock_source(self, part: int) -> str:
        files = self.stock.get(part, [])
        return _parquet(files) if files else f"({_NO_STOCK_SQL})"

    @property
    def ledger_parts(self) -> list[int]:
        return sorted(p for p in self.lines if p != NO_LEDGER)


def _copy_partitioned(
    con: duckdb.DuckDBPyConnection, sql: str, folder: Path, count: int
) -> tuple[dict[int, list[str]], dict[int, int]]:
    """Run a partitioned ``COPY``; the files and the rows it wrote, by partition."""
    statement = sql.format(
        partition_of=_PARTITION_OF.format(partitions=count),
        no_ledger=NO_LEDGER,
        folder=_quote(str(folder)),
    )
    cursor = con.execute(statement)
    names = [d[0] for d in cursor.description or ()]
    files: dict[int, list[str]] = {}
    rows: dict[int, int] = {}
    for record in cursor.fetchall():
        stats = dict(zip(names, record, strict=True))
        part = int(stats["partition_keys"]["part"])
        files.setdefault(part, []).append(str(stats["filename"]))
        rows[part] = rows.get(part, 0) + int(stats["count"])
    return files, rows


def _parquet(files: list[str]) -> str:
    return f"read_parquet([{', '.join(map(_quote, files))}], hive_partitioning = false)"


HitKey = tuple[str, int, int | None, TracePattern]


def _key(row: dict[str, Any]) -> HitKey:
    return (row["settlement_id"], row["line_no"], row["pos"], row["pattern"])


def screen_codes(
    con: duckdb.DuckDBPyConnection, *, max_rounds: int = 20, partitions: int | None = None
) -> list[CodeHit]:
    """Screen a whole history: one hit per (settlement, pattern), in settlement order.

    A settlement that a check fires on is rejected, and a rejected settlement consumes no
    code (exactly as online): its pack stays where it was. Whether a settlement is rejected
    depends on the ones before it, so the screening runs in rounds: the first screens every
    code as if every settlement consumed its codes; each next round screens again only the
    codes of the settlements whose fate the last round changed, with the rejected ones
    consuming nothing, until no fate changes (a history needs as many rounds as its longest
    chain of rejections that free a pack for a later sale, rarely more than two or three).

    Each round screens the code partitions one after the other (``partitions`` of them,
    else as many as the history and the memory limit need: ``partition_count``); the
    rejected settlements of a round are those of every partition. Afterwards the temp table
    ``not_consuming`` holds the rejected settlements.
    """
    prepare(con)
    count = partitions or partition_count(con)
    with _scratch_folder(con) as folder:
        fired = _screen_rounds(con, CodePartitions.write(con, folder, count), max_rounds)
    return _code_hits(fired)


def _screen_rounds(
    con: duckdb.DuckDBPyConnection, parts: CodePartitions, max_rounds: int
) -> dict[HitKey, dict[str, Any]]:
    """Every (line, code, pattern) that fired once the rejected settlements are stable."""
    fired: dict[HitKey, dict[str, Any]] = {}
    if NO_LEDGER in parts.lines:
        sql = _NO_LEDGER_FACTS_SQL.format(lines=parts.source(NO_LEDGER))
        fired.update((_key(row), row) for row in _code_hit_rows(con, sql))
    ledger_files = [f for p in parts.ledger_parts for f in parts.lines[p]]
    rejected: set[str] = set()
    todo, only_affected = parts.ledger_parts, ""
    for round_no in range(max_rounds):
        materialise(con, "not_consuming", _ids("settlement_id", rejected))
        if round_no:  # a later round: forget what it screens again
            affected = {r[0] for r in con.execute("SELECT canonical FROM affected").fetchall()}
            fired = {k: r for k, r in fired.items() if r["canonical"] not in affected}
        for part in todo:
            sql = _FACTS_SQL.format(
                lines=parts.source(part),
                stock=parts.stock_source(part),
                only_affected=only_affected,
            )
            fired.update((_key(row), row) for row in _code_hit_rows(con, sql))
        now_rejected = {key[0] for key in fired}
        changed = now_rejected ^ rejected
        if not changed:
            return fired
        rejected = now_rejected
        materialise(con, "changed", _ids("settlement_id", changed))
        source = _parquet(ledger_files) if ledger_files else f"({_NO_STOCK_SQL})"
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE affected AS
                SELECT DISTINCT canonical FROM {source}
                WHERE settlement_id IN (SELECT settlement_id FROM changed)"""  # noqa: S608 - our own files
        )
        todo = [
            int(r[0])
            for r in con.execute(
                f"""SELECT DISTINCT {_PARTITION_OF.format(partitions=parts.count)} AS part
                    FROM affected ORDER BY part"""  # noqa: S608 - an int
            ).fetchall()
        ]
        only_affected = "WHERE canonical IN (SELECT canonical FROM affected)"
    raise RuntimeError(f"trace-code screening did not settle in {max_rounds} rounds")


def _code_hits(fired: dict[HitKey, dict[str, Any]]) -> list[CodeHit]:
    """One hit per (settlement, pattern) from the (line, code) rows that fired."""
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
