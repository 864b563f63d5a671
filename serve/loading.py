"""``fundguard load``: a folder of contract tables into the store the scorer uses."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import duckdb
from sqlalchemy import Connection

from features.batch import open_history
from features.store import compute_item_reference, load_item_reference, load_services
from features.store import load_history as load_patient_history
from serve.store import create_store_engine, upgrade
from serve.tables import institutions, patients
from traceability.batch import screen_codes
from traceability.history import HistoryLoad, load_history
from traceability.store import upsert


def load_folder(data_dir: Path, store_url: str, *, memory_limit: str = "4GB") -> HistoryLoad:
    """Load what ``data_dir`` holds into the store at ``store_url``, in one transaction.

    The history is screened first, so the ledger holds the codes of the settlements that
    would have been paid (a rejected settlement consumed nothing), released by reversals.
    Loading the same folder twice changes nothing. The reference prices and quantities of
    the items (what the settlement features compare a line with) are those of this history.
    """
    upgrade(store_url)
    con = open_history(data_dir, memory_limit=memory_limit)
    engine = create_store_engine(store_url)
    try:
        screen_codes(con)
        with engine.begin() as conn:
            loaded = load_history(con, conn)
            load_services(con, conn)
            load_parties(con, conn)
            load_patient_history(con, conn)
            load_item_reference(conn, compute_item_reference(con))
            return loaded
    finally:
        con.close()
        engine.dispose()


_PARTIES: Final = (
    (institutions, "institution_id", "SELECT institution_id, name, kind, level, region_code "
     "FROM institutions ORDER BY institution_id"),
    (patients, "patient_id", "SELECT patient_id, gender, birth_date, region_code, locality_code "
     "FROM patients ORDER BY patient_id"),
)  # fmt: skip


def load_parties(
    con: duckdb.DuckDBPyConnection, conn: Connection, *, chunk_rows: int = 20_000
) -> int:
    """Upsert the institutions and the patients of the history behind ``con``: the region of
    every case and decision (an inspector sees the regions of its key). How many rows."""
    loaded = 0
    for table, key, sql in _PARTIES:
        for batch in con.sql(sql).to_arrow_reader(chunk_rows):
            loaded += upsert(conn, table, batch.to_pylist(), key)
    return loaded
