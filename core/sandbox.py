"""Runs a function on untrusted input in a disposable, limited child process and returns its JSON result.

Why: parsing, converting and running an uploaded model (onnx, onnx2torch, onnxruntime) or decoding a data set can
inflate to gigabytes, spin, or crash; none of that may happen in a server process. And a file that names a path
(ONNX external data, an archive member) must find nothing to read: the child's working directory is an empty
temporary directory and its environment (/proc/self/environ included) holds no database URL, broker URL or keys.

How, jailed (a `core.jail.Jail` in bwrap mode, what the API uses): each call starts a fresh interpreter in its own
jail (core.jail: an unprivileged uid, its own PID, mount, IPC, UTS and network namespaces, no secret, the input
folders read-only, resource limits), which imports the modules it is told to, sets its memory and CPU limits, changes
into its own empty directory and runs the target once. Its whole process tree ends with it, and with the caller.

How, unjailed (no jail, or SQUEEZER_JAIL=none): one "zygote" process is started with a clean environment and
imports the heavy modules once; every call forks a fresh child from it, which sets its memory (RLIMIT_AS) and CPU
(RLIMIT_CPU) limits and changes into its own empty directory before it touches the input. The zygote kills a child
past its wall-clock limit and reports how each one ended with its peak memory. Faster (no imports per call), but the
child runs as the caller's uid, sees the host's processes and network, and what it starts may outlive it.

Either way results and errors travel as JSON, never as pickles, so a compromised child cannot attack the caller. A
target is named "package.module:function"; it takes one JSON-able dict and returns one.
"""

import atexit
import contextlib
import dataclasses
import importlib
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from squeezer.core.errors import InputError, SqueezerError, is_out_of_memory
from squeezer.core.jail import (
    Jail,
    JailLimits,
    JailMode,
    Spare,
    SparePool,
    clean_environment,
    hand_over,
    kill_tree,
    python_command,
    start_spare,
)

_MAX_RESULT_BYTES = 1 << 20
_POLL_S = 0.05


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """`memory_bytes`: address space of the child (RLIMIT_AS; the zygote's imports count, about 4 GiB with torch).
    `cpu_s`: CPU seconds (RLIMIT_CPU). `wall_s`: seconds from fork to exit. `setting`: the name of the setting
    prefix that raises them, quoted in refusals."""

    memory_bytes: int
    cpu_s: int
    wall_s: float
    setting: str = "SQUEEZER_CHECK"


class SandboxError(InputError):
    """The child did not return a result: it ran out of memory or time, or crashed."""

    code = "input_check_crashed"


class SandboxOutOfMemory(SandboxError):
    code = "input_check_out_of_memory"


