import pytest

from squeezer.store.db import make_engine, make_session_factory


@pytest.fixture
def pg_sessions(postgres_url):
    """Sessions on a fresh PostgreSQL database whose schema the migrations built."""
    engine = make_engine(postgres_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def sqlite_sessions(sqlite_url):
    engine = make_engine(sqlite_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def sessions(request):
    """Both backends: what runs in production and what runs embedded."""
    return request.getfixturevalue("pg_sessions" if request.param == "postgresql" else "sqlite_sessions")
