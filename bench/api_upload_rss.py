"""Peak RSS growth of the API process while a 1 GiB upload streams in (aim: under 64 MiB): the body is generated on
the fly by the client, sent without being held anywhere, and stored in PostgreSQL (database blob storage).
Writes bench/results/api_upload_rss.json.

    .venv/bin/python bench/api_upload_rss.py [--mib 1024] [--storage database|local]
"""

import argparse
import threading
import time

import httpx
from _common import write_result
from api_service import api_process

PIECE = bytes(range(256)) * 256  # 64 KiB, not all zeros
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.peak = pid, interval_s, rss_bytes(pid)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def multipart_body(total: int):
    yield b'--bench\r\nContent-Disposition: form-data; name="kind"\r\n\r\nmodel\r\n'
    yield (
        b'--bench\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    for _ in range(total // len(PIECE)):
        yield PIECE
    yield b"\r\n--bench--\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--storage", choices=["database", "local"], default="database")
    args = parser.parse_args()
    size = args.mib * MIB
    with api_process(storage_backend=args.storage, max_upload_bytes=2 * size) as (
        base_url,
        pid,
        _,
        headers,
    ):
        with httpx.Client(timeout=None, headers=headers) as client:
            # Warm-up: the first upload imports and allocates what every later one reuses.
            client.post(f"{base_url}/v1/artifacts", files={"file": ("warm.bin", PIECE * 16)}).raise_for_status()
            baseline = rss_bytes(pid)
            sampler = RssSampler(pid)
            sampler.start()
            started = time.perf_counter()
            response = client.post(
                f"{base_url}/v1/artifacts",
                content=multipart_body(size),
                headers={"Content-Type": "multipart/form-data; boundary=bench"},
            )
            elapsed = time.perf_counter() - started
            peak = sampler.stop()
        response.raise_for_status()
        assert response.json()["size_bytes"] == size
    result = {
        "benchmark": "API process RSS during a streamed upload",
        "upload_mib": args.mib,
        "storage_backend": args.storage,
        "baseline_rss_mib": round(baseline / MIB, 1),
        "peak_rss_mib": round(peak / MIB, 1),
        "peak_growth_mib": round((peak - baseline) / MIB, 1),
        "upload_s": round(elapsed, 1),
        "throughput_mib_s": round(args.mib / elapsed, 1),
        "aim_mib": 64,
    }
    print(write_result("api_upload_rss", result))
    print(
        f"{args.mib} MiB upload: RSS {result['baseline_rss_mib']} → {result['peak_rss_mib']} MiB "
        f"(growth {result['peak_growth_mib']} MiB), {result['upload_s']} s"
    )


if __name__ == "__main__":
    main()
