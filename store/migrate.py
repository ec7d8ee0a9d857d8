"""Runs the Alembic migrations from code: the embedded mode upgrades its SQLite file at start, tests build schemas."""

from pathlib import Path

from alembic import command
from alembic.config import Config

import squeezer.migrations

MIGRATIONS = Path(squeezer.migrations.__file__).resolve().parent


def alembic_config(url: str) -> Config:
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade_database(url: str) -> None:
    """`alembic upgrade head` against `url` (idempotent)."""
    command.upgrade(alembic_config(url), "head")
