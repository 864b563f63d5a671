"""The code-flow network: a pack (canonical traceability code) dispensed to a patient at
one institution that reappears in a later settlement at another (回流药, 倒卖).

A *flow* is a drug-line code whose previous sale (same canonical code, ordered by
settlement time) was at a different institution. Reversed settlements are left out on both
ends: a refunded sale released its pack (CONTRACT.md §3), so a pack sold again after a
reversal is no flow, and a sale that was itself refunded moved nothing. A pack sold again by
the same institution (a split sale, or a duplicate the trace-code checks already reject) is
no flow either. The network has two kinds of edges: patient -> institution (the source
patient's pack reappears at the institution) and institution -> institution (where the pack
was dispensed -> where it reappeared).

- ``resale_hub`` (entity ``institution``): institutions whose sales carry packs that flowed
  in from other institutions' patients.
- ``drug_hoarding`` (entity ``patient``): patients who bought a high-value drug
  (``drugs.high_value``) far beyond plausible use (units against ``max_units_per_day`` x the
  days covered: first to last purchase plus ``supply_days``), across institutions, and/or
  whose packs reappear at other institutions. A chronic patient who buys a month's supply a
  month is at a ratio of about 1 and is not flagged.

Everything is computed in DuckDB; Python sees one row per flagged entity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import duckdb
import pyarrow as pa

from features.flags import Flag
from traceability.batch import materialise
from traceability.codes import InvalidTraceCode, canonicalize_codes

HUB: Final = "resale_hub"
HOARDING: Final = "drug_hoarding"
_CENT: Final = Decimal("0.01")
_EVIDENCE_LIST: Final = 50
"""At most this many codes (or sources) are listed in a flag's evidence."""


@dataclass(frozen=True)
class CodeFlowParams:
    """The knobs of the code-flow analysis (defaults chosen on seed 7, checked on 11)."""

    supply_days: int = 30
    """Days of use allowed after a patient's last purchase of a drug."""
    min_ratio: float = 1.5
    """A drug bought at more than this times plausible use is a hoarding candidate."""
    min_hub_codes: int = 2
    """An institution needs at least this many inflowing packs to be flagged as a hub."""
    min_hoarding_score: float = 0.2
    """Patients scoring below this are not flagged."""


def _register_code_map(con: duckdb.DuckDBPyConnection) -> None:
    """``cf_code_map(raw, canonical)`` for every drug-line spelling that is not a plain
    20-digit code (those are canonical as they are), through ``traceability.codes``.

    When the trace-code screening (``traceability.batch.prepare``) already ran on this
    connection, its ``code_map`` (the same spellings, canonicalised the same way) is reused:
    canonicalising is most of this analysis' time at scale."""
    existing = con.execute(
        """SELECT count(*) FROM duckdb_columns()
           WHERE database_name = 'temp' AND table_name = 'code_map'
             AND column_name IN ('raw', 'canonical')"""
    ).fetchall()[0][0]
    if existing == len(("raw", "canonical")):
        con.execute(
            "CREATE OR REPLACE TEMP TABLE cf_code_map AS SELECT raw, canonical FROM code_map"
        )
        return
    raws = [
        r[0]
        for r in con.execute(
            """SELECT DISTINCT raw FROM (
                   SELECT unnest(trace_codes) AS raw FROM settlement_items
                   WHERE item_type = 'drug')
               WHERE raw IS NOT NULL AND NOT regexp_full_match(raw, '[0-9]{20}')
               ORDER BY raw"""
        ).fetchall()
    ]
    by_spelling = canonicalize_codes(raws)
    parsed = [by_spelling[r] for r in raws]
    canonical = [None if isinstance(p, InvalidTraceCode) else p.canonical for p in parsed]
    table = pa.table(
        {"raw": pa.array(raws, pa.string()), "canonical": pa.array(canonical, pa.string())}
    )
    materialise(con, "cf_code_map", table)


