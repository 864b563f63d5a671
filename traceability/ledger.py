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

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import numpy as np
from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import Select

from traceability.checks import CHECKS, CodeFacts, StockEvent, TracePattern
from traceability.codes import InvalidTraceCode, TraceCode, try_parse_trace_code
from traceability.store import (
    CODE,
    DIALECTS,
    InsertRows,
    MergedRead,
    Prepared,
    Writes,
    dialect_insert,
    drugs,
    ledger_codes,
    ledger_entries,
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
    position: int = 0
    """The code's place on its line."""


@dataclass(frozen=True)
class Sale:
    """One code of one line, as the settlement would consume it if paid."""

    line_no: int
    position: int
    canonical: str
    units: Decimal
    split_sale: bool


Balances = dict[str, tuple[Decimal, Decimal]]
"""Outstanding (full-pack, split-sale) units by canonical code."""

NO_UNITS: Final = (Decimal(0), Decimal(0))
"""The balance of a code nothing holds."""


@dataclass(frozen=True)
class ParsedLines:
    """A settlement's drug lines with their codes parsed: what the code checks read."""

    lines: tuple[DrugLine, ...]
    parsed: dict[tuple[int, int], TraceCode | InvalidTraceCode]
    """(line number, position of the code on the line) → the code."""
    canonicals: tuple[str, ...]
    """The valid codes' canonical forms, sorted (the order rows are locked in)."""

    @classmethod
    def of(cls, lines: Iterable[DrugLine]) -> ParsedLines:
        lines = tuple(sorted(lines, key=lambda line: line.line_no))
        parsed = {
            (line.line_no, i): try_parse_trace_code(raw)
            for line in lines
            for i, raw in enumerate(line.trace_codes)
        }
        canonicals = tuple(
            sorted({p.canonical for p in parsed.values() if isinstance(p, TraceCode)})
        )
        return cls(lines, parsed, canonicals)


@dataclass(frozen=True)
class LedgerFacts:
    """What the store says of a settlement's codes before it is decided."""

    last_events: dict[str, str]
    """Each code's last supply-chain event at the institution at or before the sale."""
    held: dict[tuple[int, int], Sale]
    """(line, position) → what this settlement already holds (loaded with its history)."""
    balances: Balances
    """The codes' outstanding units as read (the lock reads them again)."""


def _units(line: DrugLine, pack_units: int | None) -> Decimal:
    if line.split_sale:
        return Decimal(line.quantity) / len(line.trace_codes)
    return Decimal(pack_units or 0)


# The statements of the hot path, built once: a settlement only binds its values.


def _lock_statement(dialect: str) -> Prepared:
    """Lock the ledger rows of the codes bound as ``codes`` (sorted) and answer their
    balances.

    PostgreSQL: create the missing rows and lock them all, in one ``INSERT … SELECT …
    ON CONFLICT DO UPDATE … RETURNING`` whatever the number of codes. The no-op update of
    an existing row takes its row lock (PostgreSQL waits for a concurrent holder, then
    answers the row as that holder committed it), so the rows are created, locked and read
    in one round trip, in code order (no deadlocks).

    SQLite: the write transaction (``BEGIN IMMEDIATE``) already holds the whole database,
    so the rows are only read (a code without a row has nothing outstanding; ``consume``
    creates it)."""
    if dialect != "postgresql":
        return Prepared(
            select(
                ledger_codes.c.canonical_code, ledger_codes.c.full_units, ledger_codes.c.split_units
            ).where(one_of(ledger_codes.c.canonical_code, "codes", dialect))
        )
    statement = postgresql.insert(ledger_codes)
    return Prepared(
        statement.from_select(
            ["canonical_code", "full_units", "split_units"],
            select(
                func.unnest(bindparam("codes", type_=postgresql.ARRAY(CODE))),
                literal(0),
                literal(0),
            ),
        )
        .on_conflict_do_update(
            index_elements=[ledger_codes.c.canonical_code],
            set_={"full_units": ledger_codes.c.full_units},
        )
        .returning(
            ledger_codes.c.canonical_code, ledger_codes.c.full_units, ledger_codes.c.split_units
        )
    )


_LOCK: Final = {d: _lock_statement(d) for d in DIALECTS}
_BALANCES: Final = InsertRows(
    ledger_codes, key="canonical_code", update=("full_units", "split_units")
)
"""The codes' new outstanding units (their rows exist and are locked)."""
_NEW_ENTRIES: Final = InsertRows(ledger_entries)
_HOLDERS: Final = (
    select(ledger_entries.c.settlement_id)
    .where(
        and_(
            ledger_entries.c.canonical_code == bindparam("code"),
            ledger_entries.c.released_at.is_(None),
        )
    )
    .distinct()
)
_OWN_ENTRIES: Final = select(ledger_entries).where(
    and_(
        ledger_entries.c.settlement_id == bindparam("settlement"),
        ledger_entries.c.released_at.is_(None),
    )
)
_CATALOG: Final = MergedRead(
    lambda dialect: {
        "product": select(products.c.product_code, products.c.drug_code).where(
            one_of(products.c.product_code, "products", dialect)
        ),
        "pack": select(drugs.c.drug_code, drugs.c.pack_units).where(
            one_of(drugs.c.drug_code, "drugs", dialect)
        ),
    }
)
"""The catalog facts of the code checks, for :func:`check_codes` (the scorer holds the
catalog in memory instead: ``features.knowledge``)."""


def ledger_parts(dialect: str) -> dict[str, Select[Any]]:
    """The reads of the code checks, as parts of one ``MergedRead`` (parameters:
    ``codes``, ``institution``, ``at``, ``settlement``; :func:`ledger_params`)."""
    return {
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
        "balance": select(
            ledger_codes.c.canonical_code, ledger_codes.c.full_units, ledger_codes.c.split_units
        ).where(one_of(ledger_codes.c.canonical_code, "codes", dialect)),
    }


def ledger_params(
    *, settlement_id: str, institution_id: str, settled_at: datetime, parsed: ParsedLines
) -> dict[str, Any]:
    return {
        "codes": list(parsed.canonicals),
        "institution": institution_id,
        "at": settled_at,
        "settlement": settlement_id,
    }


def ledger_facts(rows: dict[str, list[Any]]) -> LedgerFacts:
    """The facts from the rows of :func:`ledger_parts`."""
    last_events = {  # each code's last event at or before the sale (ties: the later one)
        r.canonical_code: r.event_type
        for r in sorted(rows["stock"], key=lambda r: (r.event_at, r.id))
    }
    held = {
        (e.line_no, e.position): Sale(
            e.line_no, e.position, e.canonical_code, Decimal(e.units), bool(e.split_sale)
        )
        for e in rows["own"]
    }
    balances = {
        r.canonical_code: (Decimal(r.full_units), Decimal(r.split_units)) for r in rows["balance"]
    }
    return LedgerFacts(last_events, held, balances)


_LEDGER_READ: Final = MergedRead(ledger_parts)


@dataclass(frozen=True)
class CodeCheck:
    """The code checks of one settlement against the balances it was checked on, and the
    sales it would consume if paid."""

    hits: list[CodeCheckHit]
    sales: list[Sale]
    """The sales of this settlement not already in the ledger (what ``consume`` writes)."""
    balances: Balances
    """The balances the checks saw (before this settlement)."""


def check(
    parsed: ParsedLines,
    facts: LedgerFacts,
    balances: Balances,
    *,
    products: Mapping[str, str],
    packs: Mapping[str, int],
) -> CodeCheck:
    """The predicates of ``traceability.checks`` over every code of the settlement, given
    the codes' ``balances`` (as locked), the products' drugs and the drugs' pack sizes.

    A settlement already in the ledger (loaded with its history, say) is judged without its
    own units, and consuming again adds nothing: it holds what it held. Later lines of the
    settlement see the earlier lines' units."""
    seen = dict(balances)
    for e in facts.held.values():
        _add(seen, e.canonical, -e.units, split_sale=e.split_sale)
    zero = (Decimal(0), Decimal(0))
    columns: list[list[Any]] = [[] for _ in range(10)]
    where: list[tuple[DrugLine, int, str, str, str]] = []  # line, position, raw, canonical, reason
    sales: list[Sale] = []
    for line in parsed.lines:
        pack_units = packs.get(line.item_code)
        for position, raw in enumerate(line.trace_codes or ("",)):
            code = parsed.parsed.get((line.line_no, position)) if line.trace_codes else None
            valid = isinstance(code, TraceCode)
            canonical = code.canonical if isinstance(code, TraceCode) else ""
            full, split = seen.get(canonical, zero)
            units = _units(line, pack_units) if valid else Decimal(0)
            for column, value in zip(
                columns,
                (
                    bool(line.trace_codes),
                    valid,
                    line.split_sale,
                    units,
                    pack_units or 0,
                    line.item_code,
                    products.get(code.product_code, "") if isinstance(code, TraceCode) else "",
                    full,
                    split,
                    facts.last_events.get(canonical, ""),
                ),
                strict=True,
            ):
                column.append(value)
            reason = code.reason if isinstance(code, InvalidTraceCode) else ""
            where.append((line, position, raw, canonical, reason))
            if valid:  # later lines of the same settlement see this one's units
                _add(seen, canonical, units, split_sale=line.split_sale)
                if (line.line_no, position) not in facts.held:
                    sales.append(Sale(line.line_no, position, canonical, units, line.split_sale))
    if not where:
        return CodeCheck([], [], balances)
    code_facts = CodeFacts(
        *(np.asarray(c, dtype=object if i in (3, 7, 8) else None) for i, c in enumerate(columns))
    )
    fired = {pattern: predicate(code_facts) for pattern, predicate in CHECKS.items()}
    hits = [
        CodeCheckHit(pattern, line.line_no, canonical or raw, (), reason, position)
        for k, (line, position, raw, canonical, reason) in enumerate(where)
        for pattern in CHECKS
        if fired[pattern][k]
    ]
    return CodeCheck(hits, sales, balances)


def lock_codes(conn: Connection, canonicals: Sequence[str]) -> Balances:
    """Create the settlement's missing ledger rows and lock them all, in code order (no
    deadlocks), and answer their balances as they are now: on PostgreSQL the upsert's row
    locks hold the rows until the transaction ends; on SQLite the write transaction
    (``BEGIN IMMEDIATE``) already serialises writers."""
    if not canonicals:
        return {}
    rows = _LOCK[conn.dialect.name].rows(conn, {"codes": sorted(canonicals)})
    balances = {code: (Decimal(full), Decimal(split)) for code, full, split in rows}
    return {code: balances.get(code, NO_UNITS) for code in canonicals}


def consumption(
    writes: Writes, *, settlement_id: str, settled_at: datetime, checked: CodeCheck
) -> Writes:
    """Add to ``writes`` what settles the checked sales (the settlement is paid): its
    ledger entries and the codes' new balances, to run in the transaction that holds the
    codes' locks (the balances are the checked ones plus the sales)."""
    if not checked.sales:
        return writes
    balances = dict(checked.balances)
    for sale in checked.sales:
        _add(balances, sale.canonical, sale.units, split_sale=sale.split_sale)
    writes.insert(
        _NEW_ENTRIES,
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
            for s in checked.sales
        ],
    )
    return writes.insert(
        _BALANCES, _balance_rows({s.canonical: balances[s.canonical] for s in checked.sales})
    )


