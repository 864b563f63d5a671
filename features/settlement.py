"""The settlement being scored, as the online executors see it (rules, features, models).

The scorer builds one :class:`SettlementView` from the request (CONTRACT.md §6); the rule
base, the online feature view and the model read it. Money is ``Decimal``; times carry
their zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal


@dataclass(frozen=True)
class LineView:
    """One settlement line (结算明细)."""

    line_no: int
    item_type: str
    item_code: str
    quantity: Decimal
    amount: Decimal
    unit_price: Decimal | None = None
    trace_codes: tuple[str, ...] = ()
    split_sale: bool = False


@dataclass(frozen=True)
class SettlementView:
    """One settlement (结算) with its patient's gender and birth date and its lines."""

    settlement_id: str
    institution_id: str
    patient_id: str
    patient_gender: str
    birth_date: date
    settled_at: datetime
    visit_type: str
    lines: tuple[LineView, ...]
    admit_date: date | None = None
    discharge_date: date | None = None
    diagnosis_code: str | None = None
    doctor_id: str | None = None
    total_amount: Decimal | None = None
    fund_paid: Decimal | None = None
