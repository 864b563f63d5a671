"""The watch list: what the batch analyses found about patients and institutions, kept in
the store for the scorer to look up on every settlement.

``fundguard screen --store`` replaces it with the entity flags of the screening: the
members of each ``group_admission`` group (for admissions at the group's institution),
``drug_hoarding`` patients (for settlements of the drug they amass), ``resale_hub``
institutions (for their sales of coded drugs) and ``anomalous_institution`` (reported on
every settlement of the institution, deciding nothing). A settlement the watch list
applies to gets a hit (rule id ``WATCH``): ``review`` when the flag's score reaches
``watch_review_threshold`` (settings), else ``info``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, and_, bindparam, delete, insert, or_, select

from features.flags import Flag, GroupMember
from features.settlement import SettlementView
from rules.base import Action
from serve.schemas import HitOut
from serve.tables import watchlist

WATCH_RULE_ID: Final = "WATCH"
WATCHED_PATTERNS: Final = (
    "group_admission",
    "drug_hoarding",
    "resale_hub",
    "anomalous_institution",
)

_MESSAGES: Final = {
    "group_admission": "患者属于结伴住院团伙 {scope} (group admission)",
    "drug_hoarding": "患者囤积高值药品 {scope} (drug hoarding)",
    "resale_hub": "机构收购回流药 (resale hub)",
    "anomalous_institution": "机构偏离同类机构 (anomalous institution)",
}


@dataclass(frozen=True)
class Watched:
    """One watch-list entry: an entity, a pattern, the scope it applies to (the group's
    institution, the hoarded drug; empty for every settlement) and the flag's score."""

    entity_type: str
    entity_id: str
    pattern: str
    scope: str
    score: float
    flag_id: str
    evidence: dict[str, object]


def entries(flags: Iterable[Flag], members: Iterable[GroupMember]) -> list[Watched]:
    """The watch list of a screening's flags (entity flags only) and group members."""
    flags = list(flags)
    by_group = {f.entity_id: f for f in flags if f.pattern == "group_admission"}
    found: dict[tuple[str, str, str, str], Watched] = {}

    def keep(w: Watched) -> None:
        key = (w.entity_type, w.entity_id, w.pattern, w.scope)
        if key not in found or found[key].score < w.score:
            found[key] = w

    for m in members:
        group = by_group.get(m.group_id)
        if group is not None:
            keep(Watched("patient", m.patient_id, "group_admission", m.institution_id,
                         group.score, group.flag_id, {"group_id": m.group_id}))  # fmt: skip
    for f in flags:
        if f.pattern == "drug_hoarding":
            drug = str(f.evidence.get("drug_code", ""))
            keep(Watched("patient", f.entity_id, f.pattern, drug, f.score, f.flag_id, {}))
        elif f.pattern in ("resale_hub", "anomalous_institution"):
            keep(Watched("institution", f.entity_id, f.pattern, "", f.score, f.flag_id, {}))
    return sorted(found.values(), key=lambda w: (w.entity_type, w.entity_id, w.pattern, w.scope))


def replace(conn: Connection, watched: Sequence[Watched]) -> int:
    """Replace the watch list with ``watched``, in the caller's transaction."""
    now = datetime.now(UTC)
    conn.execute(delete(watchlist))
    if watched:
        conn.execute(
            insert(watchlist),
            [
                {
                    "entity_type": w.entity_type,
                    "entity_id": w.entity_id,
                    "pattern": w.pattern,
                    "scope": w.scope,
                    "score": round(w.score, 4),
                    "flag_id": w.flag_id,
                    "evidence": json.dumps(w.evidence, ensure_ascii=False, sort_keys=True),
                    "screened_at": now,
                }
                for w in watched
            ],
        )
    return len(watched)


LOOKUP: Final = select(
    watchlist.c.pattern, watchlist.c.scope, watchlist.c.score, watchlist.c.flag_id
).where(
    or_(
        and_(watchlist.c.entity_type == "patient", watchlist.c.entity_id == bindparam("patient")),
        and_(
            watchlist.c.entity_type == "institution",
            watchlist.c.entity_id == bindparam("institution"),
        ),
    )
)


"""The watch-list entries of a settlement's patient and institution (binds ``patient`` and
``institution``)."""


def hits_of(rows: Iterable[Any], view: SettlementView, review_threshold: float) -> list[HitOut]:
    """The hits on ``view`` of the entries ``LOOKUP`` read (rows with ``pattern``, ``scope``,
    ``score`` and ``flag_id``): one per entry that applies to it."""
    hits = []
    for row in rows:
        if not _applies(row.pattern, row.scope, view):
            continue
        score = float(row.score)
        action = Action.REVIEW if score >= review_threshold else Action.INFO
        if row.pattern == "anomalous_institution":
            action = Action.INFO
        message = _MESSAGES[row.pattern].format(scope=row.scope)
        hits.append(
            HitOut(
                rule_id=WATCH_RULE_ID,
                pattern=row.pattern,
                action=action,
                message=f"{message}: score {score:.2f}, flag {row.flag_id}",
            )
        )
    return hits


def _applies(pattern: str, scope: str, view: SettlementView) -> bool:
    if pattern == "group_admission":
        return view.visit_type == "inpatient" and view.institution_id == scope
    if pattern == "drug_hoarding":
        return any(line.item_type == "drug" and line.item_code == scope for line in view.lines)
    if pattern == "resale_hub":
        return any(line.item_type == "drug" and line.trace_codes for line in view.lines)
    return pattern == "anomalous_institution"
