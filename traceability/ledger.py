"""The code ledger and the stock, in the store, and the code checks for one settlement.

Its tables are in ``traceability.store``:
- ``ledger_codes``: one row per canonical code with its outstanding units (full-pack sales
  and split sales, not released). It is the lock: a settlement that touches a code holds
  its row until the settlement's decision commits, so two settlements racing for one pack
  on two workers serialise on it and the second sees the first's units;
- ``ledger_entries``: which settlement settled which code, how many units, and when a
  reversal released it;
- ``stock_events``: the supply-chain events (``purchase``, ``return``) by institution and code.

``settle_codes`` reads the facts of one settlement's codes under those locks, runs the
predicates of ``traceability.checks`` (the same ones batch runs) and, unless told the
settlement is rejected, consumes the codes, all inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from traceability.checks import CHECKS, CodeFacts, StockEvent, TracePattern
from traceability.codes import InvalidTraceCode, TraceCode, try_parse_trace_code
from traceability.store import (
    DIALECTS,
    MergedRead,
    dialect_insert,
    drugs,
    ledger_codes,
    ledger_entries,
    many_rows,
    one_of,
    products,
    stock_events,
)


@dataclass(frozen=True)
class DrugLine:
    """A drug line of a settlement as the code checks see it."""

    line_no: int
    item_code: str
    quantity: Decimal
    amount: Decimal
    split_sale: bool
    trace_codes: tuple[str, ...]


@dataclass(frozen=True)
class CodeCheckHit:
    """A check that fired on one line of the settlement being scored (its rule, action and
    message are the rule base's: ``rules``)."""

    pattern: TracePattern
    line_no: int
    code: str
    earlier_settlements: tuple[str, ...] = ()
    reason: str = ""
    """Why a code is invalid, for a missing-code hit on a bad code."""


@dataclass(frozen=True)
class CodeCheck:
    """The code checks of one settlement, and how to consume its codes if it is paid."""

    hits: list[CodeCheckHit]
    consume: Callable[[], None]


@dataclass(frozen=True)
class _Sale:
    line_no: int
    position: int
    canonical: str
    units: Decimal
    split_sale: bool


def _units(line: DrugLine, pack_units: int | None) -> Decimal:
    if line.split_sale:
        return Decimal(line.quantity) / len(line.trace_codes)
    return Decimal(pack_units or 0)


# The statements of the hot path, built once: a settlement only binds its values.
_FACTS = MergedRead(
    lambda dialect: {
        "product": select(products.c.product_code, products.c.drug_code).where(
            one_of(products.c.product_code, "products", dialect)
        ),
        "pack": select(drugs.c.drug_code, drugs.c.pack_units).where(
            one_of(drugs.c.drug_code, "drugs", dialect)
        ),
        "own": select(
            ledger_entries.c.line_no,
            ledger_entries.c.position,
            ledger_entries.c.canonical_code,
            ledger_entries.c.units,
            ledger_entries.c.split_sale,
        ).where(
            and_(
                ledger_entries.c.settlement_id == bindparam("settlement"),
                ledger_entries.c.released_at.is_(None),
            )
        ),
        "stock": select(
            stock_events.c.canonical_code,
            stock_events.c.event_type,
            stock_events.c.event_at,
            stock_events.c.id,
        ).where(
            and_(
                one_of(stock_events.c.canonical_code, "codes", dialect),
                stock_events.c.institution_id == bindparam("institution"),
                stock_events.c.event_at <= bindparam("at"),
            )
        ),
    }
)
"""The facts of one settlement's codes that no lock guards, in one statement: each code's
product and the drug it is (``product``), the billed drugs' pack sizes (``pack``), the
codes this settlement already holds (``own``: loaded with its history, say) and the
institution's supply-chain events of the codes up to the sale (``stock``)."""


def _lock_statement(dialect: str) -> Any:
    """Create the missing ledger rows and lock them all, answering their balances: one
    ``INSERT … ON CONFLICT DO UPDATE … RETURNING``. The no-op update of an existing row
    takes its row lock (PostgreSQL waits for a concurrent holder, then answers the row as
    that holder committed it), so the rows are created, locked and read in one round trip,
    in the order given (code order: no deadlocks)."""
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(ledger_codes)
    return statement.on_conflict_do_update(
        index_elements=[ledger_codes.c.canonical_code],
        set_={"full_units": ledger_codes.c.full_units},
    ).returning(
        ledger_codes.c.canonical_code, ledger_codes.c.full_units, ledger_codes.c.split_units
    )


def _balance_statement(dialect: str) -> Any:
    """Store codes' new outstanding units (their rows exist and are locked): one
    ``INSERT … ON CONFLICT DO UPDATE`` for all the rows (``many_rows``)."""
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(ledger_codes)
    return many_rows(
        statement.on_conflict_do_update(
            index_elements=[ledger_codes.c.canonical_code],
            set_={
                "full_units": statement.excluded.full_units,
                "split_units": statement.excluded.split_units,
            },
        ),
        ledger_codes.c.canonical_code,
    )[dialect]


_LOCK = {d: _lock_statement(d) for d in DIALECTS}
_BALANCES = {d: _balance_statement(d) for d in DIALECTS}
_NEW_ENTRIES = many_rows(insert(ledger_entries), ledger_entries.c.position)
_HOLDERS = (
    select(ledger_entries.c.settlement_id)
    .where(
        and_(
            ledger_entries.c.canonical_code == bindparam("code"),
            ledger_entries.c.released_at.is_(None),
        )
    )
    .distinct()
)
_OWN_ENTRIES = select(ledger_entries).where(
    and_(
        ledger_entries.c.settlement_id == bindparam("settlement"),
        ledger_entries.c.released_at.is_(None),
    )
)


def _lock_codes(conn: Connection, canonicals: Sequence[str]) -> dict[str, tuple[Decimal, Decimal]]:
    """Create missing ledger rows and lock them all, in code order (no deadlocks), and
    answer their balances.

    On PostgreSQL the upsert's row locks hold the rows; on SQLite the write transaction
    (``BEGIN IMMEDIATE``) already serialises writers.
    """
    if not canonicals:
        return {}
    rows = conn.execute(
        _LOCK[conn.dialect.name],
        [{"canonical_code": c, "full_units": 0, "split_units": 0} for c in sorted(canonicals)],
    )
    return {r.canonical_code: (Decimal(r.full_units), Decimal(r.split_units)) for r in rows}


def check_codes(
    conn: Connection,
    *,
    settlement_id: str,
    institution_id: str,
    settled_at: datetime,
    lines: Iterable[DrugLine],
) -> CodeCheck:
    """Check one settlement's drug lines against the ledger and the stock, in ``conn``'s
    transaction; ``consume()`` on the answer settles the codes once the settlement is
    decided (a rejected one consumes nothing).

    The codes stay locked until the caller's transaction ends, so the caller stores its
    decision in the same transaction and commits once.
    """
    lines = list(lines)
    if not lines:
        return CodeCheck([], lambda: None)
    parsed: dict[tuple[int, int], TraceCode | InvalidTraceCode] = {
        (line.line_no, i): try_parse_trace_code(raw)
        for line in lines
        for i, raw in enumerate(line.trace_codes)
    }
    canonicals = sorted({p.canonical for p in parsed.values() if isinstance(p, TraceCode)})
    product_codes = sorted({p.product_code for p in parsed.values() if isinstance(p, TraceCode)})
    known = _FACTS.read(
        conn,
        {
            "products": product_codes,
            "drugs": sorted({line.item_code for line in lines}),
            "settlement": settlement_id,
            "codes": canonicals,
            "institution": institution_id,
            "at": settled_at,
        },
    )
    product_drugs = {r.product_code: r.drug_code for r in known["product"]}
    packs: dict[str, int] = {r.drug_code: r.pack_units for r in known["pack"]}
    last_events = {  # each code's last event at or before the sale (ties: the later one)
        r.canonical_code: r.event_type
        for r in sorted(known["stock"], key=lambda r: (r.event_at, r.id))
    }
    locked = _lock_codes(conn, canonicals)
    # A settlement already in the ledger (loaded with its history, say) is judged without
    # its own units, and consuming again adds nothing: it holds what it held.
    held = {(e.line_no, e.position): e for e in known["own"]}
    balances = dict(locked)
    for e in held.values():
        _add(balances, e.canonical_code, -Decimal(e.units), split_sale=e.split_sale)

    hits: list[CodeCheckHit] = []
    sales: list[_Sale] = []
    for line in sorted(lines, key=lambda line: line.line_no):
        pack_units = packs.get(line.item_code)
        codes = line.trace_codes or ("",)
        for position, raw in enumerate(codes):
            code = parsed.get((line.line_no, position)) if line.trace_codes else None
            valid = isinstance(code, TraceCode)
            canonical = code.canonical if isinstance(code, TraceCode) else ""
            full, split = balances.get(canonical, (Decimal(0), Decimal(0)))
            units = _units(line, pack_units) if valid else Decimal(0)
            product_drug = (
                product_drugs.get(code.product_code, "") if isinstance(code, TraceCode) else ""
            )
            facts = CodeFacts(
                has_code=bool(line.trace_codes),
                code_valid=valid,
                split_sale=line.split_sale,
                units=units,
                pack_units=pack_units or 0,
                item_code=line.item_code,
                product_drug_code=product_drug,
                prior_full_units=full,
                prior_split_units=split,
                last_stock_event=last_events.get(canonical, ""),
            )
            for pattern, check in CHECKS.items():
                if bool(check(facts)):
                    reason = code.reason if isinstance(code, InvalidTraceCode) else ""
                    holders = (
                        _holders(conn, canonical, settlement_id, sales)
                        if pattern in (TracePattern.DUPLICATE, TracePattern.SPLIT_OVERRUN)
                        else ()
                    )
                    hits.append(
                        CodeCheckHit(pattern, line.line_no, canonical or raw, holders, reason)
                    )
            if valid:  # later lines of the same settlement see this one's units
                _add(balances, canonical, units, split_sale=line.split_sale)
                sales.append(_Sale(line.line_no, position, canonical, units, line.split_sale))

    def consume() -> None:
        new = [sale for sale in sales if (sale.line_no, sale.position) not in held]
        for sale in new:
            _add(locked, sale.canonical, sale.units, split_sale=sale.split_sale)
        _consume(conn, settlement_id, settled_at, new, locked)

    return CodeCheck(hits, consume)


def settle_codes(
    conn: Connection,
    *,
    settlement_id: str,
    institution_id: str,
    settled_at: datetime,
    lines: Iterable[DrugLine],
    consume: bool | None = None,
) -> list[CodeCheckHit]:
    """``check_codes``, then consume the codes unless a check fired (or ``consume`` says)."""
    checked = check_codes(
        conn,
        settlement_id=settlement_id,
        institution_id=institution_id,
        settled_at=settled_at,
        lines=lines,
    )
    if consume if consume is not None else not checked.hits:
        checked.consume()
    return checked.hits


def _add(
    balances: dict[str, tuple[Decimal, Decimal]], code: str, units: Decimal, *, split_sale: bool
) -> None:
    full, split = balances.get(code, (Decimal(0), Decimal(0)))
    balances[code] = (full, split + units) if split_sale else (full + units, split)


def _holders(
    conn: Connection, canonical: str, settlement_id: str, sales: Sequence[_Sale]
) -> tuple[str, ...]:
    """The settlements that hold ``canonical`` now: the evidence of a duplicate."""
    held = conn.execute(_HOLDERS, {"code": canonical}).scalars()
    own = (settlement_id,) if any(s.canonical == canonical for s in sales) else ()
    return tuple(sorted(held)) + own


def _consume(
    conn: Connection,
    settlement_id: str,
    settled_at: datetime,
    sales: Sequence[_Sale],
    balances: dict[str, tuple[Decimal, Decimal]],
) -> None:
    if not sales:
        return
    conn.execute(
        _NEW_ENTRIES[conn.dialect.name],
        [
            {
                "settlement_id": settlement_id,
                "line_no": s.line_no,
                "position": s.position,
                "canonical_code": s.canonical,
                "units": s.units,
                "split_sale": s.split_sale,
                "settled_at": settled_at,
                "released_at": None,
            }
            for s in sales
        ],
    )
    _write_balances(conn, {s.canonical: balances[s.canonical] for s in sales})


def _write_balances(conn: Connection, balances: dict[str, tuple[Decimal, Decimal]]) -> None:
    """Store the codes' new outstanding units, in one statement."""
    conn.execute(
        _BALANCES[conn.dialect.name],
        [
            {"canonical_code": code, "full_units": full, "split_units": split}
            for code, (full, split) in sorted(balances.items())
        ],
    )


def release_codes(conn: Connection, *, settlement_id: str, released_at: datetime) -> int:
    """A reversal (退费): release the settlement's codes. Returns how many were released;
    releasing again releases nothing."""
    entries = list(conn.execute(_OWN_ENTRIES, {"settlement": settlement_id}))
    if not entries:
        return 0
    balances = _lock_codes(conn, sorted({e.canonical_code for e in entries}))
    for e in entries:
        _add(balances, e.canonical_code, -Decimal(e.units), split_sale=e.split_sale)
    _write_balances(conn, balances)
    conn.execute(
        update(ledger_entries)
        .where(
            and_(
                ledger_entries.c.settlement_id == settlement_id,
                ledger_entries.c.released_at.is_(None),
            )
        )
        .values(released_at=released_at)
    )
    return len(entries)


@dataclass(frozen=True)
class StockEventIn:
    trace_code: str
    event_type: StockEvent
    institution_id: str
    event_at: datetime


def record_stock_events(conn: Connection, events: Sequence[StockEventIn]) -> int:
    """Record supply-chain events; one already recorded is not recorded twice. Every code
    must be valid (the caller validates first). Returns how many were new."""
    rows = [
        {
            "institution_id": e.institution_id,
            "canonical_code": _canonical_or_raise(e.trace_code),
            "event_type": e.event_type.value,
            "event_at": e.event_at,
        }
        for e in events
    ]
    if not rows:
        return 0
    result = conn.execute(
        dialect_insert(conn, stock_events).on_conflict_do_nothing().returning(stock_events.c.id),
        rows,
    )
    return len(result.fetchall())


def _canonical_or_raise(raw: str) -> str:
    parsed = try_parse_trace_code(raw)
    if isinstance(parsed, InvalidTraceCode):
        raise parsed
    return parsed.canonical