def consume(
    conn: Connection, *, settlement_id: str, settled_at: datetime, checked: CodeCheck
) -> None:
    """Settle the checked sales now, in ``conn``'s transaction (:func:`consumption`)."""
    consumption(
        Writes(conn.dialect), settlement_id=settlement_id, settled_at=settled_at, checked=checked
    ).run(conn)


def check_codes(
    conn: Connection,
    *,
    settlement_id: str,
    institution_id: str,
    settled_at: datetime,
    lines: Iterable[DrugLine],
) -> tuple[CodeCheck, Callable[[], None]]:
    """Read, lock and check one settlement's codes in ``conn``'s transaction, each code's
    duplicate evidence (the settlements holding it) filled in; calling the second value
    consumes the codes once the settlement is decided (a rejected one consumes nothing).
    The codes stay locked until the caller's transaction ends. (The scorer runs the same
    steps with its reads merged into its first statement: ``serve.scoring``.)"""
    parsed = ParsedLines.of(lines)
    facts = ledger_facts(
        _LEDGER_READ.read(
            conn,
            ledger_params(
                settlement_id=settlement_id,
                institution_id=institution_id,
                settled_at=settled_at,
                parsed=parsed,
            ),
        )
    )
    catalog = _CATALOG.read(
        conn,
        {
            "products": sorted(
                {p.product_code for p in parsed.parsed.values() if isinstance(p, TraceCode)}
            ),
            "drugs": sorted({line.item_code for line in parsed.lines}),
        },
    )
    checked = check(
        parsed,
        facts,
        lock_codes(conn, parsed.canonicals),
        products={r.product_code: r.drug_code for r in catalog["product"]},
        packs={r.drug_code: r.pack_units for r in catalog["pack"]},
    )
    hits = [
        dataclasses.replace(h, earlier_settlements=_holders(conn, h, settlement_id, parsed))
        if h.pattern in (TracePattern.DUPLICATE, TracePattern.SPLIT_OVERRUN)
        else h
        for h in checked.hits
    ]
    checked = dataclasses.replace(checked, hits=hits)
    return checked, lambda: consume(
        conn, settlement_id=settlement_id, settled_at=settled_at, checked=checked
    )


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
    checked, settle = check_codes(
        conn,
        settlement_id=settlement_id,
        institution_id=institution_id,
        settled_at=settled_at,
        lines=lines,
    )
    if consume if consume is not None else not checked.hits:
        settle()
    return checked.hits


