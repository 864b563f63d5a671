"""The store's hand-run statements (``traceability.store``: ``Prepared``, ``InsertRows``,
``Writes``), the knowledge base held in memory and its version (``features.knowledge``,
migration 0009), and the scorer judging a settlement again when a code's balance moved
between its first read and its lock (``serve.scoring.score``). On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final

import pytest
from scoring_requests import settlement
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from features.knowledge import KnowledgeBase, held_knowledge_base, knowledge_base
from features.store import (
    item_reference,
    knowledge_version,
    patient_history,
    patient_visits,
    services,
)
from serve import scoring
from serve.schemas import SettlementIn
from serve.tables import decisions, rule_executions
from traceability.checks import StockEvent
from traceability.ledger import StockEventIn, record_stock_events
from traceability.store import (
    InsertRows,
    Prepared,
    Writes,
    drugs,
    ledger_codes,
    ledger_entries,
    products,
)

BEIJING = timezone(timedelta(hours=8))
AT = datetime(2025, 3, 1, 10, 0, 0, 123456, tzinfo=BEIJING)
"""A settlement's time, given at +08:00: stored and read back as the same instant in UTC."""

C1 = "81000010000000010000"


def _drug(code: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(c.name for c in drugs.columns)
    return {**row, "drug_code": code, "generic_name": f"generic {code}", "pack_units": 24, **values}


def _product(code: str, drug: str) -> dict[str, Any]:
    return {"product_code": code, "drug_code": drug, "manufacturer": None}


def _balance(code: str, full: Decimal | int, split: Decimal | int) -> dict[str, Any]:
    """A ``ledger_codes`` row, its units as the ledger computes them: ``Decimal``."""
    return {"canonical_code": code, "full_units": Decimal(full), "split_units": Decimal(split)}


def _history(settlement_id: str) -> dict[str, Any]:
    return {
        "settlement_id": settlement_id,
        "line_no": 1,
        "patient_id": "U1",
        "institution_id": "P001",
        "settled_at": AT,
        "item_type": "drug",
        "item_code": "D1",
        "quantity": Decimal("24"),
        "admit_date": date(2025, 2, 27),
        "discharge_date": None,
        "diagnosis_code": "J20.9",
        "reversed_at": None,
    }


def _same(prepared: list[tuple[Any, ...]], core: list[Any]) -> None:
    """The rows of a ``Prepared`` are the rows of the Core execution: same values, same
    types, same decimal scales and zones (``repr`` shows them all)."""
    assert prepared, "a comparison of no rows proves nothing"
    assert repr(prepared) == repr([tuple(row) for row in core])


# --- Prepared ----------------------------------------------------------------------------


def test_prepared_reads_and_writes_what_sqlalchemy_reads_and_writes(store: Engine) -> None:
    with store.begin() as conn:
        conn.execute(insert(patient_history), [_history("CORE")])
        assert Prepared(insert(patient_history)).execute(conn, _history("PREPARED")) == 1
        conn.execute(
            insert(drugs),
            [
                _drug("D1", max_units_per_day=Decimal("2.5"), high_value=True, red_list=False),
                _drug("D2", pack_units=10),
            ],
        )
        Prepared(insert(patient_visits)).execute_many(
            conn,
            [
                {"settlement_id": sid, "patient_id": "U1", "institution_id": "P001",
                 "settled_at": AT, "visit_type": "pharmacy", "total_amount": Decimal(48),
                 "fund_paid": fund, "reversed_at": None}
                for sid, fund in (("V1", Decimal("30.5")), ("V2", None))
            ],
        )  # fmt: skip
    history = select(patient_history).order_by(patient_history.c.settlement_id)
    statements: list[tuple[Any, dict[str, Any]]] = [
        (history, {}),
        # a time bound at +08:00 finds the rows stored at its instant (SQLite compares text:
        # the row written by Prepared is stored exactly as the Core one)
        (
            select(patient_history.c.settlement_id, patient_history.c.settled_at)
            .where(patient_history.c.settled_at == bindparam("at"))
            .order_by(patient_history.c.settlement_id),
            {"at": AT},
        ),
        (
            select(
                patient_history.c.patient_id,
                func.max(patient_history.c.settled_at),
                func.sum(patient_history.c.quantity),
                func.min(patient_history.c.admit_date),
                func.count(),
            ).group_by(patient_history.c.patient_id),
            {},
        ),
        (
            select(patient_history.c.settlement_id).where(
                patient_history.c.admit_date <= bindparam("day")
            ),
            {"day": date(2025, 2, 27)},
        ),
        (select(drugs).order_by(drugs.c.drug_code), {}),
        # a literal the statement carries, a parameter bound twice, a limit
        (select(drugs.c.pack_units).where(drugs.c.drug_code == "D2"), {}),
        (
            select(drugs.c.drug_code)
            .where(or_(drugs.c.drug_code == bindparam("x"), drugs.c.generic_name == bindparam("x")))
            .order_by(drugs.c.drug_code),
            {"x": "generic D1"},
        ),
        (select(drugs.c.drug_code).order_by(drugs.c.drug_code.desc()).limit(1), {}),
        (select(patient_visits).order_by(patient_visits.c.settlement_id), {}),
        (
            select(func.sum(patient_visits.c.fund_paid)).where(
                patient_visits.c.settled_at >= bindparam("since")
            ),
            {"since": AT - timedelta(days=1)},
        ),
    ]
    with store.connect() as conn:
        for statement, params in statements:
            _same(Prepared(statement).rows(conn, params), list(conn.execute(statement, params)))
        core, prepared = Prepared(history).rows(conn, {})
        alone = Prepared(select(drugs).where(drugs.c.drug_code == "D1")).rows(conn, {})
        visits = Prepared(select(patient_visits.c.total_amount, patient_visits.c.fund_paid))
        money = visits.rows(conn, {})
    assert repr(core[1:]) == repr(prepared[1:])  # the row written by Prepared is the Core one's
    settled_at, quantity, admit = core[4], core[7], core[8]
    assert settled_at == AT
    assert settled_at.utcoffset() == timedelta(0)
    assert settled_at.hour == 2  # 10:00 at +08:00
    assert (quantity, str(quantity)) == (Decimal(24), "24.000")  # NUMERIC(14, 3)
    assert (type(admit), admit) == (date, date(2025, 2, 27))
    assert core[9] is None
    assert core[11] is None
    (d1,) = alone
    assert str(d1[3]) == "2.500"
    assert d1[7:] == (True, False)
    assert sorted(map(repr, money)) == ["(Decimal('48.00'), Decimal('30.50'))",
                                        "(Decimal('48.00'), None)"]  # fmt: skip


def test_prepared_refuses_a_missing_parameter(store: Engine) -> None:
    statement = Prepared(select(drugs.c.drug_code).where(drugs.c.drug_code == bindparam("code")))
    with store.connect() as conn, pytest.raises(KeyError, match="code"):
        statement.rows(conn, {})


@pytest.fixture
def heard(store: Engine) -> Iterator[list[tuple[str, bool]]]:
    """What SQLAlchemy's ``before_cursor_execute`` listeners hear: (statement, many)."""
    statements: list[tuple[str, bool]] = []

    def listen(
        _conn: Any, _cursor: Any, statement: str, _params: Any, _ctx: Any, many: bool
    ) -> None:
        statements.append((statement, many))

    event.listen(store, "before_cursor_execute", listen)
    try:
        yield statements
    finally:
        event.remove(store, "before_cursor_execute", listen)


def test_listeners_hear_every_statement_and_each_is_compiled_once(
    store: Engine, heard: list[tuple[str, bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    by_code = Prepared(select(drugs.c.drug_code).where(drugs.c.drug_code == bindparam("code")))
    compiled: list[object] = []
    compile_ = by_code.statement.compile

    def counted(*args: Any, **kwargs: Any) -> Any:
        compiled.append(kwargs.get("dialect"))
        return compile_(*args, **kwargs)

    monkeypatch.setattr(by_code.statement, "compile", counted)
    add_drug = Prepared(insert(drugs))
    add_products = InsertRows(products)
    sql = by_code.bind(store.dialect, {"code": "D1"}).sql
    with store.begin() as conn:
        add_drug.execute_many(conn, [_drug("D1"), _drug("D2")])
        add_drug.execute_many(conn, [])  # nothing to run: no statement
        add_products.execute(conn, [])
        assert heard == [(add_drug.bind(store.dialect, _drug("D1")).sql, True)]
        heard.clear()
        add_products.execute(conn, [_product("8100001", "D1")])
        # PostgreSQL: one statement of column arrays; SQLite: the driver's executemany
        assert [many for _, many in heard] == [store.dialect.name == "sqlite"]
        assert heard[0][0].upper().startswith("INSERT INTO PRODUCTS")
        heard.clear()
        assert by_code.rows(conn, {"code": "D1"}) == [("D1",)]
    for code in ("D1", "D2", "D3"):  # on other connections of the pool too
        with store.connect() as conn:
            assert by_code.rows(conn, {"code": code}) == ([(code,)] if code != "D3" else [])
    assert heard == [(sql, False)] * 4
    assert len(compiled) == 1  # once for the dialect, whatever the executions
    heard.clear()
    update_units = Prepared(
        update(drugs).where(drugs.c.drug_code == bindparam("code")).values(pack_units=12)
    )
    writes = (
        Writes(store.dialect)
        .add(update_units, {"code": "D1"})
        .insert(add_products, [_product("8100002", "D2")])
        .add(update_units, {"code": "D2"})
    )
    with store.begin() as conn:
        writes.run(conn)
    assert [statement for statement, _ in heard] == [step.sql for step in writes.steps]
    assert len(heard) == 3


def test_a_duplicate_key_is_sqlalchemys_integrity_error_and_the_connection_lives_on(
    store: Engine,
) -> None:
    with store.begin() as conn:
        conn.execute(insert(drugs), [_drug("D1")])
    add_drug = Prepared(insert(drugs))
    add_drugs = InsertRows(drugs)
    attempts: dict[str, Callable[[Connection], None]] = {
        "Prepared.execute": lambda conn: add_drug.execute(conn, _drug("D1")),
        "InsertRows.execute": lambda conn: add_drugs.execute(conn, [_drug("X1"), _drug("D1")]),
        "Writes.run": lambda conn: (
            Writes(conn.dialect)
            .add(add_drug, _drug("X2"))
            .insert(add_drugs, [_drug("D1")])
            .add(add_drug, _drug("X3"))
            .run(conn)
        ),
    }
    for n, (name, attempt) in enumerate(attempts.items()):
        with store.connect() as conn:
            with pytest.raises(IntegrityError) as raised, conn.begin():
                attempt(conn)
            assert isinstance(raised.value.orig, conn.dialect.loaded_dbapi.IntegrityError), name
            assert not raised.value.connection_invalidated, name
            assert not conn.invalidated, name
            with conn.begin():  # the same connection writes and reads again
                add_drug.execute(conn, _drug(f"OK{n}"))
                assert conn.execute(select(func.count()).select_from(drugs)).scalar() == n + 2
    with store.connect() as conn:
        codes = conn.execute(select(drugs.c.drug_code).order_by(drugs.c.drug_code)).scalars()
        assert list(codes) == ["D1", "OK0", "OK1", "OK2"]  # nothing of the failed attempts


# --- InsertRows --------------------------------------------------------------------------


def test_insert_rows_inserts_nulls_times_and_decimals_and_upserts(store: Engine) -> None:
    entries = [
        {"settlement_id": "S1", "line_no": 1, "position": p, "canonical_code": f"C{p}",
         "units": Decimal("1.5") * p, "split_sale": p == 1, "settled_at": AT,
         "released_at": None}
        for p in range(3)
    ]  # fmt: skip
    catalog = [  # gender_restriction and min_age: None in every row
        _drug("D1", max_units_per_day=Decimal("2.5"), high_value=True),
        _drug("D2", pack_units=10, max_age=65, red_list=False),
    ]
    with store.begin() as conn:
        InsertRows(ledger_entries).execute(conn, entries)
        InsertRows(drugs).execute(conn, catalog)
        InsertRows(drugs).execute(conn, [])  # nothing
    with store.connect() as conn:
        stored = [
            dict(r._mapping) for r in conn.execute(select(ledger_entries).order_by("position"))
        ]
        assert stored == entries
        assert [(e["settled_at"].utcoffset(), str(e["units"])) for e in stored] == [
            (timedelta(0), "0.000"), (timedelta(0), "1.500"), (timedelta(0), "3.000"),
        ]  # fmt: skip
        assert [e["split_sale"] for e in stored] == [False, True, False]
        rows = [dict(r._mapping) for r in conn.execute(select(drugs).order_by(drugs.c.drug_code))]
        assert rows == catalog

    balances = InsertRows(ledger_codes, key="canonical_code", update=("full_units", "split_units"))
    packs = InsertRows(drugs, key="drug_code", update=("pack_units", "max_units_per_day"))
    with store.begin() as conn:
        balances.execute(conn, [_balance("C1", 24, 0)])
        balances.execute(conn, [_balance("C1", 0, Decimal("2.5")), _balance("C2", 10, 0)])
        packs.execute(
            conn,
            [  # D1: new pack size, its daily limit cleared; its name not among the updated
                _drug("D1", generic_name="renamed", pack_units=30, max_units_per_day=None),
                _drug("D3", pack_units=7),
            ],
        )
    with store.connect() as conn:
        units = conn.execute(select(ledger_codes).order_by(ledger_codes.c.canonical_code)).all()
        assert [tuple(r) for r in units] == [
            ("C1", Decimal(0), Decimal("2.5")),
            ("C2", Decimal(10), Decimal(0)),
        ]
        packed = conn.execute(
            select(drugs.c.drug_code, drugs.c.generic_name, drugs.c.pack_units,
                   drugs.c.max_units_per_day, drugs.c.high_value).order_by(drugs.c.drug_code)
        ).all()  # fmt: skip
        assert [tuple(r) for r in packed] == [
            ("D1", "generic D1", 30, None, True),
            ("D2", "generic D2", 10, None, None),
            ("D3", "generic D3", 7, None, None),
        ]


def test_insert_rows_takes_a_numeric_column_of_ints_and_decimals_as_core_does(
    store: Engine,
) -> None:
    """A NUMERIC column given ``0`` in one row and ``Decimal("2.5")`` in another: Core's
    insert stores both, on either store; so must InsertRows (one statement of column
    arrays on PostgreSQL)."""
    rows = [
        {"canonical_code": "C1", "full_units": 0, "split_units": Decimal("2.5")},
        {"canonical_code": "C2", "full_units": Decimal(24), "split_units": 0},
    ]
    with store.begin() as conn:
        conn.execute(insert(ledger_codes), rows)
        conn.execute(delete(ledger_codes))
        InsertRows(ledger_codes).execute(conn, rows)
    with store.connect() as conn:
        units = conn.execute(select(ledger_codes).order_by(ledger_codes.c.canonical_code)).all()
    assert [tuple(r) for r in units] == [("C1", 0, Decimal("2.5")), ("C2", 24, 0)]


# --- Writes ------------------------------------------------------------------------------


def test_writes_apply_all_in_order_or_nothing(store: Engine) -> None:
    add_drug = Prepared(insert(drugs))
    set_units = Prepared(
        update(drugs)
        .where(drugs.c.drug_code == bindparam("code"))
        .values(pack_units=bindparam("units"))
    )
    add_products = InsertRows(products)
    # bound before any connection: the dialect is all a settlement's writes need
    applied = (
        Writes(store.dialect)
        .add(add_drug, _drug("D1"))
        .add(set_units, {"code": "D1", "units": 30})  # after the insert: sees its row
        .insert(add_products, [_product("8100001", "D1"),
                               _product("8100002", "D1")])
        .add(add_drug, _drug("D2"))
    )  # fmt: skip
    failing = (
        Writes(store.dialect)
        .add(add_drug, _drug("D3"))
        .add(set_units, {"code": "D1", "units": 99})
        .insert(add_products, [_product("8100003", "D3")])
        .add(add_drug, _drug("D2"))  # a duplicate: the whole transaction goes
        .add(add_drug, _drug("D4"))
    )

    def catalog() -> tuple[list[tuple[Any, ...]], list[str]]:
        with store.connect() as conn:
            packs = conn.execute(
                select(drugs.c.drug_code, drugs.c.pack_units).order_by("drug_code")
            )
            codes = conn.execute(select(products.c.product_code).order_by("product_code"))
            return [tuple(r) for r in packs], list(codes.scalars())

    with store.begin() as conn:
        applied.run(conn)
    assert catalog() == ([("D1", 30), ("D2", 24)], ["8100001", "8100002"])
    with store.connect() as conn:
        with pytest.raises(IntegrityError), conn.begin():
            failing.run(conn)
        with conn.begin():
            Writes(conn.dialect).run(conn)  # no steps: nothing to run
            Writes(conn.dialect).add(set_units, {"code": "D2", "units": 12}).run(conn)
    assert catalog() == ([("D1", 30), ("D2", 12)], ["8100001", "8100002"])


# --- the knowledge base ------------------------------------------------------------------

KNOWLEDGE_CHANGES: dict[str, tuple[Any, Any, Any, Callable[[KnowledgeBase], Any]]] = {
    # table: (insert, update, delete, what the knowledge base shows of the row)
    "drugs": (
        insert(drugs).values(drug_code="K1", generic_name="k", pack_units=10),
        update(drugs).where(drugs.c.drug_code == "K1").values(pack_units=12),
        delete(drugs).where(drugs.c.drug_code == "K1"),
        lambda kb: kb.drugs["K1"].pack_units if "K1" in kb.drugs else None,
    ),
    "products": (
        insert(products).values(product_code="8100009", drug_code="K1"),
        update(products).where(products.c.product_code == "8100009").values(drug_code="K2"),
        delete(products).where(products.c.product_code == "8100009"),
        lambda kb: kb.products.get("8100009"),
    ),
    "services": (
        insert(services).values(service_code="SK", name="k", max_times=1, period_days=30),
        update(services).where(services.c.service_code == "SK").values(max_times=2),
        delete(services).where(services.c.service_code == "SK"),
        lambda kb: kb.services["SK"].max_times if "SK" in kb.services else None,
    ),
    "item_reference": (
        insert(item_reference).values(
            item_type="drug",
            item_code="K1",
            ref_unit_price=Decimal("2.5"),
            ref_quantity=Decimal(24),
            n_lines=3,
        ),
        update(item_reference)
        .where(item_reference.c.item_code == "K1")
        .values(ref_unit_price=Decimal("3.25")),
        delete(item_reference).where(item_reference.c.item_code == "K1"),
        lambda kb: r.unit_price if (r := kb.reference.get(("drug", "K1"))) else None,
    ),
}
SHOWN: Final = {
    "drugs": (10, 12),
    "products": ("K1", "K2"),
    "services": (1, 2),
    "item_reference": (Decimal("2.5"), Decimal("3.25")),
}


def _version(store: Engine) -> int:
    with store.connect() as conn:
        return int(conn.execute(select(knowledge_version.c.version)).scalar_one())


def test_every_change_of_the_catalog_moves_the_version_and_the_held_base_follows(
    store: Engine,
) -> None:
    with store.connect() as reader:
        base = knowledge_base(reader)
        assert base.version == _version(store)
        assert knowledge_base(reader) is base  # nothing changed: the copy held
        assert knowledge_base(reader, base.version) is base
        assert held_knowledge_base(reader) is base
        for table, (add, change, remove, shown) in KNOWLEDGE_CHANGES.items():
            inserted, updated = SHOWN[table]
            for statement, expected in ((add, inserted), (change, updated), (remove, None)):
                before = _version(store)
                with store.begin() as conn:
                    conn.execute(statement)
                after = _version(store)
                assert after > before, (table, str(statement))
                fresh = knowledge_base(reader)
                assert fresh is not base, (table, str(statement))
                assert fresh.version == after
                assert shown(fresh) == expected, (table, str(statement))
                assert knowledge_base(reader, after) is fresh
                assert held_knowledge_base(reader) is fresh
                base = fresh
            # a change rolled back moves nothing
            with store.connect() as conn:
                transaction = conn.begin()
                conn.execute(add)
                transaction.rollback()
            assert _version(store) == base.version
            assert knowledge_base(reader) is base


def test_a_knowledge_base_read_in_a_transaction_rolled_back_is_not_held_as_the_stores(
    store: Engine,
) -> None:
    """A change read in its own transaction, then rolled back, gives its version number
    back: the next change committed takes the same number. The copy held for the engine
    must then be the committed catalog, not the one that never was."""
    with store.connect() as conn:
        transaction = conn.begin()
        conn.execute(insert(drugs).values(drug_code="NEVER", generic_name="n", pack_units=1))
        assert "NEVER" in knowledge_base(conn).drugs  # as this transaction sees it
        transaction.rollback()
    with store.begin() as conn:
        conn.execute(insert(drugs).values(drug_code="REAL", generic_name="r", pack_units=1))
    with store.connect() as conn:
        base = knowledge_base(conn)
    assert base.version == _version(store)
    assert sorted(base.drugs) == ["REAL"]


def test_the_scorer_decides_on_the_catalog_as_it_changes(
    store: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real = scoring.knowledge_base

    def read_again(conn: Connection, version: int | None = None) -> KnowledgeBase:
        reads.append(version or 0)
        assert len(reads) < 5, "the scorer keeps reading the knowledge base"
        return real(conn, version)

    monkeypatch.setattr(scoring, "knowledge_base", read_again)
    with store.begin() as conn:
        conn.execute(
            insert(services).values(
                service_code="PSA", name="前列腺特异性抗原", gender_restriction="M"
            )
        )

    def psa(settlement_id: str, day: int) -> scoring.Scored:
        body = settlement(settlement_id, settled_at=f"2025-03-{day:02d}T10:00:00+08:00")
        body["visit_type"] = "outpatient"
        body["items"] = [
            {"line_no": 1, "item_type": "service", "item_code": "PSA", "quantity": 1,
             "unit_price": "48.00", "amount": "48.00"}
        ]  # fmt: skip
        return scoring.score(store, SettlementIn.model_validate(body), b"{}")

    assert [h for h, _ in psa("S1", 1).hits] == ["GR001"]  # a woman's PSA test
    with store.connect() as conn:
        held = held_knowledge_base(conn)
    assert held.services["PSA"].gender_restriction == "M"
    assert psa("S2", 2).hits == (("GR001", "review"),)
    assert reads == []  # the catalog did not change: the copy held
    with store.begin() as conn:
        conn.execute(update(services).values(gender_restriction=None))
    third = psa("S3", 3)
    assert (third.decision, third.hits) == ("pass", ())
    assert reads == [_version(store)]  # read again once, at the store's version
    with store.connect() as conn:
        assert held_knowledge_base(conn).services["PSA"].gender_restriction is None


# --- the scorer judges again on the balances it locked -----------------------------------


def _packs(store: Engine) -> None:
    with store.begin() as conn:
        conn.execute(insert(drugs), [_drug("D1")])
        conn.execute(insert(products), [_product("8100001", "D1")])
        record_stock_events(
            conn,
            [StockEventIn(C1, StockEvent.PURCHASE, "P001", datetime(2025, 2, 1, tzinfo=UTC))],
        )


def _body(settlement_id: str) -> SettlementIn:
    return SettlementIn.model_validate(settlement(settlement_id, C1))


@pytest.fixture
def race(
    store: Engine, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Callable[[], object]], dict[str, list[Any]]]:
    """Run a rival's move once, in the next scoring, after its first read and before its
    transaction (its lock) begins: the rival commits on connections of its own (SQLite's
    write lock is not yet taken). What the scoring saw is recorded: the balances of its
    first read, those its lock answered, and the settlements judged (``_ready``)."""
    seen: dict[str, list[Any]] = {"read": [], "locked": [], "judged": []}
    rival: list[Callable[[], object]] = []
    real_facts, real_lock, real_ready = scoring.ledger_facts, scoring.lock_codes, scoring._ready

    def facts(rows: dict[str, list[Any]]) -> Any:
        read = real_facts(rows)
        if rival:
            seen["read"].append(dict(read.balances))
            rival.pop()()
        return read

    def lock(conn: Connection, canonicals: Any) -> Any:
        locked = real_lock(conn, canonicals)
        seen["locked"].append(dict(locked))
        return locked

    def ready(*args: Any) -> Any:
        seen["judged"].append(args[1].settlement_id)
        return real_ready(*args)

    monkeypatch.setattr(scoring, "ledger_facts", facts)
    monkeypatch.setattr(scoring, "lock_codes", lock)
    monkeypatch.setattr(scoring, "_ready", ready)

    def arm(move: Callable[[], object]) -> dict[str, list[Any]]:
        rival.append(move)
        return seen

    return arm


def _holders(store: Engine) -> list[str]:
    with store.connect() as conn:
        return list(
            conn.execute(
                select(ledger_entries.c.settlement_id)
                .where(ledger_entries.c.canonical_code == C1)
                .where(ledger_entries.c.released_at.is_(None))
            ).scalars()
        )


def _stored(store: Engine, settlement_id: str) -> tuple[str, str, dict[str, str]]:
    with store.connect() as conn:
        decision, response = conn.execute(
            select(decisions.c.decision, decisions.c.response).where(
                decisions.c.settlement_id == settlement_id
            )
        ).one()
        outcomes = conn.execute(
            select(rule_executions.c.rule_id, rule_executions.c.outcome).where(
                rule_executions.c.settlement_id == settlement_id
            )
        )
        return decision, response, dict(outcomes.all())


def test_a_pack_taken_between_the_read_and_the_lock_is_judged_again(
    store: Engine, race: Callable[[Callable[[], object]], dict[str, list[Any]]]
) -> None:
    _packs(store)
    taken: list[scoring.Scored] = []
    seen = race(lambda: taken.append(scoring.score(store, _body("S1"), b"{}")))
    second = scoring.score(store, _body("S2"), b"{}")
    (first,) = taken
    assert first.decision == "pass"
    assert second.decision == "reject"
    assert second.hits == (("TC002", "reject"),)  # duplicate_trace_code: sold already
    assert _holders(store) == ["S1"]
    assert seen["read"] == [{}]  # S2 read the code free
    # S1's lock (nothing held), then S2's: S1's pack
    assert seen["locked"] == [{C1: (0, 0)}, {C1: (24, 0)}]
    assert seen["judged"] == ["S1", "S2", "S2"]  # S2 judged again on what it locked
    with store.connect() as conn:
        assert conn.execute(select(ledger_codes.c.full_units)).scalar_one() == 24
    decision, response, outcomes = _stored(store, "S2")
    assert (decision, response.encode()) == ("reject", second.body)
    assert outcomes["TC002"] == "hit"  # the executions stored are the second judgement's
    assert scoring.score(store, _body("S2"), b"{}").body == second.body


def test_a_pack_released_between_the_read_and_the_lock_is_judged_again(
    store: Engine, race: Callable[[Callable[[], object]], dict[str, list[Any]]]
) -> None:
    _packs(store)
    assert scoring.score(store, _body("S1"), b"{}").decision == "pass"
    seen = race(lambda: scoring.reverse(store, "S1", AT + timedelta(hours=1)))
    assert seen["judged"] == ["S1"]  # nothing moved: judged once
    second = scoring.score(store, _body("S2"), b"{}")
    assert (second.decision, second.hits) == ("pass", ())
    assert _holders(store) == ["S2"]
    assert seen["read"] == [{C1: (24, 0)}]  # S2 read the pack sold to S1
    assert seen["locked"][-1] == {C1: (0, 0)}  # and locked it released
    assert seen["judged"] == ["S1", "S2", "S2"]
    decision, response, outcomes = _stored(store, "S2")
    assert (decision, response.encode()) == ("pass", second.body)
    assert outcomes["TC002"] == "no_hit"
