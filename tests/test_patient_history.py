"""Each patient's billed history in the store: what the look-back rules read online."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import Engine

from features.store import (
    HistoryLine,
    earlier_stays,
    record_settlement,
    reverse_settlement,
    window_quantities,
)

CST = timezone(timedelta(hours=8))
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=CST)
HBA1C = "250301015"


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def test_window_quantities_count_the_half_open_window_and_skip_reversals(store: Engine) -> None:
    with store.begin() as conn:
        for n, (sid, at) in enumerate([("S1", day(0)), ("S2", day(30)), ("S3", day(89))]):
            record_settlement(
                conn,
                settlement_id=sid,
                patient_id="U1",
                institution_id=f"H{n}",
                settled_at=at,
                lines=[HistoryLine(1, "service", HBA1C, Decimal(1))],
            )
        reverse_settlement(conn, settlement_id="S2", reversed_at=day(31))
    with store.connect() as conn:

        def count(since: datetime, until: datetime) -> Decimal:
            got = window_quantities(
                conn,
                patient_id="U1",
                item_type="service",
                item_codes=[HBA1C],
                since=since,
                until=until,
            )
            return got.get(HBA1C, Decimal(0))

        assert count(day(89) - timedelta(days=90), day(89)) == 2  # S1, S3 (S2 reversed)
        assert count(day(30) - timedelta(days=90), day(30)) == 2  # S2 counts before its reversal
        assert count(day(0), day(89)) == 1  # (since, until]: S1 at `since` is out
        for patient, item_type in (("U2", "service"), ("U1", "drug")):  # nobody's, another type
            got = window_quantities(
                conn,
                patient_id=patient,
                item_type=item_type,
                item_codes=[HBA1C],
                since=day(-1),
                until=day(100),
            )
            assert got == {}


def test_earlier_stays_are_the_patients_stays_before_a_time(store: Engine) -> None:
    with store.begin() as conn:
        record_settlement(
            conn, settlement_id="I1", patient_id="U1", institution_id="H1",
            settled_at=day(5), lines=[], admit_date=date(2025, 3, 1),
            discharge_date=date(2025, 3, 6), diagnosis_code="J18.9",
        )  # fmt: skip
        record_settlement(
            conn, settlement_id="I2", patient_id="U1", institution_id="H1",
            settled_at=day(20), lines=[], admit_date=date(2025, 3, 15),
            discharge_date=date(2025, 3, 21), diagnosis_code="J18.0",
        )  # fmt: skip
    with store.connect() as conn:
        stays = earlier_stays(conn, patient_id="U1", before=day(20))
    assert [(s.settlement_id, s.discharge_date, s.diagnosis_code) for s in stays] == [
        ("I1", date(2025, 3, 6), "J18.9")
    ]
