"""One API process for the API benchmarks: `squeezer api` (uvicorn) as a subprocess on a throwaway PostgreSQL and
Redis, the production shape (database blob storage, Celery dispatcher)."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from squeezer.store.db import make_engine, make_session_factory  # noqa: E402
from squeezer.store.keys import create_key  # noqa: E402
from squeezer.store.migrate import upgrade_database  # noqa: E402
from squeezer.store.models import DEFAULT_TENANT  # noqa: E402
from tests.servers import PostgresServer, RedisServer, free_port  # noqa: E402


@contextmanager
def api_process(repo: Path = REPO, pythonpath: str | None = None, **settings: str):
    """Yields (base_url, pid, database_url, headers) of a running API process with API keys on, as in production;
    `headers` carry a key of the default tenant. Every server is removed afterwards. `repo`: the source tree the
    API runs from (another build, see bench/api_poll.py); `pythonpath` is put in front of its import path."""
    root = Path(tempfile.mkdtemp(prefix="squeezer-bench-"))
    # Its own mkdtemp: initdb runs as the postgres user, who must own the folder (tests/servers.py).
    postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="squeezer-bench-pg-"))).start()
    redis = RedisServer(root / "redis").start()
    api = None
    try:
        database_url = postgres.create_database("bench")
        upgrade_database(database_url)
        with make_session_factory(make_engine(database_url))() as session:
            _, key = create_key(session, DEFAULT_TENANT, name="bench")
        port = free_port()
        env = {
            **os.environ,
            "SQUEEZER_DATABASE_URL": database_url,
            "SQUEEZER_BROKER_URL": redis.url,
            "SQUEEZER_DATA_DIR": str(root / "data"),
        }
        env.update({f"SQUEEZER_{key.upper()}": str(value) for key, value in settings.items()})
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
        api = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from cli.main import app; app()",
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base_url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if api.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the API process did not start") from None
            time.sleep(0.2)
        yield base_url, api.pid, database_url, {"Authorization": f"Bearer {key}"}
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
        redis.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)
