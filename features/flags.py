"""Flags (CONTRACT.md §4, §5): what every detector says about one entity, and how a
screening writes them.

Rules, code checks, anomaly detectors and graph analyses all give :class:`Flag` objects of
this one shape; groups (``group_admission``) also give one :class:`GroupMember` row per
patient. Flag ids are derived from what the flag says (pattern and entity), so screening
the same history twice gives the same ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FLAG_SCHEMA: Final = pa.schema(
    [
        ("flag_id", pa.string()),
        ("entity_type", pa.string()),
        ("entity_id", pa.string()),
        ("pattern", pa.string()),
        ("score", pa.float64()),
        ("action", pa.string()),
        ("amount_at_risk", pa.decimal128(18, 2)),
        ("evidence", pa.string()),
    ]
)
GROUP_SCHEMA: Final = pa.schema(
    [("group_id", pa.string()), ("patient_id", pa.string()), ("institution_id", pa.string())]
)


@dataclass(frozen=True)
class Flag:
    """One finding about one entity (CONTRACT.md §4 and §5)."""

    entity_type: str
    entity_id: str
    pattern: str
    score: float
    action: str
    amount_at_risk: Decimal
    evidence: dict[str, object]

    @property
    def flag_id(self) -> str:
        key = f"{self.pattern}\x1f{self.entity_type}\x1f{self.entity_id}".encode()
        return "F" + hashlib.sha256(key).hexdigest()[:20]


@dataclass(frozen=True)
class GroupMember:
    """One patient of a flagged group (``groups.parquet``)."""

    group_id: str
    patient_id: str
    institution_id: str


def write_flags(
    flags: Iterable[Flag], out_dir: Path, groups: Iterable[GroupMember] = ()
) -> tuple[Path, Path]:
    """``OUT/flags.parquet``, ``OUT/flags.csv`` and ``OUT/groups.parquet``, in a stable order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(flags, key=lambda f: (f.pattern, f.entity_type, f.entity_id))
    table = pa.table(
        {
            "flag_id": [f.flag_id for f in ordered],
            "entity_type": [f.entity_type for f in ordered],
            "entity_id": [f.entity_id for f in ordered],
            "pattern": [f.pattern for f in ordered],
            "score": [f.score for f in ordered],
            "action": [f.action for f in ordered],
            "amount_at_risk": [f.amount_at_risk for f in ordered],
            "evidence": [
                json.dumps(f.evidence, ensure_ascii=False, sort_keys=True) for f in ordered
            ],
        },
        schema=FLAG_SCHEMA,
    )
    flags_path = out_dir / "flags.parquet"
    pq.write_table(table, flags_path)
    pacsv.write_csv(table, out_dir / "flags.csv")
    members = sorted(set(groups), key=lambda m: (m.group_id, m.patient_id, m.institution_id))
    groups_path = out_dir / "groups.parquet"
    pq.write_table(
        pa.table(
            {
                "group_id": [m.group_id for m in members],
                "patient_id": [m.patient_id for m in members],
                "institution_id": [m.institution_id for m in members],
            },
            schema=GROUP_SCHEMA,
        ),
        groups_path,
    )
    return flags_path, groups_path
