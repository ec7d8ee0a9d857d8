"""GET /v1/jobs/{id} throughput and latency of one API process (`squeezer api`: uvicorn, one worker, API keys on, as
in production) on PostgreSQL, for several builds in the same run: by default the previous build (commit 6100030,
before the polling work; run without uvloop/httptools, which it did not install) and the working tree. Every build
runs its own API process, PostgreSQL and Redis; the builds' runs alternate, round by round, so load from other
processes on the machine hits them alike. Writes bench/results/api_poll.json.

Load generator: asyncio with uvloop when present, `--connections` keep-alive connections, each sending its next
request when the previous answer is in (closed loop), the request bytes built once: a few µs of client CPU per
request, so the shared cores go to the server rather than to the client. Latency = send to last body byte.

    .venv/bin/python bench/api_poll.py [--connections 8] [--seconds 5] [--rounds 3] [--builds 6100030,WORKTREE]

A build is a git revision (its tree is exported with `git archive`, the repository is left as it is), WORKTREE, or
the path of a source tree.
Target: ≥ 1,000 req/s with p99 ≤ 20 ms for the working tree.
"""

import argparse
import asyncio
import os
import platform
import random
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from _common import WORKTREE, build_tree, write_result
from api_service import api_process

from squeezer.store.db import make_engine, make_session_factory
from squeezer.store.jobs import create_job

TARGET_RPS, TARGET_P99_MS = 1000.0, 20.0
# Import blockers for a build whose pyproject.toml does not list uvloop/httptools: uvicorn then falls back to
# asyncio and h11, as that build ran in production.
_BLOCKED = ("uvloop", "httptools")


def export_build(revision: str, root: Path) -> tuple[Path, str | None]:
    """(source tree, extra import path) of `revision`."""
    tree = build_tree(revision, root)
    pyproject = (tree / "pyproject.toml").read_text()
    missing = [name for name in _BLOCKED if name not in pyproject]
    if not missing:
        return tree, None
    blockers = root / f"blockers-{tree.name}"
    blockers.mkdir(parents=True, exist_ok=True)
    for name in missing:
        (blockers / f"{name}.py").write_text(f"raise ImportError('{name} is not part of this build')\n")
    return tree, str(blockers)


async def _connection(
    host: str,
    port: int,
    request: bytes,
    conditional: bytes | None,
    until: float,
    latencies: list[float],
    statuses: dict[int, int],
) -> None:
    """One keep-alive connection in a closed loop; with `conditional`, requests carry the last ETag seen."""
    reader, writer = await asyncio.open_connection(host, port)
    tag = None
    try:
        while (start := time.perf_counter()) < until:
            writer.write(request if tag is None else conditional.replace(b"{tag}", tag))
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"etag" and conditional is not None:
                    tag = value.strip()
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            status = int(head[9:12])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def load(base_url: str, job_id: str, headers: dict[str, str], connections: int, seconds: float, etag: bool) -> dict:
    url = urlsplit(base_url)
    lines = [f"GET /v1/jobs/{job_id} HTTP/1.1", f"Host: {url.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    conditional = ("\r\n".join([*lines, "If-None-Match: {tag}"]) + "\r\n\r\n").encode() if etag else None
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def main() -> float:
        until = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _connection(url.hostname, url.port, request, conditional, until, latencies, statuses)
                for _ in range(connections)
            )
        )
        return time.perf_counter() - started

    elapsed = _event_loop_runner()(main())
    return {"requests": len(latencies), "elapsed_s": elapsed, "latencies": latencies, "statuses": statuses}


def _event_loop_runner():
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


def summarise(runs: list[dict]) -> dict:
    latencies = sorted(x for run in runs for x in run["latencies"])
    statuses: dict[str, int] = {}
    for run in runs:
        for code, count in run["statuses"].items():
            statuses[str(code)] = statuses.get(str(code), 0) + count
    rates = [run["requests"] / run["elapsed_s"] for run in runs]
    return {
        "requests": len(latencies),
        "requests_per_s": round(statistics.median(rates), 1),
        "requests_per_s_by_round": [round(rate, 1) for rate in rates],
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2),
        "statuses": statuses,
    }


