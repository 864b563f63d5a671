"""The five trace-code checks of CONTRACT.md §4, defined once.

A check is a predicate over the *code facts* of one code on one drug line: what the line
says (drug billed, split sale, units), what the code is (valid, its product's drug), what
the ledger held just before (units of the pack still outstanding from earlier full and
split sales, not released by a reversal) and what the stock says (the selling
institution's last supply-chain event for the pack at or before the sale).

The facts come from two executors, the same predicates run over both:
- batch: DuckDB computes the facts of every line of a history (``traceability.batch``);
- online: the store computes them for one settlement (``traceability.ledger``).
The predicates are written with ``&``, ``|`` and ``~`` so that they work on numpy arrays
(a batch of lines) and on plain Python booleans (one line) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt


class TracePattern(StrEnum):
    """The trace-code patterns of CONTRACT.md §4 (entity: the settlement)."""

    DUPLICATE = "duplicate_trace_code"
    SPLIT_OVERRUN = "split_sale_overrun"
    MISMATCH = "trace_code_mismatch"
    MISSING = "missing_trace_code"
    UNPURCHASED = "unpurchased_trace_code"


class StockEvent(StrEnum):
    """Supply-chain events of ``trace_events``."""

    PURCHASE = "purchase"
    RETURN = "return"


Flags = npt.NDArray[np.bool_]
"""What a check answers: one boolean per (line, code); a 0-d array for one line."""


@dataclass(frozen=True)
class CodeFacts:
    """The facts of codes on drug lines, one entry per (line, code); arrays in batch.

    ``code_valid`` is False for a line with no code at all (``has_code`` False) and for an
    invalid code. Units are smallest units (e.g. tablets). ``product_drug_code`` is the drug
    the code's product belongs to, ``""`` when the product is unknown.
    """

    has_code: Any
    code_valid: Any
    split_sale: Any
    units: Any
    pack_units: Any
    item_code: Any
    product_drug_code: Any
    prior_full_units: Any
    prior_split_units: Any
    last_stock_event: Any


def missing(f: CodeFacts) -> Flags:
    """无码不付: a drug line with no code, or with an invalid one."""
    return np.asarray(
        ~np.asarray(f.has_code, dtype=bool) | ~np.asarray(f.code_valid, dtype=bool), dtype=np.bool_
    )


def duplicate(f: CodeFacts) -> Flags:
    """A code still settled by an earlier sale is sold again (resale, 回流药, fake sale)."""
    valid = np.asarray(f.code_valid, dtype=bool)
    split = np.asarray(f.split_sale, dtype=bool)
    full_before = np.asarray(f.prior_full_units) > 0
    any_before = full_before | (np.asarray(f.prior_split_units) > 0)
    return np.asarray(valid & ((~split & any_before) | (split & full_before)), dtype=np.bool_)


def split_overrun(f: CodeFacts) -> Flags:
    """Split sales (拆零) of one pack add up to more units than the pack holds."""
    valid = np.asarray(f.code_valid, dtype=bool)
    split = np.asarray(f.split_sale, dtype=bool)
    no_full = np.asarray(f.prior_full_units) == 0
    over = np.asarray(f.prior_split_units) + np.asarray(f.units) > np.asarray(f.pack_units)
    return np.asarray(valid & split & no_full & over, dtype=np.bool_)


def mismatch(f: CodeFacts) -> Flags:
    """The code's product is not the drug billed on the line (串换)."""
    valid = np.asarray(f.code_valid, dtype=bool)
    return np.asarray(
        valid & (np.asarray(f.product_drug_code) != np.asarray(f.item_code)), dtype=np.bool_
    )


def unpurchased(f: CodeFacts) -> Flags:
    """The institution never received the pack, or sent it back before selling it (虚售)."""
    valid = np.asarray(f.code_valid, dtype=bool)
    return np.asarray(
        valid & (np.asarray(f.last_stock_event) != StockEvent.PURCHASE.value), dtype=np.bool_
    )


CHECKS: Final = {
    TracePattern.MISSING: missing,
    TracePattern.DUPLICATE: duplicate,
    TracePattern.SPLIT_OVERRUN: split_overrun,
    TracePattern.MISMATCH: mismatch,
    TracePattern.UNPURCHASED: unpurchased,
}
"""Every check, by the pattern it flags; batch and online run exactly these."""