class SandboxTimeout(SandboxError):
    code = "input_check_timeout"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a child ended: its JSON result (or error) and what it used."""

    result: dict | None
    error: dict | None  # {"code", "message", "kind"}: a SqueezerError (kind "input") or an unexpected failure
    exit_status: int
    timed_out: bool
    peak_rss_bytes: int
    cpu_s: float


class Sandbox:
    """Jailed: one jail per call. Unjailed: one zygote per sandbox, started on first use, restarted if it dies.
    Thread-safe."""

    def __init__(self, limits: SandboxLimits, preload: tuple[str, ...] = (), jail: Jail | None = None):
        self.limits = limits
        self.preload = preload
        self.jail = jail if jail is not None and jail.mode is JailMode.BWRAP else None
        self._lock = threading.Lock()
        self._zygote: subprocess.Popen | None = None
        self._home: Path | None = None
        self._waiting: dict[int, tuple[threading.Event, list]] = {}
        self._pool: SparePool | None = None
        self._next_id = 0

    def run(
        self, target: str, payload: dict, limits: SandboxLimits | None = None, visible: tuple[Path, ...] = ()
    ) -> dict:
        """The target's result; raises the target's SqueezerError as an InputError with its code, or a
        SandboxError naming the limit that was hit. `limits` override the sandbox's own for this call; `visible`:
        the folders the payload's paths are in (a jail sees nothing else; they are handed to its uid)."""
        limits = limits or self.limits
        return _result_or_raise(self.run_outcome(target, payload, limits, visible), limits)

    def run_outcome(
        self, target: str, payload: dict, limits: SandboxLimits | None = None, visible: tuple[Path, ...] = ()
    ) -> Outcome:
        limits = limits or self.limits
        if self.jail is not None:
            return self._run_jailed(self.jail, target, payload, limits, visible)
        with tempfile.TemporaryDirectory(prefix="squeezer-sandbox-") as tmp:
            work, result_path = Path(tmp) / "work", Path(tmp) / "result.json"
            work.mkdir(mode=0o700)
            request = {
                "target": target,
                "payload": payload,
                "cwd": str(work),
                "result": str(result_path),
                "memory_bytes": limits.memory_bytes,
                "cpu_s": limits.cpu_s,
                "wall_s": limits.wall_s,
            }
            done = threading.Event()
            slot: list = []
            with self._lock:
                self._ensure_zygote()
                self._next_id += 1
                request["id"] = request_id = self._next_id
                self._waiting[request_id] = (done, slot)
                assert self._zygote is not None and self._zygote.stdin is not None  # started with stdin=PIPE
                try:
                    self._zygote.stdin.write((json.dumps(request) + "\n").encode())
                    self._zygote.stdin.flush()
                except (BrokenPipeError, OSError):
                    self._waiting.pop(request_id, None)
                    return Outcome(None, {"code": SandboxError.code, "message": "sandbox unavailable"}, -1, False, 0, 0)
            # The zygote enforces wall_s; the margin covers fork and reporting, and a zygote that died.
            if not done.wait(limits.wall_s + 30):
                with self._lock:
                    self._waiting.pop(request_id, None)
                return Outcome(None, None, -1, True, 0, 0)
            report = slot[0]
            result, error, _ = _read_result(result_path)
            return Outcome(
                result, error, report["status"], report["timed_out"], report["maxrss_kb"] * 1024, report["cpu_s"]
            )

    @contextlib.contextmanager
    def workspace(self, limits: SandboxLimits | None = None) -> Iterator["Workspace"]:
        """A folder for one call's inputs and the call to run on them. Jailed, the folder is that of a jail started
        ahead of the call (its imports done while the inputs were fetched): the fast way to run one call."""
        limits = limits or self.limits
        if self.jail is None:
            with tempfile.TemporaryDirectory(prefix="squeezer-sandbox-inputs-") as tmp:
                yield Workspace(Path(tmp), lambda target, payload: self.run_outcome(target, payload, limits), limits)
            return
        spare = self._spares(limits).take()
        try:
            folder = spare.folder / "inputs"
            folder.mkdir()
            yield Workspace(folder, lambda target, payload: _run_in(spare, target, payload, limits), limits)
        finally:
            spare.close()

    def _spares(self, limits: SandboxLimits) -> SparePool:
        """The pool of ready jails for `limits` (one pool at a time: a call under other limits replaces it)."""
        jail_limits = JailLimits(memory_bytes=limits.memory_bytes)
        with self._lock:
            if self._pool is None or self._pool.limits != jail_limits:
                if self._pool is not None:
                    self._pool.close()
                assert self.jail is not None  # only jailed sandboxes keep spares
                self._pool = SparePool(self.jail, _jailed_command(self.preload), jail_limits, stdout=subprocess.DEVNULL)
            return self._pool

    def _run_jailed(
        self, jail: Jail, target: str, payload: dict, limits: SandboxLimits, visible: tuple[Path, ...]
    ) -> Outcome:
        for folder in visible:
            hand_over(folder)
        spare = start_spare(
            jail,
            _jailed_command(self.preload),
            JailLimits(memory_bytes=limits.memory_bytes),
            stdout=subprocess.DEVNULL,
            readable=visible,
        )
        try:
            return _run_in(spare, target, payload, limits)
        finally:
            spare.close()

    def close(self) -> None:
        with self._lock:
            zygote, self._zygote = self._zygote, None
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if zygote is not None and zygote.stdin is not None:
            zygote.stdin.close()
            try:
                zygote.wait(10)
            except subprocess.TimeoutExpired:
                zygote.kill()
                zygote.wait()
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    def _ensure_zygote(self) -> None:
        if self._zygote is not None and self._zygote.poll() is None:
            return
        self._fail_waiting()
        if self._home is None:
            self._home = Path(tempfile.mkdtemp(prefix="squeezer-zygote-"))
        env = clean_environment({"HOME": str(self._home)}, self.preload)
        self._zygote = subprocess.Popen(
            [sys.executable, "-m", "squeezer.core.sandbox", *self.preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=self._home,
            env=env,
            close_fds=True,
        )
        threading.Thread(target=self._read_reports, args=(self._zygote,), daemon=True).start()

    def _read_reports(self, zygote: subprocess.Popen) -> None:
        assert zygote.stdout is not None  # started with stdout=PIPE
        for line in zygote.stdout:
            report = json.loads(line)
            with self._lock:
                waiting = self._waiting.pop(report["id"], None)
            if waiting is not None:
                waiting[1].append(report)
                waiting[0].set()
        with self._lock:
            if self._zygote is zygote:
                self._fail_waiting()

    def _fail_waiting(self) -> None:
        """Callers waiting on a zygote that died end as crashes (called with the lock held)."""
        for done, slot in self._waiting.values():
            slot.append({"status": -1, "timed_out": False, "maxrss_kb": 0, "cpu_s": 0.0})
            done.set()
        self._waiting.clear()


_shared: dict[tuple, Sandbox] = {}
_shared_lock = threading.Lock()


def shared_sandbox(limits: SandboxLimits, preload: tuple[str, ...] = (), jail: Jail | None = None) -> Sandbox:
    """One sandbox per preload list and jail in this process, closed at exit: apps created again and again (tests,
    reloads) share one unjailed zygote instead of importing the engine each time. Pass `limits` to each run."""
    with _shared_lock:
        key = (preload, jail)
        if key not in _shared:
            _shared[key] = Sandbox(limits, preload, jail)
            if len(_shared) == 1:
                atexit.register(_close_shared)
        return _shared[key]


def _close_shared() -> None:
    for sandbox in _shared.values():
        sandbox.close()


@dataclasses.dataclass(frozen=True)
class Workspace:
    """One call's input folder (`folder`) and the call: `run` / `run_outcome` as Sandbox's, on inputs in it."""

    folder: Path
    _call: Callable[[str, dict], Outcome]
    limits: SandboxLimits

    def run_outcome(self, target: str, payload: dict) -> Outcome:
        return self._call(target, payload)

    def run(self, target: str, payload: dict) -> dict:
        return _result_or_raise(self.run_outcome(target, payload), self.limits)


def _result_or_raise(outcome: Outcome, limits: SandboxLimits) -> dict:
    """A call past its limits is a timeout even where it wrote its result in time but was seen to exit only after
    the deadline: the verdict does not depend on when the parent looked."""
    if outcome.timed_out or outcome.exit_status == -signal.SIGXCPU:
        raise SandboxTimeout(
            f"the input check took longer than its limit ({limits.wall_s:g} s wall, {limits.cpu_s} s CPU; "
            f"raise {limits.setting}_TIMEOUT_S / {limits.setting}_CPU_S)"
        )
    if outcome.result is not None:
        return outcome.result
    if outcome.error and outcome.error.get("kind") == "input":
        raise InputError(outcome.error["message"], code=outcome.error["code"])
    if (outcome.error or {}).get("code") == SandboxOutOfMemory.code:
        raise SandboxOutOfMemory(
            f"the input check ran out of memory (limit {limits.memory_bytes / 2**30:.1f} GiB of address space; "
            f"raise {limits.setting}_MEMORY_BYTES)"
        )
    raise SandboxError(
        "the input check crashed"
        + (f" ({outcome.error['message']})" if outcome.error else f" (exit status {outcome.exit_status})")
    )


def _jailed_command(preload: tuple[str, ...]) -> list[str]:
    return python_command("squeezer.core.sandbox", _JAILED, *preload)


def _run_in(spare: Spare, target: str, payload: dict, limits: SandboxLimits) -> Outcome:
    """Runs one call in the jailed interpreter `spare` (started with _jailed_command), its folder handed over."""
    result_path = spare.folder / "result.json"
    hand_over(spare.folder)
    spare.send(
        {
            "target": target,
            "payload": payload,
            "cwd": str(spare.folder / "work"),
            "result": str(result_path),
            "memory_bytes": limits.memory_bytes,
            "cpu_s": limits.cpu_s,
        }
    )
    try:
        spare.process.wait(limits.wall_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        kill_tree(spare.process)
    returncode = spare.process.returncode
    status = returncode if returncode <= 128 else 128 - returncode  # bwrap passes on a signal as 128 + it
    result, error, usage = _read_result(result_path)
    return Outcome(result, error, status, timed_out, usage.get("maxrss_kb", 0) * 1024, usage.get("cpu_s", 0.0))


def _read_result(path: Path) -> tuple[dict | None, dict | None, dict]:
    """(result, error, usage) from a child's result file, bounded; (None, None, {}) when it wrote none."""
    if not (path.is_file() and not path.is_symlink() and 0 < path.stat().st_size <= _MAX_RESULT_BYTES):
        return (None, None, {})
    try:
        written = json.loads(path.read_text())
        return (written.get("result"), written.get("error"), written.get("usage") or {})
    except (ValueError, AttributeError):
        return (None, {"code": SandboxError.code, "message": "unreadable result"}, {})


# -- the children: jailed, `python -m core.sandbox --jailed MODULE...` (its request on stdin); unjailed, the zygote
# `python -m core.sandbox MODULE...` and the children it forks -------------------------------------------------
_JAILED = "--jailed"


def _child(request: dict) -> None:
    """In the forked child: limits first, then the empty directory, then the untrusted work. Never returns."""
    status = 1
    try:
        result_file = open(request["result"], "w")  # noqa: SIM115 (opened before the chdir, closed by _exit)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(2, 1)  # the zygote's stdout is its report channel; libraries that print go to stderr
        memory = request["memory_bytes"]
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = int(usage.ru_utime + usage.ru_stime) + request["cpu_s"]  # a jailed child's imports came first
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        os.chdir(request["cwd"])
        module_name, _, function_name = request["target"].partition(":")
        try:
            output = {"result": getattr(importlib.import_module(module_name), function_name)(request["payload"])}
        except SqueezerError as error:
            output = {"error": {"code": error.code, "message": error.message, "kind": "input"}}
        except Exception as error:
            out_of_memory = is_out_of_memory(error)
            output = {
                "error": {
                    "code": SandboxOutOfMemory.code if out_of_memory else SandboxError.code,
                    "message": type(error).__name__,
                    "kind": "limit" if out_of_memory else "crash",
                }
            }
        usage = resource.getrusage(resource.RUSAGE_SELF)
        output["usage"] = {"maxrss_kb": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}
        json.dump(output, result_file)
        result_file.close()
        status = 0
    finally:
        os._exit(status)


def _zygote(preload: list[str]) -> None:
    for module in preload:
        importlib.import_module(module)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: dict[int, dict] = {}  # pid -> {"id", "deadline", "timed_out"}
    buffer = b""
    stdin_open = True
    while stdin_open or children:
        if stdin_open and select.select([0], [], [], _POLL_S)[0]:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                stdin_open = False
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request)
                children[pid] = {
                    "id": request["id"],
                    "deadline": time.monotonic() + request["wall_s"],
                    "timed_out": False,
                }
        elif not stdin_open:
            time.sleep(_POLL_S)
        now = time.monotonic()
        for pid, child in children.items():
            if not child["timed_out"] and now > child["deadline"]:
                child["timed_out"] = True
                os.kill(pid, signal.SIGKILL)
        while children:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                break
            child = children.pop(pid)
            report = {
                "id": child["id"],
                "status": os.waitstatus_to_exitcode(status),
                "timed_out": child["timed_out"],
                "maxrss_kb": usage.ru_maxrss,
                "cpu_s": usage.ru_utime + usage.ru_stime,
            }
            os.write(1, (json.dumps(report) + "\n").encode())


def _jailed(preload: list[str]) -> None:
    """A jailed child: imports `preload`, then runs the one request its parent sends on stdin (none: it exits)."""
    for module in preload:
        importlib.import_module(module)
    line = sys.stdin.readline()
    if not line:
        os._exit(0)
    _child(json.loads(line))


if __name__ == "__main__":
    if sys.argv[1:2] == [_JAILED]:
        _jailed(sys.argv[2:])
    else:
        _zygote(sys.argv[1:])
