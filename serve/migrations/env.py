"""Alembic environment: the store's URL comes from the config; the tables from serve.store."""

from __future__ import annotations

from alembic import context

from serve.store import METADATA, create_store_engine

config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("alembic: no sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=list(METADATA), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_store_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=list(METADATA), render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
