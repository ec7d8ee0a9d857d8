"""The jail every piece of engine work on untrusted input runs in: a job on a worker, a submission check in the API.

Why: the engine parses uploads (pickled archives, ONNX graphs, image folders) with large native libraries; code
execution inside it must find no secret to steal, no process to attack and nothing to keep running. So the jailed
process holds no database URL, broker URL, key or storage credential (its environment is built from nothing), and:
- it runs under an unprivileged uid (the `squeezer-job` system user, else 65534 "nobody") without capabilities;
- in its own PID, mount, IPC, UTS and network namespaces (bubblewrap, `bwrap`): it sees only its own processes,
  only the Python installation, the engine's source (read-only) and the folders it was given, no network at all;
- under resource limits (address space, processes, file size, open files, no core dumps);
- and its whole process tree ends with it: the PID namespace dies with its first process, and `--die-with-parent`
  plus a parent-death signal end it when the process that started it dies.

`JailMode.NONE` runs the same command as a plain child process with the same clean environment and limits but
without namespaces or a uid change; `check_jail` refuses it unless explicitly allowed, and refuses a root engine.
"""

import atexit
import ctypes
import dataclasses
import enum
import functools
import importlib.util
import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from squeezer.core.errors import SqueezerError

JOB_USER = "squeezer-job"
NOBODY = 65534
# Environment variables a jailed process may see: nothing that could name a secret.
PASSED_ENV = (
    "LANG",
    "LC_ALL",
    "TZ",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)
# The variables that size a process's compute threads (torch's intra-op pool is OpenMP's; onnxruntime's sessions in
# the engine take torch's count): set for a jailed engine by `thread_environment`.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
TMPFS_BYTES = 64 << 20
# The longest bwrap takes to exit once its namespace's init was killed (the kernel first kills every process in it).
NAMESPACE_EXIT_S = 10
_PR_SET_PDEATHSIG = 1


class JailMode(enum.StrEnum):
    BWRAP = "bwrap"
    NONE = "none"


class JailUnavailable(SqueezerError):
    """The jail cannot be used as configured: the worker or the API refuses to start engine work."""

    code = "jail_unavailable"


@dataclasses.dataclass(frozen=True)
class JailLimits:
    """Resource limits of the jailed process and every process it starts. `memory_bytes`: address space of each
    process (RLIMIT_AS; the engine's imports take about 4 GiB of it). `processes`: RLIMIT_NPROC, counted over the
    jail uid (threads included). `file_bytes`: the largest file it may write. `cpu_s`: CPU seconds, None for none."""

    memory_bytes: int
    processes: int = 2048
    file_bytes: int = 64 << 30
    open_files: int = 4096
    cpu_s: int | None = None


