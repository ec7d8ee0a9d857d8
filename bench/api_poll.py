"""GET /v1/jobs/{id} throughput and latency: a loopback load generator (httpx, one keep-alive client per thread)
against one API process (uvicorn, one worker) on PostgreSQL. Writes bench/results/api_poll.json.

    .venv/bin/python bench/api_poll.py [--threads 8] [--seconds 10]
"""

import argparse
import os
import platform
import statistics
import threading
import time

import httpx
from _common import write_result
from api_service import api_process

from store.db import make_engine, make_session_factory
from store.jobs import create_job


def poll(
    url: str,
    until: float,
    latencies: list[float],
    statuses: dict[int, int],
    lock: threading.Lock,
    etag: bool,
    auth: dict[str, str],
) -> None:
    mine: list[float] = []
    seen: dict[int, int] = {}
    tag = None
    with httpx.Client(headers=auth) as client:
        while (start := time.perf_counter()) < until:
            response = client.get(
                url, headers={"If-None-Match": tag} if etag and tag else {}
            )
            mine.append(time.perf_counter() - start)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            tag = response.headers.get("etag", tag)
    with lock:
        latencies.extend(mine)
        for code, count in seen.items():
            statuses[code] = statuses.get(code, 0) + count


def run(base_url: str, job_id: str, threads: int, seconds: float, etag: bool, auth: dict[str, str]) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    until = time.perf_counter() + seconds
    workers = [
        threading.Thread(
            target=poll,
            args=(
                f"{base_url}/v1/jobs/{job_id}",
                until,
                latencies,
                statuses,
                lock,
                etag,
                auth,
            ),
        )
        for _ in range(threads)
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "if_none_match": etag,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2),
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with api_process() as (base_url, _, database_url, headers):
        engine = make_engine(database_url)
        with make_session_factory(engine)() as session:
            job, _ = create_job(
                session,
                tenant="default",
                spec={
                    "model": {"artifact_id": "art_bench"},
                    "dataset": {"sample": "digits"},
                },
                idempotency_key=None,
                request_hash=None,
                max_attempts=3,
            )
        engine.dispose()
        run(base_url, job.id, 2, 1.0, False, headers)  # warm-up: connection pools, imports
        results = [
            run(base_url, job.id, args.threads, args.seconds, etag, headers)
            for etag in (False, True)
        ]
    result = {
        "benchmark": "GET /v1/jobs/{id}",
        "setup": f"1 uvicorn process, PostgreSQL, loopback; load generator: {args.threads} Python threads × httpx keep-alive, {args.seconds}s per run",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible (shared with the load generator)",
        "runs": results,
    }
    print(write_result("api_poll", result))
    for item in results:
        print(
            f"If-None-Match={item['if_none_match']}: {item['requests_per_s']} req/s, p50 {item['p50_ms']} ms, p99 {item['p99_ms']} ms, {item['statuses']}"
        )


if __name__ == "__main__":
    main()