def seed_job(database_url: str) -> str:
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        job, _ = create_job(
            session,
            tenant="default",
            spec={"model": {"artifact_id": "art_bench"}, "dataset": {"sample": "digits"}},
            idempotency_key=None,
            request_hash=None,
            max_attempts=3,
        )
    engine.dispose()
    return job.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="per build, kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--builds", default=f"6100030,{WORKTREE}", help="comma-separated git revisions or WORKTREE")
    parser.add_argument("--name", default="api_poll")
    args = parser.parse_args()
    builds = args.builds.split(",")
    samples: dict[tuple[str, bool], list[dict]] = {(build, etag): [] for build in builds for etag in (False, True)}
    with tempfile.TemporaryDirectory(prefix="squeezer-builds-") as tmp, ExitStack() as stack:
        servers = {}
        for build in builds:
            tree, pythonpath = export_build(build, Path(tmp))
            base_url, _, database_url, headers = stack.enter_context(api_process(repo=tree, pythonpath=pythonpath))
            servers[build] = (base_url, seed_job(database_url), headers, pythonpath is not None)
            load(base_url, servers[build][1], headers, 2, 1.0, False)  # warm-up: pools, imports
        order = random.Random(0)
        for round_number in range(args.rounds):
            for build in order.sample(builds, len(builds)):
                base_url, job_id, headers, _ = servers[build]
                for etag in (False, True):
                    samples[build, etag].append(load(base_url, job_id, headers, args.connections, args.seconds, etag))
            print(f"round {round_number + 1}/{args.rounds} done", flush=True)
    results = {
        build: {
            "uvloop_httptools_blocked": servers[build][3],
            **{("if_none_match" if etag else "plain"): summarise(samples[build, etag]) for etag in (False, True)},
        }
        for build in builds
    }
    current, previous = builds[-1], builds[0]
    speedup = results[current]["plain"]["requests_per_s"] / results[previous]["plain"]["requests_per_s"]
    passed = (
        results[current]["plain"]["requests_per_s"] >= TARGET_RPS
        and results[current]["plain"]["p99_ms"] <= TARGET_P99_MS
    )
    print(f"\n{'build':<10} {'request':<14} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}  statuses")
    for build, result in results.items():
        for kind in ("plain", "if_none_match"):
            r = result[kind]
            print(f"{build:<10} {kind:<14} {r['requests_per_s']:>8} {r['p50_ms']:>7} {r['p99_ms']:>7}  {r['statuses']}")
    print(
        f"{current} / {previous}: {speedup:.2f}x the polls/s; target ≥ {TARGET_RPS:.0f} req/s at p99 ≤ "
        f"{TARGET_P99_MS:.0f} ms -> {'PASS' if passed else 'FAIL'}"
    )
    print(
        write_result(
            args.name,
            {
                "benchmark": "GET /v1/jobs/{id}, builds side by side",
                "setup": (
                    f"per build: 1 `squeezer api` process (uvicorn, keys on), its own PostgreSQL; loopback; load: "
                    f"{args.connections} asyncio keep-alive connections, closed loop, {args.seconds}s per build, kind "
                    f"and round, {args.rounds} rounds, builds alternating; req/s = median over rounds, p50/p99 over "
                    f"all requests"
                ),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible (shared with the load generator), "
                f"load average {os.getloadavg()[0]:.1f} at the end",
                "builds": results,
                "speedup_plain": round(speedup, 3),
                "target": {"requests_per_s": TARGET_RPS, "p99_ms": TARGET_P99_MS},
                "pass": passed,
            },
        )
    )


if __name__ == "__main__":
    main()
