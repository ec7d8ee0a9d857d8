"""Engines and sessions for PostgreSQL (production) and SQLite (embedded mode)."""

from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import UpdateBase

SQLITE_BUSY_TIMEOUT_MS = 30_000
# PostgreSQL connections per process: a request holds one, uploads and downloads one more per stream, a worker a few
# (its hooks and heartbeat); the overflow absorbs bursts without holding idle connections.
POOL_SIZE = 10
POOL_OVERFLOW = 20


def _configure_sqlite(dbapi_connection, _record) -> None:
    """WAL lets the API read while the in-process worker writes; the busy timeout makes writers wait instead of
    failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, *, autocommit: bool = False) -> Engine:
    """One engine per process (and one more for reads, `autocommit`: each statement is its own transaction, so a
    lookup costs one round trip, not BEGIN, the query and ROLLBACK). SQLite files get their folder created;
    PostgreSQL connections are checked before use so a restarted server costs one failed request at most."""
    parsed = make_url(url)
    isolation = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **isolation
        )
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, **isolation)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Objects stay readable after commit: functions hand rows back to callers that have closed their session."""
    return sessionmaker(engine, expire_on_commit=False)


def changed_rows(session: Session, statement: UpdateBase) -> int:
    """Runs an UPDATE or DELETE and says how many rows it matched: the count behind every conditional status change.
    `Session.execute` is annotated with the generic `Result`; for these statements it is the `CursorResult` that
    carries the count."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount
