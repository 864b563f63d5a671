"""Scales, the simulated period and the small numeric helpers every module shares.

Internal time is an int64 count of seconds since 2025-01-01 00:00 Asia/Shanghai
("local seconds"); Shanghai has had no daylight saving since 1991, so a local
second maps to a UTC instant by a fixed 8-hour shift. Days are local days since
2025-01-01 (day 0). Money is int64 cents until it is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1
TIMEZONE = "Asia/Shanghai"
PERIOD_START = "2025-01-01"
PERIOD_END = "2025-12-31"

DAY = 86_400
HOUR = 3_600
YEAR_DAYS = 365
YEAR_END = YEAR_DAYS * DAY  # first second after the period
T0_UTC = 1_735_660_800  # 2025-01-01T00:00:00+08:00 as a Unix time
EPOCH_DAY0 = 20_089  # 2025-01-01 as days since 1970-01-01 (date32)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class SimulationError(RuntimeError):
    """The simulator could not keep one of its promises (a bug, or a province too small)."""


@dataclass(frozen=True)
class ScaleConfig:
    """How big the province is and how many cases of each kind are planted."""

    name: str
    n_regions: int
    n_patients: int
    n_settlements: int
    """Target number of settlements (background + planted), within a few percent."""
    hospitals: tuple[int, int, int]
    """Hospitals per region of levels 1, 2 and 3."""
    primary_care: int
    clinics: int
    pharmacies: int
    doctors_scale: float
    cases: int
    """Planted cases per settlement pattern."""
    rings: int
    """回流药 rings (each: one resale hub, several hoarders)."""
    group_admissions: int
    anomalous_institutions: int
    benign: int
    """Benign look-alikes of each kind."""
    volume_outliers: int


SCALES: dict[str, ScaleConfig] = {
    "small": ScaleConfig(
        name="small",
        n_regions=4,
        n_patients=6_000,
        n_settlements=20_000,
        hospitals=(1, 1, 1),
        primary_care=2,
        clinics=3,
        pharmacies=8,
        doctors_scale=0.3,
        cases=16,
        rings=3,
        group_admissions=4,
        anomalous_institutions=3,
        benign=4,
        volume_outliers=1,
    ),
    "medium": ScaleConfig(
        name="medium",
        n_regions=6,
        n_patients=80_000,
        n_settlements=300_000,
        hospitals=(2, 2, 1),
        primary_care=4,
        clinics=6,
        pharmacies=20,
        doctors_scale=1.0,
        cases=60,
        rings=8,
        group_admissions=12,
        anomalous_institutions=6,
        benign=15,
        volume_outliers=1,
    ),
    "large": ScaleConfig(
        name="large",
        n_regions=10,
        n_patients=700_000,
        n_settlements=3_000_000,
        hospitals=(4, 3, 2),
        primary_care=8,
        clinics=12,
        pharmacies=50,
        doctors_scale=2.0,
        cases=200,
        rings=25,
        group_admissions=40,
        anomalous_institutions=12,
        benign=40,
        volume_outliers=2,
    ),
}


def mix64(values: np.ndarray | int, salt: int = 0) -> np.ndarray:
    """SplitMix64 finaliser: a fast, well-spread hash of non-negative integers."""
    x = np.asarray(values).astype(np.uint64) + np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x & _MASK64


def unit_hash(values: np.ndarray | int, salt: int = 0) -> np.ndarray:
    """A deterministic pseudo-uniform number in [0, 1) per value."""
    return (mix64(values, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def unique_times(t: np.ndarray) -> np.ndarray:
    """Shift colliding seconds forward (order-preserving) so that no two are equal."""
    order = np.argsort(t, kind="stable")
    sorted_t = t[order]
    idx = np.arange(len(t), dtype=np.int64)
    bumped = np.maximum.accumulate(sorted_t - idx) + idx
    out = np.empty_like(t)
    out[order] = bumped
    return out


_AGE_TABLE_START = -45_000  # days before 2025-01-01 covered by the calendar lookup
_AGE_TABLE_END = 2 * 366


def _calendar() -> tuple[np.ndarray, np.ndarray]:
    d = (np.arange(_AGE_TABLE_START, _AGE_TABLE_END) + EPOCH_DAY0).astype("datetime64[D]")
    year = d.astype("datetime64[Y]").astype(np.int64) + 1970
    month = d.astype("datetime64[M]").astype(np.int64) % 12 + 1
    day = (d - d.astype("datetime64[M]")).astype(np.int64) + 1
    return year, month * 100 + day


_YEAR, _MONTH_DAY = _calendar()


def age_on(birth_day: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Whole years of age on local day `day`; both are days since 2025-01-01."""
    b = np.asarray(birth_day, np.int64) - _AGE_TABLE_START
    d = np.asarray(day, np.int64) - _AGE_TABLE_START
    return _YEAR[d] - _YEAR[b] - (_MONTH_DAY[d] < _MONTH_DAY[b])
