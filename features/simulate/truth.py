"""Truth (what was planted, and every deterministic pattern it exhibits) and labels.

The audit flags of the whole province decide the settlement-level truth: a flag on
a background or benign settlement is a broken promise and stops the simulation; a
planted settlement is recorded with every pattern the audit finds on it (and must
show at least the patterns its case intends).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.simulate.claims import ORIGIN_BENIGN, ORIGIN_PLANTED, Claims
from features.simulate.config import DAY, YEAR_DAYS, SimulationError
from features.simulate.fraud import Planted
from features.tables import DETERMINISTIC_PATTERNS

LABEL_SHARE = 0.3


@dataclass(frozen=True)
class Truth:
    flags: pd.DataFrame  # entity_type, entity_id, pattern, detail
    groups: pd.DataFrame
    benign: pd.DataFrame
    benign_groups: pd.DataFrame
    labels: pd.DataFrame  # entity_type, entity_id, pattern, label, decided_t (local seconds)


def _json(detail: dict[str, Any]) -> str:
    return json.dumps(detail, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def build_truth(
    claims: Claims,
    flags: pd.DataFrame,
    planted: Planted,
    *,
    settlement_id: Callable[[np.ndarray], list[str]],
    patient_ids: np.ndarray,
    institution_ids: np.ndarray,
    canonical_codes: Callable[[int], list[str]],
    rng: np.random.Generator,
) -> Truth:
    s = claims.s
    origin = pd.Series(s["origin"].to_numpy(), index=s["sid"].to_numpy())
    flag_origin = origin.reindex(flags["sid"].to_numpy()).to_numpy()
    wrong = flags[flag_origin != ORIGIN_PLANTED]
    if len(wrong):
        sample = wrong.head(10).to_dict("records")
        msg = (
            f"{len(wrong)} background/benign settlements break a deterministic rule, e.g. {sample}"
        )
        raise SimulationError(msg)
    found: dict[int, set[str]] = {}
    for sid, pattern in zip(flags["sid"].to_numpy(), flags["pattern"].to_numpy(), strict=True):
        found.setdefault(int(sid), set()).add(str(pattern))
    missing = {
        sid: want - found.get(sid, set())
        for sid, want in planted.intended.items()
        if want - found.get(sid, set())
    }
    if missing:
        sample = dict(list(missing.items())[:10])
        msg = f"{len(missing)} planted settlements lack their intended pattern, e.g. {sample}"
        raise SimulationError(msg)

    t_of = pd.Series(s["t"].to_numpy(), index=s["sid"].to_numpy())
    rows: list[tuple[str, str, str, str, int]] = []  # + event time for labels
    for sid in sorted(found):
        sid_str = settlement_id(np.array([sid]))[0]
        codes = canonical_codes(sid)
        for pattern in sorted(found[sid]):
            detail: dict[str, Any] = {"scenario": planted.scenario[sid]}
            if codes:
                detail["codes"] = codes
            rows.append(("settlement", sid_str, pattern, _json(detail), int(t_of[sid])))

    planted_s = s[s["origin"].to_numpy() == ORIGIN_PLANTED]
    last_t_patient = planted_s.groupby("patient")["t"].max()
    last_t_inst = planted_s.groupby("inst")["t"].max()
    group_last: dict[str, int] = {}
    for gid, p, _i in planted.groups:
        group_last[gid] = max(group_last.get(gid, 0), int(last_t_patient.get(p, 0)))
    for e in planted.entities:
        if e.entity_type == "settlement":
            eid, when = settlement_id(np.array([e.ref]))[0], int(t_of[e.ref])
        elif e.entity_type == "patient":
            eid, when = str(patient_ids[int(e.ref)]), int(last_t_patient.get(int(e.ref), 0))
        elif e.entity_type == "institution":
            eid = str(institution_ids[int(e.ref)])
            when = int(last_t_inst.get(int(e.ref), rng.integers(180, YEAR_DAYS) * DAY))
        else:
            eid, when = str(e.ref), group_last[str(e.ref)]
        detail = dict(e.detail)
        if "institution" in detail:
            detail["institution"] = str(institution_ids[int(detail["institution"])])
        rows.append((e.entity_type, eid, e.pattern, _json(detail), when))
    truth = pd.DataFrame(rows, columns=["entity_type", "entity_id", "pattern", "detail", "when"])
    truth = truth.sort_values(["entity_type", "entity_id", "pattern"], kind="stable").reset_index(
        drop=True
    )

    def group_frame(members: list[tuple[str, int, int]]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "group_id": [g for g, _, _ in members],
                "patient_id": [str(patient_ids[p]) for _, p, _ in members],
                "institution_id": [str(institution_ids[i]) for _, _, i in members],
            },
            columns=["group_id", "patient_id", "institution_id"],
        )

    benign_rows = []
    benign_when = []
    benign_last = s[s["origin"].to_numpy() == ORIGIN_BENIGN].groupby("patient")["t"].max()
    bg_group_last: dict[str, int] = {}
    for gid, p, _i in planted.benign_groups:
        bg_group_last[gid] = max(bg_group_last.get(gid, 0), int(benign_last[p]))
    for b in planted.benign:
        if b.entity_type == "settlement":
            eid, when = settlement_id(np.array([b.ref]))[0], int(t_of[b.ref])
        elif b.entity_type == "institution":
            eid, when = str(institution_ids[int(b.ref)]), int(rng.integers(180, YEAR_DAYS)) * DAY
        else:
            eid, when = str(b.ref), bg_group_last[str(b.ref)]
        benign_rows.append((b.entity_type, eid, b.kind, b.lookalike_of))
        benign_when.append(when)
    benign = pd.DataFrame(benign_rows, columns=["entity_type", "entity_id", "kind", "lookalike_of"])

    labels = _labels(truth, benign, np.array(benign_when, np.int64), s, settlement_id, rng)
    return Truth(
        flags=truth.drop(columns="when"),
        groups=group_frame(planted.groups),
        benign=benign,
        benign_groups=group_frame(planted.benign_groups),
        labels=labels,
    )


def _labels(
    truth: pd.DataFrame,
    benign: pd.DataFrame,
    benign_when: np.ndarray,
    s: pd.DataFrame,
    settlement_id: Callable[[np.ndarray], list[str]],
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Inspection verdicts: ~30% of the truth entities confirmed (one row per pattern),
    half of the benign look-alikes and some random background settlements cleared.
    Verdicts arrive 20-90 days after the event (so some fall in 2026)."""
    entities = truth[["entity_type", "entity_id"]].drop_duplicates().reset_index(drop=True)
    chosen = entities[rng.random(len(entities)) < LABEL_SHARE]
    pos = truth.merge(chosen, on=["entity_type", "entity_id"])
    last = pos.groupby(["entity_type", "entity_id"])["when"].transform("max").to_numpy()
    lag = rng.integers(20 * DAY, 90 * DAY, len(pos))
    positives = pos.assign(label=1, decided_t=last + lag)[
        ["entity_type", "entity_id", "pattern", "label", "decided_t"]
    ]

    pick = rng.random(len(benign)) < 0.5
    cleared_benign = (
        benign[pick]
        .rename(columns={"lookalike_of": "pattern"})
        .assign(
            label=0, decided_t=benign_when[pick] + rng.integers(20 * DAY, 90 * DAY, int(pick.sum()))
        )[["entity_type", "entity_id", "pattern", "label", "decided_t"]]
    )

    bg = s[s["origin"].to_numpy() == 0]
    n = min(len(bg), max(10, len(positives)))
    rows = np.sort(rng.choice(len(bg), n, replace=False))
    cleared_bg = pd.DataFrame(
        {
            "entity_type": "settlement",
            "entity_id": settlement_id(bg["sid"].to_numpy()[rows]),
            "pattern": np.array(DETERMINISTIC_PATTERNS)[
                rng.integers(0, len(DETERMINISTIC_PATTERNS), n)
            ],
            "label": 0,
            "decided_t": bg["t"].to_numpy()[rows] + rng.integers(20 * DAY, 90 * DAY, n),
        }
    )
    labels = pd.concat([positives, cleared_benign, cleared_bg], ignore_index=True)
    return labels.sort_values(
        ["decided_t", "entity_type", "entity_id", "pattern"], kind="stable"
    ).reset_index(drop=True)
