"""Patients: gender, birth dates from infants to the elderly, home region and locality."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.simulate.catalog import REGIONS
from features.simulate.config import ScaleConfig


@dataclass(frozen=True)
class Population:
    table: pd.DataFrame
    """patient_id, gender, birth_day, region_code, locality_code (+ internal columns)."""
    gender: np.ndarray  # 1 M, 2 F
    birth_day: np.ndarray  # days since 2025-01-01 (negative)
    region: np.ndarray
    prefecture: np.ndarray
    locality: np.ndarray  # index into `localities`
    localities: np.ndarray  # 12-digit codes
    diabetic: np.ndarray
    activity: np.ndarray  # relative visit rate

    def __len__(self) -> int:
        return len(self.table)


_AGE_BANDS = ((0, 6, 0.07), (6, 15, 0.08), (15, 45, 0.36), (45, 65, 0.27), (65, 95, 0.22))


def build_population(cfg: ScaleConfig, rng: np.random.Generator) -> Population:
    n = cfg.n_patients
    gender = rng.integers(1, 3, n).astype(np.int8)
    band = rng.choice(len(_AGE_BANDS), size=n, p=[b[2] for b in _AGE_BANDS])
    lo = np.array([b[0] for b in _AGE_BANDS])[band]
    hi = np.array([b[1] for b in _AGE_BANDS])[band]
    age_days = ((lo + rng.random(n) * (hi - lo)) * 365.25).astype(np.int64)
    birth_day = -1 - age_days  # everyone is born before the period starts

    region_w = rng.uniform(0.6, 1.4, cfg.n_regions)
    region = rng.choice(cfg.n_regions, size=n, p=region_w / region_w.sum())
    prefecture = np.array([int(REGIONS[r][0][:4]) for r in range(cfg.n_regions)])[region]

    # localities: streets (街道/乡镇) x communities (社区/村) nested under the region code
    loc_codes: list[str] = []
    loc_start = np.zeros(cfg.n_regions + 1, np.int64)
    for r in range(cfg.n_regions):
        for street in range(1, int(rng.integers(4, 9)) + 1):
            for community in range(1, int(rng.integers(4, 13)) + 1):
                offset = 200 if community % 3 == 0 else 0  # 2xx: villages
                loc_codes.append(f"{REGIONS[r][0]}{street:03d}{community + offset:03d}")
        loc_start[r + 1] = len(loc_codes)
    localities = np.array(loc_codes, dtype=object)
    n_loc = np.diff(loc_start)
    # skewed locality sizes: the first communities of a region are the big ones
    u = rng.random(n) ** 1.6
    locality = loc_start[region] + np.minimum(
        (u * n_loc[region]).astype(np.int64), n_loc[region] - 1
    )

    age_years = age_days / 365.25
    diabetic = rng.random(n) < np.where(age_years >= 45, 0.14, np.where(age_years >= 25, 0.03, 0.0))
    activity = (
        np.where(
            age_years >= 65, 2.2, np.where(age_years >= 45, 1.4, np.where(age_years < 6, 1.3, 0.8))
        )
        * np.where(diabetic, 1.5, 1.0)
        * rng.lognormal(0.0, 0.6, n)
    )

    table = pd.DataFrame(
        {
            "patient_id": [f"P{i:09d}" for i in range(1, n + 1)],
            "gender": np.where(gender == 1, "M", "F"),
            "birth_day": birth_day,
            "region_code": np.array([REGIONS[r][0] for r in range(cfg.n_regions)], dtype=object)[
                region
            ],
            "locality_code": localities[locality],
        }
    )
    return Population(
        table=table,
        gender=gender,
        birth_day=birth_day,
        region=region,
        prefecture=prefecture,
        locality=locality,
        localities=localities,
        diabetic=diabetic,
        activity=activity,
    )
