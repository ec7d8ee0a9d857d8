"""Blob-store throughput: one file stored (store.artifacts.store_artifact, which hashes as it goes) and exported back
(export_artifact_to, which checks size and sha256) on the local backend and on S3 (a SeaweedFS `weed mini` on
loopback, as the tests start it), with boto3's own threaded multipart upload of the same bytes beside ours, which
sends one part at a time to hold one part in memory. Prints MiB/s; on a loaded machine compare rows of one run only.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python bench/blob_throughput.py [--mib 256]
"""

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from squeezer.store.artifacts import export_artifact_to, store_artifact
from squeezer.store.blobs import BlobStore, LocalBlobStore
from squeezer.store.db import make_engine, make_session_factory
from squeezer.store.migrate import upgrade_database
from squeezer.store.s3_blobs import S3BlobStore
from squeezer.store.settings import Settings
from tests.servers import S3Server


def round_trip(sessions, blobs: BlobStore, block: bytes, mib: int, out: Path) -> tuple[float, float]:
    started = time.monotonic()
    artifact = store_artifact(
        sessions,
        blobs,
        tenant="bench",
        kind="dataset",
        filename="f",
        content_type="x",
        chunks=(block for _ in range(mib)),
        max_bytes=mib << 20,
    )
    stored = time.monotonic()
    export_artifact_to(sessions, blobs, artifact.id, out)
    return mib / (stored - started), mib / (time.monotonic() - stored)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    mib = parser.parse_args().mib
    root = Path(tempfile.mkdtemp(prefix="blob-bench-"))
    url = f"sqlite:///{root / 'db.sqlite'}"
    upgrade_database(url)
    sessions = make_session_factory(make_engine(url))
    server = S3Server(root / "s3").start()
    try:
        server.client().create_bucket(Bucket="bench")
        s3 = S3BlobStore.from_settings(Settings(**server.settings_fields("bench")))
        block = os.urandom(1 << 20)
        for name, blobs in (("local", LocalBlobStore(root / "blobs")), ("s3", s3)):
            up, down = round_trip(sessions, blobs, block, mib, root / "out")
            print(f"{name}: {mib} MiB store {up:.0f} MiB/s, export {down:.0f} MiB/s")
        data = block * mib
        for threads in (1, 4):
            started = time.monotonic()
            config = TransferConfig(multipart_chunksize=8 << 20, max_concurrency=threads)
            s3.client.upload_fileobj(io.BytesIO(data), "bench", f"threads-{threads}", Config=config)
            print(f"boto3 upload_fileobj, {threads} thread(s): {mib / (time.monotonic() - started):.0f} MiB/s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