_LINES_SQL: Final = """
CREATE OR REPLACE TEMP TABLE cf_lines AS
    SELECT i.settlement_id, i.line_no, i.item_code, i.quantity,
           i.amount * CASE WHEN s.total_amount > 0
                           THEN s.fund_paid / s.total_amount ELSE 1 END AS fund_amount,
           s.patient_id, s.institution_id, s.settled_at,
           coalesce(i.trace_codes, []) AS codes
    FROM settlement_items i
    JOIN settlements s USING (settlement_id)
    ANTI JOIN reversals r USING (settlement_id)
    WHERE i.item_type = 'drug'
"""
"""Every drug line of a settlement that was not reversed."""

_SALES_SQL: Final = """
CREATE OR REPLACE TEMP VIEW cf_sales AS
    WITH code_lines AS (
        SELECT l.* EXCLUDE (codes), unnest(l.codes) AS raw, len(l.codes) AS n_codes
        FROM cf_lines l WHERE len(l.codes) > 0
    )
    SELECT c.* EXCLUDE (raw),
           CASE WHEN regexp_full_match(c.raw, '[0-9]{20}') THEN c.raw ELSE m.canonical END
               AS canonical
    FROM code_lines c LEFT JOIN cf_code_map m ON m.raw = c.raw
"""
"""One row per (drug line, code) with the code's canonical form (NULL when invalid); a view,
read twice: once to find the codes sold at two institutions or more, once for their sales."""

_MOVED_SQL: Final = """
CREATE OR REPLACE TEMP TABLE cf_moved AS
    SELECT canonical FROM cf_sales WHERE canonical IS NOT NULL
    GROUP BY canonical HAVING min(institution_id) <> max(institution_id)
"""
"""The codes sold at more than one institution: the only ones that can flow (an aggregate,
much cheaper than ordering every code's sales)."""

_FLOWS_SQL: Final = """
CREATE OR REPLACE TEMP TABLE cf_flows AS
    WITH ordered AS (
        SELECT *,
               lag(institution_id) OVER w AS src_institution,
               lag(patient_id) OVER w AS src_patient,
               lag(settlement_id) OVER w AS src_settlement
        FROM cf_sales SEMI JOIN cf_moved USING (canonical)
        WINDOW w AS (PARTITION BY canonical ORDER BY settled_at, settlement_id, line_no)
    )
    SELECT canonical, item_code, settlement_id, institution_id, patient_id, settled_at,
           fund_amount / n_codes AS fund_amount,
           src_institution, src_patient, src_settlement
    FROM ordered
    WHERE src_institution IS NOT NULL AND src_institution <> institution_id
"""

_HUBS_SQL: Final = """
WITH packs AS (
    SELECT institution_id, sum(len(codes)) AS packs_sold
    FROM cf_lines SEMI JOIN cf_flows USING (institution_id) GROUP BY ALL
),
sources AS (
    SELECT institution_id, src_patient, src_institution, count(DISTINCT canonical) AS codes
    FROM cf_flows GROUP BY ALL
)
SELECT f.institution_id,
       count(DISTINCT f.canonical) AS flow_codes,
       count(DISTINCT f.src_patient) AS source_patients,
       count(DISTINCT f.src_institution) AS source_institutions,
       any_value(p.packs_sold) AS packs_sold,
       sum(f.fund_amount) AS amount,
       list(DISTINCT f.item_code ORDER BY f.item_code) AS drugs,
       list(DISTINCT f.canonical ORDER BY f.canonical)[1:$n] AS codes,
       (SELECT list(struct_pack(patient_id := s.src_patient,
                                dispensed_at := s.src_institution, codes := s.codes)
                    ORDER BY s.codes DESC, s.src_patient, s.src_institution)[1:$n]
        FROM sources s WHERE s.institution_id = f.institution_id) AS sources,
       min(f.settled_at) AS first_at, max(f.settled_at) AS last_at
FROM cf_flows f JOIN packs p USING (institution_id)
GROUP BY f.institution_id
HAVING count(DISTINCT f.canonical) >= $min_codes
ORDER BY f.institution_id
"""

