"""core.jail: the limits a jailed process runs under, and the refusals that keep the engine from running unjailed by
accident (SQUEEZER_JAIL=none without SQUEEZER_ALLOW_UNJAILED_ENGINE, or no working bubblewrap)."""

import json
import resource
import subprocess
import sys

import pytest

from squeezer.core import jail as jail_module
from squeezer.core.jail import Jail, JailLimits, JailMode, JailUnavailable, check_jail, configured_jail

LIMITS = JailLimits(memory_bytes=3 << 30, processes=300, file_bytes=1 << 20, open_files=128)
READ_LIMITS = """
import json, os, resource
names = ["RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE"]
print(json.dumps({name: resource.getrlimit(getattr(resource, name))[0] for name in names} | {"uid": os.getuid()}))
"""


@pytest.mark.parametrize("mode", [JailMode.BWRAP, JailMode.NONE])
def test_a_jailed_process_runs_under_its_limits(tmp_path, mode):
    process = Jail(mode).start(
        [sys.executable, "-c", READ_LIMITS], LIMITS, writable=[tmp_path], cwd=tmp_path, stdin=subprocess.DEVNULL
    )
    out, _ = process.communicate(timeout=60)
    seen = json.loads(out)
    assert (seen.pop("RLIMIT_AS"), seen.pop("RLIMIT_NPROC")) == (3 << 30, 300)
    assert (seen.pop("RLIMIT_FSIZE"), seen.pop("RLIMIT_NOFILE"), seen.pop("RLIMIT_CORE")) == (1 << 20, 128, 0)
    if mode is JailMode.BWRAP:
        assert seen["uid"] != 0


def test_a_file_past_the_size_limit_cannot_be_written(tmp_path):
    write = f"open({str(tmp_path / 'big')!r}, 'wb').write(bytes(2 << 20))"
    jail_module.hand_over(tmp_path)
    process = Jail().start(
        [sys.executable, "-c", write], LIMITS, writable=[tmp_path], cwd=tmp_path, stderr=subprocess.PIPE
    )
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0 and b"File too large" in err and (tmp_path / "big").stat().st_size <= 1 << 20


def test_no_jail_is_refused_unless_allowed():
    with pytest.raises(JailUnavailable, match="SQUEEZER_ALLOW_UNJAILED_ENGINE"):
        configured_jail("none", allow_unjailed=False)
    assert configured_jail("none", allow_unjailed=True).mode is JailMode.NONE
    assert configured_jail("bwrap", allow_unjailed=False).mode is JailMode.BWRAP


def test_a_missing_bwrap_is_refused_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without bwrap
    jail_module._bwrap_problem.cache_clear()
    try:
        with pytest.raises(JailUnavailable, match="not installed.*apt-get install bubblewrap"):
            check_jail(JailMode.BWRAP, allow_unjailed=False)
    finally:
        jail_module._bwrap_problem.cache_clear()


def test_the_limits_are_the_child_s_only(tmp_path):
    before = resource.getrlimit(resource.RLIMIT_AS)
    process = Jail().start(
        [sys.executable, "-c", READ_LIMITS], LIMITS, writable=[tmp_path], cwd=tmp_path, stdin=subprocess.DEVNULL
    )
    process.communicate(timeout=60)
    assert resource.getrlimit(resource.RLIMIT_AS) == before  # set in the child between fork and exec only
