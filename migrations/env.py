"""Alembic environment: runs migrations against the URL given by store.migrate (config attribute "url") or the
service settings (SQUEEZER_DATABASE_URL, else the embedded SQLite database)."""

from alembic import context

from squeezer.store.db import make_engine
from squeezer.store.models import Base
from squeezer.store.settings import get_settings

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    return (
        config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url
    )


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(
        url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=url.startswith("sqlite")
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(database_url())
    try:
        with engine.connect() as connection:
            # SQLite cannot ALTER most things in place: batch mode rebuilds tables for it.
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                compare_type=True,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
