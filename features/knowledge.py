"""The knowledge base (知识库) as the scorer holds it: the catalog in memory.

The drug catalog with its pack sizes and limits, the product registry (which drug a code's
product is), the service catalog with its frequency limits, and the items' reference prices
change when a catalog is loaded, not with every settlement. Reading them for every
settlement cost a statement and its rows each time; the scorer instead holds a copy,
:class:`KnowledgeBase`, and reads the store's one-row ``knowledge_version`` with each
settlement (in the statement it reads anyway). Triggers bump that version on every change
of the four tables (migration 0009), so a settlement scored after a catalog change commits
is decided on the new catalog: :func:`knowledge_base` reads the copy again when the version
it holds is not the store's.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import Connection, Engine, select

from features.store import item_reference, knowledge_version, services
from traceability.store import Prepared, drugs, products


@dataclass(frozen=True)
class Drug:
    """A drug of the catalog (医保药品目录)."""

    drug_code: str
    pack_units: int
    max_units_per_day: Decimal | None = None
    gender_restriction: str | None = None
    min_age: int | None = None
    max_age: int | None = None
    high_value: bool | None = None
    red_list: bool | None = None


@dataclass(frozen=True)
class Service:
    """A service of the catalog (诊疗项目目录)."""

    service_code: str
    gender_restriction: str | None = None
    min_age: int | None = None
    max_age: int | None = None
    max_times: int | None = None
    period_days: int | None = None


@dataclass(frozen=True)
class Reference:
    """An item's reference unit price and typical quantity (``item_reference``)."""

    unit_price: Decimal
    quantity: Decimal


@dataclass(frozen=True)
class KnowledgeBase:
    """The catalog at one version of the store."""

    version: int
    drugs: Mapping[str, Drug] = field(default_factory=dict)
    services: Mapping[str, Service] = field(default_factory=dict)
    products: Mapping[str, str] = field(default_factory=dict)
    """Product code (7 digits or GTIN-14) → the drug it is."""
    reference: Mapping[tuple[str, str], Reference] = field(default_factory=dict)
    """(item type, item code) → its reference price and quantity."""

    @functools.cached_property
    def pack_units(self) -> Mapping[str, int]:
        """Drug code → units in one sales pack."""
        return {code: drug.pack_units for code, drug in self.drugs.items()}

    def limit(self, item_type: str, item_code: str, name: str) -> Any:
        """A catalog limit of an item (``gender_restriction``, ``min_age``, ``max_age``,
        ``max_units_per_day``, ``max_times``, ``period_days``), None where it has none or
        the item is not in the catalog."""
        item: Drug | Service | None = (
            self.drugs.get(item_code) if item_type == "drug" else self.services.get(item_code)
        )
        return getattr(item, name, None)


VERSION: Final = select(knowledge_version.c.version).where(knowledge_version.c.id == 1)
"""The store's knowledge-base version: a part of a scorer's first read (``MergedRead``)."""

_VERSION: Final = Prepared(VERSION)
_DRUGS: Final = Prepared(
    select(
        drugs.c.drug_code,
        drugs.c.pack_units,
        drugs.c.max_units_per_day,
        drugs.c.gender_restriction,
        drugs.c.min_age,
        drugs.c.max_age,
        drugs.c.high_value,
        drugs.c.red_list,
    )
)
_SERVICES: Final = Prepared(
    select(
        services.c.service_code,
        services.c.gender_restriction,
        services.c.min_age,
        services.c.max_age,
        services.c.max_times,
        services.c.period_days,
    )
)
_PRODUCTS: Final = Prepared(select(products.c.product_code, products.c.drug_code))
_REFERENCE: Final = Prepared(
    select(
        item_reference.c.item_type,
        item_reference.c.item_code,
        item_reference.c.ref_unit_price,
        item_reference.c.ref_quantity,
    )
)


def read_knowledge_base(conn: Connection) -> KnowledgeBase:
    """The knowledge base as ``conn``'s transaction sees it."""
    (version,) = _VERSION.rows(conn, {})[0]
    return KnowledgeBase(
        version=int(version),
        drugs={row[0]: Drug(*row) for row in _DRUGS.rows(conn, {})},
        services={row[0]: Service(*row) for row in _SERVICES.rows(conn, {})},
        products=dict(_PRODUCTS.rows(conn, {})),  # type: ignore[arg-type]
        reference={
            (row[0], row[1]): Reference(row[2], row[3]) for row in _REFERENCE.rows(conn, {})
        },
    )


class _Held:
    """The knowledge base one engine's scorers hold."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.base: KnowledgeBase | None = None


_held: Final[weakref.WeakKeyDictionary[Engine, _Held]] = weakref.WeakKeyDictionary()
_held_lock: Final = threading.Lock()


def _held_for(engine: Engine) -> _Held:
    with _held_lock:
        held = _held.get(engine)
        if held is None:
            held = _held[engine] = _Held()
        return held


def held_knowledge_base(conn: Connection) -> KnowledgeBase:
    """The knowledge base held for ``conn``'s engine, whatever its version (read if none is
    held yet): what a scorer plans its first read with, before that read tells it the
    store's version (:func:`knowledge_base`)."""
    base = _held_for(conn.engine).base
    return base if base is not None else knowledge_base(conn)


def knowledge_base(conn: Connection, version: int | None = None) -> KnowledgeBase:
    """The knowledge base of ``conn``'s store at ``version`` (the store's version, read in
    the caller's statement; None: read it here): the copy held for the engine while its
    version is the store's, else read again (once, whichever thread asks first). Read in a
    transaction that SQLAlchemy began (which may hold a change of the catalog not yet
    committed), it is read afresh and not held."""
    held = _held_for(conn.engine)
    base = held.base
    if version is None:
        (version,) = _VERSION.rows(conn, {})[0]
    if base is not None and base.version == version:
        return base
    if conn.in_transaction():  # it may yet roll back, and another change take its version
        return read_knowledge_base(conn)
    with held.lock:
        base = held.base
        if base is None or base.version != version:
            base = held.base = read_knowledge_base(conn)
        return base
