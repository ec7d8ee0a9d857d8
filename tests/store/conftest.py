import pytest

from squeezer.store.db import make_engine, make_session_factory
from squeezer.store.migrate import upgrade_database


@pytest.fixture
def pg_sessions(postgres_url):
    """Sessions on a fresh PostgreSQL database built by the migrations."""
    upgrade_database(postgres_url)
    engine = make_engine(postgres_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def sqlite_sessions(tmp_path):
    url = f"sqlite:///{tmp_path / 'squeezer.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def sessions(request):
    """Both backends: what runs in production and what runs embedded."""
    return request.getfixturevalue("pg_sessions" if request.param == "postgresql" else "sqlite_sessions")
