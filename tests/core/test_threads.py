"""Compute threads sized to a job's share of the machine (core.jail.threads_per_job): a jailed engine started with
`thread_environment` runs torch and its onnxruntime sessions on that many threads."""

import os

import pytest

from squeezer.core.jail import (
    Jail,
    JailLimits,
    SparePool,
    python_command,
    thread_environment,
    threads_per_job,
    usable_cores,
)
from squeezer.worker.engine_process import EngineRun

JAIL = Jail(packages=("squeezer.core", "tests"))
TARGETS = "tests.core.thread_targets"


@pytest.mark.parametrize("jobs, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 16, 8), (3, 16, 5)])
def test_each_job_gets_an_equal_share_of_the_cores(jobs, cores, threads):
    assert threads_per_job(jobs, cores) == threads


def test_a_jailed_engine_runs_on_its_share():
    assert threads_per_job(1) == usable_cores() == len(os.sched_getaffinity(0))
    pool = SparePool(
        JAIL,
        python_command("squeezer.core.jail_entry"),
        JailLimits(memory_bytes=6 << 30),
        env=thread_environment(1),
    )
    try:
        run = EngineRun(pool.take(), lambda event: None, lambda: False)
        seen = run.run(f"{TARGETS}:report_threads", {})
    finally:
        pool.close()
        run.spare.close()
    assert seen == {"torch": 1, "omp": "1"}