_HOARDING_SQL: Final = """
WITH sold_on AS (
    SELECT src_patient AS patient_id, item_code,
           count(DISTINCT canonical) AS reappeared,
           sum(fund_amount) AS reappeared_amount,
           list(DISTINCT canonical ORDER BY canonical)[1:$n] AS codes,
           list(DISTINCT institution_id ORDER BY institution_id) AS reappeared_at
    FROM cf_flows GROUP BY ALL
),
candidate_lines AS (  -- high-value drugs, and any drug whose packs reappeared elsewhere
    SELECT l.* FROM cf_lines l
    LEFT JOIN drugs d ON d.drug_code = l.item_code
    LEFT JOIN (SELECT DISTINCT patient_id, item_code FROM sold_on) k
           ON k.patient_id = l.patient_id AND k.item_code = l.item_code
    WHERE coalesce(d.high_value, false) OR k.patient_id IS NOT NULL
),
bought AS (
    SELECT l.patient_id, l.item_code,
           sum(l.quantity) AS units,
           count(DISTINCT l.settlement_id) AS purchases,
           list(DISTINCT l.institution_id ORDER BY l.institution_id) AS institutions,
           min(l.settled_at) AS first_at, max(l.settled_at) AS last_at,
           sum(l.fund_amount) AS amount,
           sum(len(l.codes)) AS packs
    FROM candidate_lines l
    GROUP BY ALL
),
both_ AS (
    SELECT b.patient_id, b.item_code AS drug_code, b.units, b.purchases, b.packs,
           b.institutions, b.first_at, b.last_at, coalesce(b.amount, 0) AS amount,
           datediff('day', b.first_at::DATE, b.last_at::DATE) + $supply_days AS days,
           d.max_units_per_day,
           coalesce(f.reappeared, 0) AS reappeared,
           coalesce(f.reappeared_amount, 0) AS reappeared_amount,
           coalesce(f.codes, []) AS codes, coalesce(f.reappeared_at, []) AS reappeared_at
    FROM bought b
    LEFT JOIN sold_on f ON f.patient_id = b.patient_id AND f.item_code = b.item_code
    LEFT JOIN drugs d ON d.drug_code = b.item_code
)
SELECT *, CASE WHEN max_units_per_day > 0 AND days > 0
               THEN units / (max_units_per_day * days) END AS ratio
FROM both_
WHERE reappeared > 0
   OR (max_units_per_day > 0 AND days > 0 AND units > $min_ratio * max_units_per_day * days)
ORDER BY patient_id, drug_code
"""


def _money(value: Any) -> Decimal:
    return Decimal(value or 0).quantize(_CENT)


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def _hub_flags(con: duckdb.DuckDBPyConnection, params: CodeFlowParams) -> list[Flag]:
    cur = con.execute(_HUBS_SQL, {"n": _EVIDENCE_LIST, "min_codes": params.min_hub_codes})
    names = [d[0] for d in cur.description]
    flags = []
    for values in cur.fetchall():
        r = dict(zip(names, values, strict=True))
        share = r["flow_codes"] / max(r["packs_sold"], 1)
        score = (
            0.5 * (1 - math.exp(-r["flow_codes"] / 10))
            + 0.3 * _clip((r["source_patients"] - 1) / 3)
            + 0.2 * _clip(share / 0.1)
        )
        evidence: dict[str, object] = {
            "flow_codes": r["flow_codes"],
            "packs_sold": r["packs_sold"],
            "flow_share": round(share, 4),
            "source_patients": r["source_patients"],
            "source_institutions": r["source_institutions"],
            "drugs": r["drugs"],
            "codes": r["codes"],
            "sources": r["sources"],
            "first_at": r["first_at"].isoformat(),
            "last_at": r["last_at"].isoformat(),
        }
        flags.append(
            Flag(
                "institution",
                r["institution_id"],
                HUB,
                round(score, 4),
                "review",
                _money(r["amount"]),
                evidence,
            )
        )
    return flags


def _hoarding_score(r: dict[str, Any]) -> float:
    ratio = r["ratio"] or 0.0
    packs = max(r["packs"], 1)
    return (
        0.45 * _clip((ratio - 1) / 3)
        + 0.2 * _clip((len(r["institutions"]) - 1) / 2)
        + 0.35 * _clip(r["reappeared"] / packs / 0.5)
    )