class JailedProcess(subprocess.Popen):
    """A Popen of a jail; `namespace_init`: (pid, start time) of bwrap's init in the jail's PID namespace, whose
    death ends every process in it."""

    namespace_init: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Jail:
    """How to jail engine work: the mode, and the packages it may import beside the Python installation (tests add
    their own)."""

    mode: JailMode = JailMode.BWRAP
    packages: tuple[str, ...] = ("squeezer.core",)

    def command(
        self,
        argv: Sequence[str],
        *,
        writable: Iterable[Path] = (),
        readable: Iterable[Path] = (),
        cwd: Path | None = None,
    ) -> list[str]:
        """`argv` (a Python module run as `[python, -m, module, ...]` by `python_command`) wrapped in the jail; the
        `writable` folders are the only paths of the host it can write and, with the `readable` ones, the only data
        it can see, each bound at its own path."""
        if self.mode is JailMode.NONE:
            return list(argv)
        binds = _bwrap_arguments(self.packages, list(writable), list(readable), cwd)
        return [*binds, "--", *_drop_privileges(), *argv]

    def start(
        self,
        argv: Sequence[str],
        limits: JailLimits,
        *,
        writable: Iterable[Path] = (),
        readable: Iterable[Path] = (),
        cwd: Path,
        env: dict[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.PIPE,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = None,
    ) -> JailedProcess:
        """Starts `argv` in the jail with `limits`, a clean environment (plus `env`) and `cwd`. It is killed if the
        thread that starts it ends (a parent-death signal), so start it from the thread that waits for it; end it
        with `kill_tree`."""
        environment = clean_environment(env, self.packages)
        process = JailedProcess(
            self.command(argv, writable=writable, readable=readable, cwd=cwd),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=environment,
            close_fds=True,
            start_new_session=True,
            preexec_fn=functools.partial(_limit_child, limits),
        )
        if self.mode is JailMode.BWRAP:
            process.namespace_init = _namespace_init(process)
        return process


def configured_jail(mode: str, *, allow_unjailed: bool, packages: tuple[str, ...] = ("squeezer.core",)) -> Jail:
    """The jail the settings ask for (SQUEEZER_JAIL, SQUEEZER_ALLOW_UNJAILED_ENGINE), checked now: a worker or an
    API refuses to start (JailUnavailable) rather than run the engine unjailed by accident."""
    jail = Jail(JailMode(mode), packages)
    check_jail(jail.mode, allow_unjailed=allow_unjailed)
    return jail


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: what a container or `taskset` gives it)."""
    return len(os.sched_getaffinity(0))


def threads_per_job(concurrent_jobs: int, cores: int | None = None) -> int:
    """Compute threads for each of `concurrent_jobs` jobs sharing `cores` (this machine's usable cores): an equal
    share, at least one. More threads than cores make OpenMP's waiting threads spin against each other: two jobs at
    torch's default on two cores ran fifteen times slower than one."""
    return max(1, (cores or usable_cores()) // max(1, concurrent_jobs))


def thread_environment(threads: int) -> dict[str, str]:
    """The environment that sizes a jailed process's compute threads to `threads`."""
    return {name: str(threads) for name in THREAD_VARIABLES}


def python_command(module: str, *args: str) -> list[str]:
    """This interpreter running `module`: the jail binds its installation read-only at the same path."""
    return [sys.executable, "-m", module, *args]


def clean_environment(
    extra: dict[str, str] | None = None, packages: Iterable[str] = ("squeezer.core",)
) -> dict[str, str]:
    """The whole environment of a jailed process: a few locale and thread settings, a PYTHONPATH that finds
    `packages`, a HOME inside its private /tmp, and `extra`; never a variable of the parent's beyond those."""
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    env.update(
        PATH="/usr/local/bin:/usr/bin:/bin",
        HOME="/tmp",
        TMPDIR="/tmp",
        PYTHONPATH=search_path(packages),
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra or {})
    return env


def package_folders(packages: Iterable[str]) -> list[Path]:
    """The folders the code of `packages` lies in, however they are installed (a wheel, an editable tree)."""
    folders: list[Path] = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            folders += [Path(location).resolve() for location in spec.submodule_search_locations]
    return folders


def search_path(packages: Iterable[str]) -> str:
    """PYTHONPATH for the top-level packages of `packages` that lie outside the Python installation (an editable
    tree, the tests' own)."""
    installed = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    top_level = {name.partition(".")[0] for name in packages}
    outside = {
        folder.parent
        for folder in package_folders(sorted(top_level))
        if not any(folder.is_relative_to(p) for p in installed)
    }
    return os.pathsep.join(str(folder) for folder in sorted(outside))


def kill_tree(process: subprocess.Popen) -> None:
    """Ends the jailed process and everything it started, and returns once they are gone. Jailed: bwrap's init in
    the PID namespace is killed (the kernel kills every process of the namespace before the init itself is gone),
    and waited for, since bwrap may exit before its init does. Unjailed, the process group is the best there is."""
    init = getattr(process, "namespace_init", None)
    if init is not None and _start_time(init[0]) == init[1]:
        _kill(init[0])
    if process.poll() is None:
        try:
            process.wait(NAMESPACE_EXIT_S if init is not None else 0)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                process.kill()
    process.wait()
    deadline = time.monotonic() + NAMESPACE_EXIT_S
    while init is not None and _start_time(init[0]) == init[1] and time.monotonic() < deadline:
        time.sleep(0.01)  # the init is still zapping its namespace (a zombie has no start time here: see below)


def _namespace_init(process: subprocess.Popen) -> tuple[int, int] | None:
    """bwrap's first child, its PID namespace's init, as soon as bwrap has started it."""
    deadline = time.monotonic() + NAMESPACE_EXIT_S
    while process.poll() is None and time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        except OSError:
            return None
        if children:
            start = _start_time(int(children[0]))
            return None if start is None else (int(children[0]), start)
        time.sleep(0.002)
    return None


def _start_time(pid: int) -> int | None:
    """The start time of a live process `pid` (None when it is gone or a zombie): tells it from a later one that
    reuses its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclasses.dataclass
class Spare:
    """A jailed interpreter in a fresh folder of its own (`folder`, bound writable, with `work/` its working
    directory and `tmp/` its TMPDIR): it imports its modules, then waits for its one request, a JSON line on stdin.
    Put the inputs in `folder`, `hand_over(folder)`, then `send` the request; `close` ends it and removes the folder.
    Its stderr goes to an anonymous file outside the jail (`stderr`)."""

    process: subprocess.Popen
    folder: Path
    limits: JailLimits
    stderr: IO[bytes]

    def send(self, request: dict) -> None:
        assert self.process.stdin is not None  # started with stdin=PIPE
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died while waiting; whoever waits for it sees how it ended

    def stderr_tail(self, size: int = 4096) -> str:
        self.stderr.seek(max(0, os.fstat(self.stderr.fileno()).st_size - size))
        return self.stderr.read().decode(errors="replace")

    def close(self) -> None:
        kill_tree(self.process)
        for stream in (self.process.stdin, self.process.stdout, self.stderr):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_spare(
    jail: Jail,
    argv: Sequence[str],
    limits: JailLimits,
    *,
    stdout: int = subprocess.PIPE,
    readable: Iterable[Path] = (),
    env: dict[str, str] | None = None,
) -> Spare:
    """Starts `argv` (an entry that reads its request from stdin) in `jail` in a fresh folder; `readable`: folders
    it may also read; `env`: variables beside the clean environment's (`thread_environment`)."""
    folder = Path(tempfile.mkdtemp(prefix="squeezer-jail-"))
    for name in ("work", "tmp"):
        (folder / name).mkdir()
    hand_over(folder)
    stderr = tempfile.TemporaryFile()
    process = jail.start(
        argv,
        limits,
        writable=[folder],
        readable=readable,
        cwd=folder / "work",
        env={**(env or {}), "TMPDIR": str(folder / "tmp")},
        stdout=stdout,
        stderr=stderr,
    )
    return Spare(process, folder, limits, stderr)


class SparePool:
    """Keeps one Spare of `argv` under `limits` ready: `take` hands it over (or starts one then and there when none
    is ready) and has the next one started in the background, so that an interpreter's start and imports (seconds,
    with torch) overlap the wait for the next request. Background starts run on the pool's own thread (the spares'
    parent-death signal is tied to it), from the first `take` until `close`; a `take` after `close` starts again."""

    def __init__(
        self,
        jail: Jail,
        argv: Sequence[str],
        limits: JailLimits,
        *,
        stdout: int = subprocess.PIPE,
        env: dict[str, str] | None = None,
    ):
        self.jail, self.argv, self.limits, self.stdout, self.env = jail, list(argv), limits, stdout, env
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._ready: Spare | None = None
        self._running: threading.Event | None = None  # set while the current background thread may start spares

    def take(self) -> Spare:
        with self._lock:
            spare, self._ready = self._ready, None
            if self._running is None:
                self._running = threading.Event()
                self._running.set()
                threading.Thread(target=self._keep_one_ready, args=(self._running,), daemon=True).start()
                atexit.register(self.close)  # the ready spare's folder goes with it
            self._wanted.set()
        if spare is not None and spare.process.poll() is None:
            return spare
        if spare is not None:
            spare.close()
        return start_spare(self.jail, self.argv, self.limits, stdout=self.stdout, env=self.env)

    def close(self) -> None:
        with self._lock:
            if self._running is not None:
                self._running.clear()
                self._running = None
            spare, self._ready = self._ready, None
            self._wanted.set()
        if spare is not None:
            spare.close()

    def _keep_one_ready(self, running: threading.Event) -> None:
        while True:
            self._wanted.wait()
            with self._lock:
                if not running.is_set():
                    return
                self._wanted.clear()
            spare: Spare | None = start_spare(self.jail, self.argv, self.limits, stdout=self.stdout, env=self.env)
            with self._lock:
                if running.is_set() and self._ready is None:
                    self._ready, spare = spare, None
            if spare is not None:
                spare.close()


_shared_pools: dict[tuple[Jail, tuple[str, ...]], SparePool] = {}
_shared_pools_lock = threading.Lock()


def shared_spare_pool(
    jail: Jail, argv: Sequence[str], limits: JailLimits, *, env: dict[str, str] | None = None
) -> SparePool:
    """This process's one SparePool of `argv` in `jail` (closed at exit): workers built again in one process (tests,
    a restarted embedded service) take the spare the last one kept ready instead of each starting and discarding its
    own. A call with other limits or variables replaces the pool."""
    key = (jail, tuple(argv))
    with _shared_pools_lock:
        pool = _shared_pools.get(key)
        if pool is None or (pool.limits, pool.env) != (limits, env):
            if pool is not None:
                pool.close()
            pool = _shared_pools[key] = SparePool(jail, argv, limits, env=env)
        return pool


def job_identity() -> tuple[int, int]:
    """(uid, gid) jailed processes run as when the caller is root: the `squeezer-job` user, else nobody."""
    try:
        entry = pwd.getpwnam(JOB_USER)
    except KeyError:
        return (NOBODY, NOBODY)
    return (entry.pw_uid, entry.pw_gid)


def hand_over(path: Path) -> None:
    """Makes the folder `path` (and what is in it) the jailed uid's, so the jail can write its outputs there. A
    no-op unless the caller is root (otherwise the jail runs as the caller)."""
    if os.geteuid() != 0:
        return
    uid, gid = job_identity()
    for root, dirs, files in os.walk(path):
        os.lchown(root, uid, gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def check_jail(mode: JailMode, *, allow_unjailed: bool) -> None:
    """Raises JailUnavailable with the fix when engine work cannot run as configured: bwrap missing or not
    working (a container that forbids namespaces), or no jail (or a root engine) without the explicit permission."""
    if mode is JailMode.NONE:
        if not allow_unjailed:
            raise JailUnavailable(
                "SQUEEZER_JAIL=none runs untrusted uploads through the engine without a jail"
                + (" and as root" if os.geteuid() == 0 else "")
                + "; set SQUEEZER_ALLOW_UNJAILED_ENGINE=1 to accept that, or use SQUEEZER_JAIL=bwrap"
            )
        return
    problem = _bwrap_problem()
    if problem:
        raise JailUnavailable(
            f"the engine's jail (bubblewrap) does not work here: {problem}. Install it (`apt-get install bubblewrap`, "
            "scripts/setup.sh does), allow user namespaces in the container, or accept running the engine unjailed "
            "with SQUEEZER_JAIL=none and SQUEEZER_ALLOW_UNJAILED_ENGINE=1"
        )


@functools.cache
def _bwrap_problem() -> str | None:
    """Why bwrap cannot start a jail here, or None; tried once per process."""
    if shutil.which("bwrap") is None:
        return "`bwrap` is not installed"
    probe = Jail(packages=())
    try:
        done = subprocess.run(
            probe.command(["/bin/true"]),
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`bwrap` did not run ({error})"
    if done.returncode != 0:
        return f"`bwrap` failed: {done.stderr.decode(errors='replace').strip()[:300]}"
    return None


def _drop_privileges() -> list[str]:
    """Inside the namespaces, as root, bwrap hands over to the job uid with no capability left; run by anyone
    else, bwrap's own user namespace already dropped them."""
    if os.geteuid() != 0:
        return []
    uid, gid = job_identity()
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


def _bwrap_arguments(packages: tuple[str, ...], writable: list[Path], data: list[Path], cwd: Path | None) -> list[str]:
    args = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if os.geteuid() != 0:
        # Unprivileged, bwrap needs a user namespace for the others (one more inside is refused) and drops every
        # capability in it; as root, setpriv drops them with the uid (_drop_privileges).
        args += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    args += ["--die-with-parent", "--new-session", "--hostname", "jail"]
    args += _system_mounts()
    made: set[str] = {"/", "/usr", "/tmp", "/proc", "/dev"}
    readable = [Path(sys.base_prefix), Path(sys.prefix), Path(os.path.realpath(sys.executable)).parent]
    readable += package_folders(("squeezer", *packages))
    for path in _outermost(p.resolve() for p in readable if p.exists() and not p.resolve().is_relative_to("/usr")):
        args += [*_parents(path, made), "--ro-bind", str(path), str(path)]
    for path in _outermost(p.resolve() for p in data):
        args += [*_parents(path, made), "--ro-bind", str(path), str(path)]
    for path in _outermost(p.resolve() for p in writable):
        args += [*_parents(path, made), "--bind", str(path), str(path)]
    args += _devices()
    if cwd is not None:
        args += ["--chdir", str(cwd.resolve())]
    return args


def _system_mounts() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    for file in ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group"):
        args += ["--ro-bind-try", file, file]
    # /tmp is memory: small; work files go to the folders it was given (TMPDIR).
    args += ["--proc", "/proc", "--dev", "/dev"]
    for folder in ("/tmp", "/dev/shm"):
        args += ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", folder]
    return args


def _devices() -> list[str]:
    """The GPU device files, where there are any: a CUDA worker's jobs need them."""
    args: list[str] = []
    for device in sorted(Path("/dev").glob("nvidia*")):
        if device.is_char_device():
            args += ["--dev-bind", str(device), str(device)]
    return args


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """The paths that are not inside another of them, so each is bound once."""
    unique = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return kept


def _parents(path: Path, made: set[str]) -> list[str]:
    """`--dir` for each folder above `path` not made yet: bwrap would make them owner-only, which the job uid could
    not enter."""
    args: list[str] = []
    for parent in reversed(path.parents):
        if str(parent) not in made and not any(str(parent).startswith(m + "/") for m in ("/usr", "/proc", "/dev")):
            made.add(str(parent))
            args += ["--dir", str(parent)]
    return args


def _limit_child(limits: JailLimits) -> None:
    """In the child between fork and exec (so bwrap and everything under it inherit them): the resource limits and
    death with the thread that started it."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.cpu_s is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))