def _add(
    balances: dict[str, tuple[Decimal, Decimal]], code: str, units: Decimal, *, split_sale: bool
) -> None:
    full, split = balances.get(code, (Decimal(0), Decimal(0)))
    balances[code] = (full, split + units) if split_sale else (full + units, split)


def _holders(
    conn: Connection, hit: CodeCheckHit, settlement_id: str, parsed: ParsedLines
) -> tuple[str, ...]:
    """The settlements that hold the hit's code now, and this one if an earlier code of it
    is the same pack: the evidence of a duplicate."""
    held = conn.execute(_HOLDERS, {"code": hit.code}).scalars()
    own = (
        (settlement_id,)
        if any(
            isinstance(code, TraceCode)
            and code.canonical == hit.code
            and key < (hit.line_no, hit.position)
            for key, code in parsed.parsed.items()
        )
        else ()
    )
    return tuple(sorted(held)) + own


def _balance_rows(balances: Balances) -> list[dict[str, Any]]:
    return [
        {"canonical_code": code, "full_units": full, "split_units": split}
        for code, (full, split) in sorted(balances.items())
    ]


def _write_balances(conn: Connection, balances: Balances) -> None:
    """Store the codes' new outstanding units (one statement)."""
    _BALANCES.execute(conn, _balance_rows(balances))


def release_codes(conn: Connection, *, settlement_id: str, released_at: datetime) -> int:
    """A reversal (退费): release the settlement's codes. Returns how many were released;
    releasing again releases nothing."""
    entries = list(conn.execute(_OWN_ENTRIES, {"settlement": settlement_id}))
    if not entries:
        return 0
    balances = lock_codes(conn, sorted({e.canonical_code for e in entries}))
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
