"""The co-admission network: patients admitted to the same institution within a day of each
other, again and again (结伴住院, ``group_admission``).

Nodes are (institution, patient); an edge joins two patients whose inpatient stays at one
institution began within ``window_days`` of each other on at least ``min_occasions``
distinct occasions, and whose co-admissions are unlikely to be chance. Chance is judged per
pair: a patient admitted ``n_a`` times and another admitted ``n_b`` times at the same
institution over ``T`` days meet by chance about ``lambda = n_a * n_b * (2w + 1) / T`` times
(Poisson), however many people the hospital admits a day; the edge needs
``P(X >= occasions | lambda) <= edge_p``. A hospital's volume enters through the number of
pairs tested: a group of two is flagged only if its p-value times the number of candidate
pairs at that institution (patients with two stays or more, choose two) stays below
``pair_alpha``. A group of three or more needs nearly every pair of members joined
(cohesion >= ``min_cohesion``): chance edges are few and scattered, so they chain into
paths and stars (measured: two false 3-member paths, cohesion 2/3, at large scale, seed 3),
while people admitted together meet each other every time.

Groups are the connected components of the kept edges at each institution; a component that
is large or loose (``louvain_above`` members, or cohesion below ``min_cohesion``) is split
by Louvain community detection (networkx, fixed seed). Measured on simulated provinces
(seeds 7, 11 small; seed 3 medium and large) components and Louvain gave the same groups; Louvain only
matters when chains of coincidences link groups.

DuckDB does the self-join (an equi-join on institution and admission day shifted by
-w..w, only over patients with at least ``min_occasions`` stays at that institution, so it
scales to provincial data); Python sees only the pairs that met at least twice.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Final

import duckdb
import networkx as nx
import pyarrow as pa
from scipy.stats import poisson

from features.flags import Flag, GroupMember

PATTERN: Final = "group_admission"


@dataclass(frozen=True)
class CoAdmissionParams:
    """The knobs of the co-admission analysis (defaults chosen on seed 7, checked on 11)."""

    window_days: int = 1
    """Two admissions within this many days of each other are one occasion."""
    min_occasions: int = 2
    """An edge needs at least this many distinct co-admission occasions."""
    edge_p: float = 1e-3
    """Largest chance probability (Poisson tail) of a pair's co-admissions for an edge."""
    pair_alpha: float = 0.01
    """A group of two needs p-value x candidate pairs at its institution below this."""
    min_cohesion: float = 0.75
    """Share of member pairs joined by an edge that a group of three or more needs; a
    looser component is split by Louvain first."""
    louvain_above: int = 12
    """Components larger than this are split by Louvain community detection."""
    thin_rate: float = 0.05
    """A diagnosis is thin when at most this share of its settlements are inpatient."""
    seed: int = 20250101
    """Louvain's random seed (results are deterministic)."""


_STAYS_SQL: Final = """
CREATE OR REPLACE TEMP TABLE ga_stays AS
    SELECT s.settlement_id, s.institution_id, s.patient_id, s.admit_date,
           s.discharge_date, s.diagnosis_code, s.fund_paid
    FROM settlements s ANTI JOIN reversals r USING (settlement_id)
    WHERE s.visit_type = 'inpatient' AND s.admit_date IS NOT NULL
      AND s.patient_id IS NOT NULL AND s.institution_id IS NOT NULL;
CREATE OR REPLACE TEMP TABLE ga_load AS
    SELECT institution_id, patient_id, count(*) AS n_stays
    FROM ga_stays GROUP BY ALL;
CREATE OR REPLACE TEMP TABLE ga_repeat AS
    SELECT st.*, l.n_stays
    FROM ga_stays st JOIN ga_load l USING (institution_id, patient_id)
    WHERE l.n_stays >= $min_occasions;
CREATE OR REPLACE TEMP TABLE ga_pair_stays AS
    SELECT a.institution_id, a.patient_id AS pa, b.patient_id AS pb,
           a.settlement_id AS sa, b.settlement_id AS sb,
           a.admit_date AS da, b.admit_date AS db, a.n_stays AS na, b.n_stays AS nb
    FROM ga_repeat a
    JOIN (SELECT r.*, r.admit_date + w.d::INTEGER AS key_day
          FROM ga_repeat r, range(-$window, $window + 1) w(d)) b
      ON a.institution_id = b.institution_id AND a.admit_date = b.key_day
     AND a.patient_id < b.patient_id;
"""

_PAIRS_SQL: Final = """
SELECT institution_id, pa, pb, any_value(na) AS na, any_value(nb) AS nb,
       least(count(DISTINCT sa), count(DISTINCT sb)) AS occasions
FROM ga_pair_stays GROUP BY institution_id, pa, pb
HAVING least(count(DISTINCT sa), count(DISTINCT sb)) >= $min_occasions
ORDER BY institution_id, pa, pb
"""

