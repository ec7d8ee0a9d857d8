"""Runs a function on untrusted input in a disposable, limited child process and returns its JSON result.

Why: parsing, converting and running an uploaded model (onnx, onnx2torch, onnxruntime) or decoding a data set can
inflate to gigabytes, spin, or crash; none of that may happen in a server process. And a file that names a path
(ONNX external data, an archive member) must find nothing to read: the child's working directory is an empty
temporary directory and its environment (/proc/self/environ included) holds no database URL, broker URL or keys.

How: one "zygote" process is started with a clean environment and imports the heavy modules once; every call forks a
fresh child from it, which sets its memory (RLIMIT_AS) and CPU (RLIMIT_CPU) limits and changes into its own empty
directory before it touches the input. The zygote kills a child past its wall-clock limit and reports how each one
ended with its peak memory. Results and errors travel as JSON, never as pickles, so a compromised child cannot
attack the caller. A target is named "package.module:function"; it takes one JSON-able dict and returns one.
"""

import atexit
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
from pathlib import Path

from core.errors import InputError, SqueezerError

# Environment variables a child may see: nothing that could name a secret.
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
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
    """One zygote per process, started on first use, restarted if it dies; thread-safe."""

    def __init__(self, limits: SandboxLimits, preload: tuple[str, ...] = ()):
        self.limits = limits
        self.preload = preload
        self._lock = threading.Lock()
        self._zygote: subprocess.Popen | None = None
        self._home: Path | None = None
        self._waiting: dict[int, tuple[threading.Event, list]] = {}
        self._next_id = 0

    def run(self, target: str, payload: dict, limits: SandboxLimits | None = None) -> dict:
        """The target's result; raises the target's SqueezerError as an InputError with its code, or a
        SandboxError naming the limit that was hit. `limits` override the sandbox's own for this call."""
        limits = limits or self.limits
        outcome = self.run_outcome(target, payload, limits)
        if outcome.result is not None:
            return outcome.result
        if outcome.error and outcome.error.get("kind") == "input":
            raise InputError(outcome.error["message"], code=outcome.error["code"])
        if outcome.timed_out or outcome.exit_status == -signal.SIGXCPU:
            raise SandboxTimeout(
                f"the input check took longer than its limit ({limits.wall_s:g} s wall, {limits.cpu_s} s CPU; "
                f"raise {limits.setting}_TIMEOUT_S / {limits.setting}_CPU_S)"
            )
        if (outcome.error or {}).get("code") == SandboxOutOfMemory.code:
            raise SandboxOutOfMemory(
                f"the input check ran out of memory (limit {limits.memory_bytes / 2**30:.1f} GiB of address space; "
                f"raise {limits.setting}_MEMORY_BYTES)"
            )
        raise SandboxError(
            "the input check crashed"
            + (f" ({outcome.error['message']})" if outcome.error else f" (exit status {outcome.exit_status})")
        )

    def run_outcome(self, target: str, payload: dict, limits: SandboxLimits | None = None) -> Outcome:
        limits = limits or self.limits
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
            result = error = None
            if result_path.is_file() and 0 < result_path.stat().st_size <= _MAX_RESULT_BYTES:
                try:
                    written = json.loads(result_path.read_text())
                    result, error = written.get("result"), written.get("error")
                except (ValueError, AttributeError):
                    error = {"code": SandboxError.code, "message": "unreadable result"}
            return Outcome(
                result, error, report["status"], report["timed_out"], report["maxrss_kb"] * 1024, report["cpu_s"]
            )

    def close(self) -> None:
        with self._lock:
            zygote, self._zygote = self._zygote, None
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
        env = {key: os.environ[key] for key in _PASSED_ENV if key in os.environ}
        env.update(HOME=str(self._home), PYTHONPATH=str(Path(__file__).resolve().parent.parent), PYTHONNOUSERSITE="1")
        self._zygote = subprocess.Popen(
            [sys.executable, "-m", "core.sandbox", *self.preload],
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


def shared_sandbox(limits: SandboxLimits, preload: tuple[str, ...] = ()) -> Sandbox:
    """One sandbox (one zygote) per preload list in this process, closed at exit: apps created again and again
    (tests, reloads) share one zygote instead of importing the engine each time. Pass `limits` to each run."""
    with _shared_lock:
        key = preload
        if key not in _shared:
            _shared[key] = Sandbox(limits, preload)
            if len(_shared) == 1:
                atexit.register(_close_shared)
        return _shared[key]


def _close_shared() -> None:
    for sandbox in _shared.values():
        sandbox.close()


# -- the zygote and its children (run as `python -m core.sandbox MODULE...`) -------------------------------------


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
        resource.setrlimit(resource.RLIMIT_CPU, (request["cpu_s"], request["cpu_s"] + 5))
        os.chdir(request["cwd"])
        module_name, _, function_name = request["target"].partition(":")
        try:
            output = {"result": getattr(importlib.import_module(module_name), function_name)(request["payload"])}
        except SqueezerError as error:
            output = {"error": {"code": error.code, "message": error.message, "kind": "input"}}
        except MemoryError:
            output = {"error": {"code": SandboxOutOfMemory.code, "message": "out of memory", "kind": "limit"}}
        except Exception as error:
            out_of_memory = "can't allocate memory" in str(error) or "bad_alloc" in str(error)
            output = {
                "error": {
                    "code": SandboxOutOfMemory.code if out_of_memory else SandboxError.code,
                    "message": type(error).__name__,
                    "kind": "limit" if out_of_memory else "crash",
                }
            }
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


if __name__ == "__main__":
    _zygote(sys.argv[1:])
