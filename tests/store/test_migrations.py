import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from squeezer.store.db import make_engine
from squeezer.store.migrate import MIGRATIONS, upgrade_database
from squeezer.store.models import Base

REPO = Path(__file__).resolve().parents[2]


def schema_differences(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_migrations_build_exactly_the_models(backend, request, tmp_path):
    url = (
        request.getfixturevalue("empty_postgres_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path / 'squeezer.db'}"
    )
    upgrade_database(url)
    upgrade_database(url)  # a second run (every embedded start) changes nothing
    assert schema_differences(url) == []


def test_alembic_command_line_upgrades_the_configured_database(empty_postgres_url):
    env = {**os.environ, "SQUEEZER_DATABASE_URL": empty_postgres_url}
    subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "-c", str(MIGRATIONS / "alembic.ini"), "upgrade", "head"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    engine = make_engine(empty_postgres_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"artifacts", "blob_chunks", "jobs", "job_results", "job_events", "alembic_version"} <= tables
    assert schema_differences(empty_postgres_url) == []