_CONTEXT_SQL: Final = """
SELECT
    (SELECT datediff('day', min(admit_date), max(admit_date)) + 1 FROM ga_stays) AS span,
    (SELECT list(struct_pack(i := institution_id, k := k) ORDER BY institution_id)
     FROM (SELECT institution_id, count(*) AS k FROM ga_load
           WHERE n_stays >= $min_occasions GROUP BY ALL)) AS repeaters
"""

_THIN_SQL: Final = """
SELECT diagnosis_code FROM settlements WHERE diagnosis_code IS NOT NULL
GROUP BY diagnosis_code
HAVING count(*) FILTER (WHERE visit_type = 'inpatient') <= $thin_rate * count(*)
"""


@dataclass(frozen=True)
class _Edge:
    institution_id: str
    a: str
    b: str
    occasions: int
    expected: float
    p_value: float


def _pair_edges(
    con: duckdb.DuckDBPyConnection, params: CoAdmissionParams
) -> tuple[list[_Edge], dict[str, int]]:
    """The kept edges and, per institution, the number of candidate pairs tested."""
    values = {"min_occasions": params.min_occasions, "window": params.window_days}
    for statement in filter(str.strip, _STAYS_SQL.split(";")):
        con.execute(statement, {k: v for k, v in values.items() if f"${k}" in statement})
    span, repeaters = con.execute(_CONTEXT_SQL, {"min_occasions": params.min_occasions}).fetchone()  # type: ignore[misc]
    candidates = {r["i"]: r["k"] * (r["k"] - 1) // 2 for r in repeaters or []}
    days = max(int(span or 1), 1)
    edges = []
    for inst, a, b, na, nb, occ in con.execute(
        _PAIRS_SQL, {"min_occasions": params.min_occasions}
    ).fetchall():
        expected = na * nb * (2 * params.window_days + 1) / days
        p_value = float(poisson.sf(occ - 1, expected))
        if p_value <= params.edge_p:
            edges.append(_Edge(inst, a, b, int(occ), expected, p_value))
    return edges, candidates


def _communities(edges: list[_Edge], params: CoAdmissionParams) -> list[tuple[str, list[str], str]]:
    """(institution, sorted members, method) of every community of the kept edges, in a
    stable order; method is ``components`` or ``louvain`` (a component that was split)."""
    by_inst: dict[str, list[_Edge]] = defaultdict(list)
    for e in edges:
        by_inst[e.institution_id].append(e)
    out: list[tuple[str, list[str], str]] = []
    for inst in sorted(by_inst):
        g = nx.Graph()
        for e in sorted(by_inst[inst], key=lambda e: (e.a, e.b)):
            g.add_edge(e.a, e.b, weight=e.occasions)
        for comp in sorted((sorted(c) for c in nx.connected_components(g)), key=lambda c: c[0]):
            sub = g.subgraph(comp)
            if len(comp) > params.louvain_above or nx.density(sub) < params.min_cohesion:
                parts = nx.community.louvain_communities(sub, weight="weight", seed=params.seed)
                out.extend(
                    (inst, sorted(p), "louvain") for p in sorted(parts, key=min) if len(p) >= 2
                )
            else:
                out.append((inst, comp, "components"))
    return out


def group_id(institution_id: str, members: Iterable[str]) -> str:
    """A group's id: derived from its institution and its sorted members (deterministic)."""
    key = "\x1f".join([institution_id, *sorted(members)]).encode()
    return "G" + hashlib.sha256(key).hexdigest()[:16]


def _occasions(stays: list[tuple[str, str, date, str, Decimal]], window: int) -> list[list[Any]]:
    """Co-admission stays of a group clustered into occasions (admissions within ``window``
    days of the previous one belong to the same occasion)."""
    clusters: list[list[Any]] = []
    for stay in sorted(stays, key=lambda s: (s[2], s[1], s[0])):
        if clusters and (stay[2] - clusters[-1][-1][2]).days <= window:
            clusters[-1].append(stay)
        else:
            clusters.append([stay])
    return clusters


def group_admission_flags(
    con: duckdb.DuckDBPyConnection, params: CoAdmissionParams | None = None
) -> tuple[list[Flag], list[GroupMember]]:
    """``group_admission`` flags (entity_type ``group``) and their members, from the
    co-admission network of a history (``features.batch.open_history`` connection).

    Score (0..1) = 0.35 chance evidence (-log10 of the group's strongest pair p-value
    times candidate pairs, /8) + 0.25 cohesion + 0.2 thin-diagnosis share + 0.1 occasions
    ((n - 1) / 3) + 0.1 size ((members - 1) / 4), each capped at 1. ``amount_at_risk``: the
    fund_paid of the members' stays on the group's co-admission occasions.

    Evidence keys: ``members`` (patient ids), ``institution_id``, ``occasions`` (number of
    occasions at which at least two members were admitted together), ``occasion_dates``
    (per occasion: ``first_admit``, ``last_admit``, ``patients``, ``settlement_ids``),
    ``diagnoses`` (code -> stays), ``thin_diagnosis_share``, ``thin_diagnoses``,
    ``edges`` (``count``, ``possible``, ``cohesion``, ``min_weight``, ``max_weight``,
    ``mean_weight``: co-admission occasions per member pair), ``chance`` (``candidate_pairs``
    at the institution, ``best_pair_p_value``, ``max_expected``: co-admissions expected by
    chance for the most active pair), ``method`` (``components`` or ``louvain``).
    """
    params = params or CoAdmissionParams()
    edges, candidates = _pair_edges(con, params)
    thin = {r[0] for r in con.execute(_THIN_SQL, {"thin_rate": params.thin_rate}).fetchall()}
    edge_of = {(e.institution_id, e.a, e.b): e for e in edges}
    groups = _communities(edges, params)
    if not groups:
        return [], []
    # every co-admitted stay pair of the groups' members, for the occasions and the amount
    wanted = sorted({(inst, p) for inst, members, _ in groups for p in members})
    con.register(
        "ga_wanted_df",
        pa.table({"institution_id": [w[0] for w in wanted], "patient_id": [w[1] for w in wanted]}),
    )
    rows = con.execute(
        """SELECT p.institution_id, p.pa, p.pb, p.sa, p.sb
           FROM ga_pair_stays p
           SEMI JOIN ga_wanted_df w ON w.institution_id = p.institution_id AND w.patient_id = p.pa
           ORDER BY ALL"""
    ).fetchall()
    stays = {
        r[0]: r[1:]
        for r in con.execute(
            """SELECT s.settlement_id, s.patient_id, s.admit_date, coalesce(s.diagnosis_code, ''),
                      s.fund_paid
               FROM ga_stays s SEMI JOIN ga_wanted_df w
                 ON w.institution_id = s.institution_id AND w.patient_id = s.patient_id"""
        ).fetchall()
    }
    con.unregister("ga_wanted_df")
    pair_stays: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for inst, a, b, sa, sb in rows:
        pair_stays[(inst, a, b)].update((sa, sb))

    flags: list[Flag] = []
    members_out: list[GroupMember] = []
    for inst, members, method in groups:
        group_edges = [
            edge_of[(inst, a, b)]
            for i, a in enumerate(members)
            for b in members[i + 1 :]
            if (inst, a, b) in edge_of
        ]
        possible = len(members) * (len(members) - 1) // 2
        best_p = min(e.p_value for e in group_edges)
        n_pairs = max(candidates.get(inst, 1), 1)
        if len(members) == 2 and best_p * n_pairs > params.pair_alpha:
            continue
        if len(group_edges) < params.min_cohesion * possible:
            continue
        sids: set[str] = set()
        for e in group_edges:
            sids |= pair_stays[(inst, e.a, e.b)]
        group_stays = [(sid, *stays[sid]) for sid in sorted(sids)]
        occasions = [
            c for c in _occasions(group_stays, params.window_days) if len({s[1] for s in c}) >= 2
        ]
        dx = Counter(s[3] for s in group_stays)
        thin_share = sum(n for code, n in dx.items() if code in thin) / max(len(group_stays), 1)
        weights = [e.occasions for e in group_edges]
        cohesion = len(group_edges) / possible
        # how far below one chance pair the group's strongest pair lies, in decades
        surprise = -math.log10(max(best_p * n_pairs, 1e-300))
        score = (
            0.35 * min(1.0, max(surprise / 8, 0.0))
            + 0.25 * cohesion
            + 0.2 * thin_share
            + 0.1 * min(1.0, (len(occasions) - 1) / 3)
            + 0.1 * min(1.0, (len(members) - 1) / 4)
        )
        gid = group_id(inst, members)
        evidence: dict[str, object] = {
            "members": members,
            "institution_id": inst,
            "occasions": len(occasions),
            "occasion_dates": [
                {
                    "first_admit": c[0][2].isoformat(),
                    "last_admit": c[-1][2].isoformat(),
                    "patients": len({s[1] for s in c}),
                    "settlement_ids": sorted(s[0] for s in c),
                }
                for c in occasions
            ],
            "diagnoses": dict(sorted(dx.items())),
            "thin_diagnosis_share": round(thin_share, 4),
            "thin_diagnoses": sorted(code for code in dx if code in thin),
            "edges": {
                "count": len(group_edges),
                "possible": possible,
                "cohesion": round(cohesion, 4),
                "min_weight": min(weights),
                "max_weight": max(weights),
                "mean_weight": round(sum(weights) / len(weights), 3),
            },
            "chance": {
                "candidate_pairs": n_pairs,
                "best_pair_p_value": float(f"{best_p:.3g}"),
                "max_expected": round(max(e.expected for e in group_edges), 4),
            },
            "method": method,
        }
        amount = sum((s[4] for s in group_stays), Decimal("0.00")).quantize(Decimal("0.01"))
        flags.append(
            Flag("group", gid, PATTERN, round(min(score, 1.0), 4), "review", amount, evidence)
        )
        members_out.extend(GroupMember(gid, p, inst) for p in members)
    return flags, members_out
