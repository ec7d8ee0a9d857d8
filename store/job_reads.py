"""Job polls, the hottest read: one job row by id and tenant, many times a second per client. On PostgreSQL they run
on the event loop over psycopg's async connections: a worker-thread hop and SQLAlchemy's execution path cost more CPU
than the query itself (bench/api_poll.py). SQLite has no async driver here, so its polls take a worker thread to
store.jobs.poll_job_row. Failures surface as SQLAlchemy's errors, which the API already answers with a 503."""

import asyncio
from typing import Any, Protocol

import anyio.to_thread
import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from squeezer.store.db import POOL_SIZE, make_engine
from squeezer.store.jobs import poll_job_row
from squeezer.store.models import Job

# A poll waits at most this long for a connection and its answer before the API answers 503.
POLL_TIMEOUT_S = 10.0
_COLUMNS = ", ".join(column.name for column in Job.__table__.columns)
_POLL_SQL = f"SELECT {_COLUMNS} FROM {Job.__tablename__} WHERE id = %s AND tenant = %s"


class JobReader(Protocol):
    async def job_row(self, job_id: str, tenant: str) -> Any | None:
        """The job's row (its columns as attributes, named as on `Job`) when it belongs to `tenant`, else None."""

    async def close(self) -> None: ...


class ThreadedJobReader:
    """Polls through SQLAlchemy in a worker thread, on an autocommit engine of their own (SQLite)."""

    def __init__(self, url: str):
        self.engine: Engine = make_engine(url, autocommit=True)

    async def job_row(self, job_id: str, tenant: str) -> Any | None:
        return await anyio.to_thread.run_sync(poll_job_row, self.engine, job_id, tenant)

    async def close(self) -> None:
        self.engine.dispose()


class AsyncPostgresJobReader:
    """Polls on the event loop: up to `size` autocommit psycopg connections, made on demand and reused, each query
    prepared by psycopg after its first few runs. A connection that fails is dropped with every idle one (a restarted
    server dropped them all) and a query that failed on a reused connection is tried once more on a new one, so a
    restart costs no poll once the server is back."""

    def __init__(self, url: str, size: int = POOL_SIZE, timeout_s: float = POLL_TIMEOUT_S):
        self.conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.timeout_s = timeout_s
        self.size = size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots = asyncio.Semaphore(size)

    def _bind(self) -> None:
        """Connections belong to the event loop that made them: an app served again on another loop (a test client
        per test) starts afresh."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._idle, self._slots = loop, [], asyncio.Semaphore(self.size)

    async def job_row(self, job_id: str, tenant: str) -> Any | None:
        if "\x00" in job_id or "\x00" in tenant:  # as PostgreSQL would refuse it elsewhere: the client's error
            raise DataError(_POLL_SQL, (job_id, tenant), ValueError("NUL character in a text value"))
        self._bind()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._slots:
                    return await self._query(job_id, tenant)
        except TimeoutError:
            raise PoolTimeout(f"no job poll answered within {self.timeout_s:.0f} s") from None

    async def _query(self, job_id: str, tenant: str) -> Any | None:
        reused = bool(self._idle)
        connection = self._idle.pop() if reused else await self._connect()
        try:
            cursor = await connection.execute(_POLL_SQL, (job_id, tenant))
            row = await cursor.fetchone()
        except psycopg.OperationalError as error:
            await self._discard(connection, *self._idle)
            self._idle.clear()
            if not reused:
                raise OperationalError(_POLL_SQL, (job_id, tenant), error) from error
            return await self._query(job_id, tenant)
        except BaseException:  # cancelled mid-query (the client left): the connection's state is unknown
            await self._discard(connection)
            raise
        self._idle.append(connection)
        return row

    async def _connect(self) -> psycopg.AsyncConnection:
        try:
            return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, row_factory=namedtuple_row)
        except psycopg.OperationalError as error:
            raise OperationalError("connect", None, error) from error

    @staticmethod
    async def _discard(*connections: psycopg.AsyncConnection) -> None:
        for connection in connections:
            try:
                await connection.close()
            except psycopg.Error:
                pass

    async def close(self) -> None:
        await self._discard(*self._idle)
        self._idle.clear()


def make_job_reader(url: str) -> JobReader:
    if make_url(url).get_backend_name() == "postgresql":
        return AsyncPostgresJobReader(url)
    return ThreadedJobReader(url)