def _hoarding_flags(con: duckdb.DuckDBPyConnection, params: CodeFlowParams) -> list[Flag]:
    cur = con.execute(
        _HOARDING_SQL,
        {"n": _EVIDENCE_LIST, "supply_days": params.supply_days, "min_ratio": params.min_ratio},
    )
    names = [d[0] for d in cur.description]
    by_patient: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for values in cur.fetchall():
        r = dict(zip(names, values, strict=True))
        by_patient.setdefault(r["patient_id"], []).append((_hoarding_score(r), r))
    flags = []
    for patient_id in sorted(by_patient):
        rows = sorted(by_patient[patient_id], key=lambda sr: (-sr[0], sr[1]["drug_code"]))
        score, r = rows[0]
        if score < params.min_hoarding_score:
            continue
        ratio = float(r["ratio"]) if r["ratio"] is not None else None
        excess = Decimal(r["amount"]) * Decimal(1 - 1 / ratio) if ratio and ratio > 1 else 0
        evidence: dict[str, object] = {
            "drug_code": r["drug_code"],
            "units": int(r["units"]),
            "days": int(r["days"]) if r["days"] is not None else None,
            "max_units_per_day": r["max_units_per_day"],
            "ratio": round(ratio, 3) if ratio is not None else None,
            "purchases": int(r["purchases"]),
            "packs": int(r["packs"]),
            "institutions": r["institutions"],
            "first_at": r["first_at"].isoformat() if r["first_at"] else None,
            "last_at": r["last_at"].isoformat() if r["last_at"] else None,
            "reappeared_packs": int(r["reappeared"]),
            "reappeared_codes": r["codes"],
            "reappeared_at": r["reappeared_at"],
            "other_drugs": [o["drug_code"] for _, o in rows[1:]],
        }
        amount = max(_money(excess), _money(r["reappeared_amount"]))
        flags.append(
            Flag("patient", patient_id, HOARDING, round(score, 4), "review", amount, evidence)
        )
    return flags


def code_flow_flags(
    con: duckdb.DuckDBPyConnection, params: CodeFlowParams | None = None
) -> list[Flag]:
    """``resale_hub`` and ``drug_hoarding`` flags from the code-flow network of a history
    (``features.batch.open_history`` connection).

    ``resale_hub`` (entity ``institution``). Score = 0.5 volume (1 - exp(-inflowing
    packs / 10)) + 0.3 source patients ((n - 1) / 3) + 0.2 share of the institution's coded
    packs that flowed in (/ 0.1), each capped at 1. ``amount_at_risk``: the fund's share of
    the inflowing packs' sales. Evidence keys: ``flow_codes`` (inflowing packs),
    ``packs_sold`` (codes on its drug lines), ``flow_share``, ``source_patients``, ``source_institutions``, ``drugs``,
    ``codes`` (canonical, at most 50), ``sources`` (patient -> institution edges:
    ``patient_id``, ``dispensed_at`` institution, ``codes``; at most 50), ``first_at``,
    ``last_at``.

    ``drug_hoarding`` (entity ``patient``), for the patient's highest-scoring drug.
    Score = 0.45 ratio ((ratio - 1) / 3) + 0.2 institutions ((n - 1) / 2) + 0.35 share of
    the packs that reappeared elsewhere (/ 0.5), each capped at 1. ``amount_at_risk``: the
    larger of the fund's share of the purchases beyond plausible use and of the packs that
    reappeared. Evidence keys: ``drug_code``, ``units``, ``days`` (first to last purchase
    + ``supply_days``), ``max_units_per_day``, ``ratio`` (units / (max_units_per_day x
    days)), ``purchases``, ``packs``, ``institutions`` (where bought), ``first_at``,
    ``last_at``, ``reappeared_packs``, ``reappeared_codes``, ``reappeared_at``
    (institutions), ``other_drugs`` (the patient's other candidate drugs).
    """
    params = params or CodeFlowParams()
    _register_code_map(con)
    con.execute(_LINES_SQL)
    con.execute(_SALES_SQL)
    con.execute(_MOVED_SQL)
    con.execute(_FLOWS_SQL)
    return _hub_flags(con, params) + _hoarding_flags(con, params)
