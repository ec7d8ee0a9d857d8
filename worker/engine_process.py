"""The worker's side of a jailed engine run: starts core.jail_entry in the jail (core.jail), relays its events to the
job's hooks, tells it to stop, and ends its whole process tree when it does not.

The child is untrusted once it has parsed an upload, so everything it sends is read with bounds: a line longer than
MAX_LINE_BYTES, more than MAX_EVENTS events and checkpoints (or MAX_EVENTS_PER_S in one second), or a line that is not
one of the protocol's messages ends the run as failed with `engine_protocol_error`; none of it can crash the worker.
A checkpoint message goes to the run's on_checkpoint hook and is acknowledged once that returns. Outcomes:
- the child's last line: a result (returned), an engine error (raised as a SqueezerError with its code), cancelled;
- out of memory (its exit status, or a SIGKILL/SIGSEGV/SIGABRT/SIGBUS it did not get from us): `out_of_memory`;
- a stop asked and not obeyed within STOP_GRACE_S: killed, Cancelled;
- still running time_limit_s + grace after it started: killed, `time_limit_exceeded`;
- anything else: EngineCrashed, with the tail of its stderr in the worker's log.
"""

import json
import logging
import math
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squeezer.core.errors import Cancelled, SqueezerError
from squeezer.core.events import CheckpointCallback, Event, no_checkpoints
from squeezer.core.jail import Spare, hand_over, kill_tree
from squeezer.core.jail_entry import OUT_OF_MEMORY_EXIT

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 << 10
MAX_EVENTS = 200_000
MAX_EVENTS_PER_S = 1000
STOP_GRACE_S = 15.0
POLL_S = 0.2
EVENT_LEVELS = {"debug", "info", "warning", "error"}
MEMORY_SIGNALS = {signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS}


class EngineProtocolError(SqueezerError):
    code = "engine_protocol_error"


class EngineOutOfMemory(SqueezerError):
    code = "out_of_memory"


class EngineTimeLimit(SqueezerError):
    code = "time_limit_exceeded"


class EngineCrashed(RuntimeError):
    """The engine process ended without saying how (an internal error, never the user's input)."""


@dataclass
class EngineRun:
    """One run in a jailed engine interpreter (`spare`, started by core.jail with core.jail_entry; its folder is the
    job's) with the job's hooks."""

    spare: Spare
    on_event: Callable[[Event], None]
    should_stop: Callable[[], bool]
    # Keeps a checkpoint the child wrote in its folder; the child waits for it.
    on_checkpoint: CheckpointCallback = no_checkpoints
    # Seconds after which the child is killed (the job's time limit plus time for loading and export); None: never.
    deadline_s: float | None = None
    # Seconds a child asked to stop has before it is killed.
    stop_grace_s: float = STOP_GRACE_S

    @property
    def workdir(self) -> Path:
        return self.spare.folder

    def run(self, target: str, payload: dict) -> Any:
        """Runs `target` (a "module:function" of core.jail_entry's kind) on `payload`; its result. The inputs must
        be in `workdir` by now: it is handed to the jail's uid here."""
        hand_over(self.workdir)
        self.spare.send({"target": target, "payload": payload})
        supervisor = _Supervisor(self, self.spare.process)
        try:
            ending = supervisor.follow()
        finally:
            kill_tree(self.spare.process)
        return _outcome(self, ending, supervisor, self.spare.process.returncode)


class _Supervisor:
    def __init__(self, run: EngineRun, process: subprocess.Popen):
        self.run = run
        self.process = process
        self.buffer = b""
        self.events = 0
        self.window_start = time.monotonic()
        self.window_events = 0
        self.stop_sent_at: float | None = None
        self.killed_for: str | None = None  # "cancel" | "time_limit" | "protocol"
        self.problem = ""

    def follow(self) -> dict | None:
        """Reads the child until it ends (or is killed); its last message, or None."""
        assert self.process.stdout is not None  # started with stdout=PIPE
        fd = self.process.stdout.fileno()
        os.set_blocking(fd, False)
        started = time.monotonic()
        last: dict | None = None
        while True:
            if select.select([fd], [], [], POLL_S)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                try:
                    last = self._take(chunk) or last
                except EngineProtocolError as error:
                    self.problem, self.killed_for = error.message, "protocol"
                    return None
            if self._overdue(started):
                return None
            if self.process.poll() is not None and not select.select([fd], [], [], 0)[0]:
                break
        return last

    def _take(self, chunk: bytes) -> dict | None:
        """Handles the complete lines in `chunk`; the last final message among them."""
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > MAX_LINE_BYTES or any(len(line) > MAX_LINE_BYTES for line in lines):
            raise EngineProtocolError(f"the engine sent a line longer than {MAX_LINE_BYTES} bytes")
        final = None
        for line in lines:
            message = _parse(line)
            if message["type"] == "event":
                self._count()
                self.run.on_event(_event(message))
            elif message["type"] == "checkpoint":
                self._count()
                self.run.on_checkpoint()
                self._order(b"ack\n")
            else:
                final = message
        return final

    def _count(self) -> None:
        self.events += 1
        now = time.monotonic()
        if now - self.window_start >= 1.0:
            self.window_start, self.window_events = now, 0
        self.window_events += 1
        if self.events > MAX_EVENTS or self.window_events > MAX_EVENTS_PER_S:
            raise EngineProtocolError("the engine sent more events than a job may send")

    def _overdue(self, started: float) -> bool:
        """Asks the child to stop when the job's stop check says so; True (killed) past a grace period or the
        deadline."""
        now = time.monotonic()
        if self.stop_sent_at is None and self.run.should_stop():
            self.stop_sent_at = now
            self._order(b"stop\n")
        if self.stop_sent_at is not None and now - self.stop_sent_at > self.run.stop_grace_s:
            self.killed_for = "cancel"
        elif self.run.deadline_s is not None and now - started > self.run.deadline_s:
            self.killed_for = "time_limit"
        return self.killed_for is not None

    def _order(self, line: bytes) -> None:
        assert self.process.stdin is not None  # started with stdin=PIPE
        try:
            self.process.stdin.write(line)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it ended; follow() sees that


def _parse(line: bytes) -> dict:
    try:
        message = json.loads(line)
    except ValueError:
        raise EngineProtocolError("the engine sent a line that is not JSON") from None
    kinds = {"event", "checkpoint", "result", "error", "cancelled", "crash"}
    if not isinstance(message, dict) or message.get("type") not in kinds:
        raise EngineProtocolError("the engine sent a message of no known type")
    return message


def _event(message: dict) -> Event:
    """An Event from the child's message, its fields checked: the hooks store it as given."""
    stage, fraction, text = message.get("stage"), message.get("fraction"), message.get("message", "")
    level, data = message.get("level", "info"), message.get("data", {})
    if not (
        isinstance(stage, str)
        and 0 < len(stage) <= 64
        and isinstance(fraction, int | float)
        and math.isfinite(fraction)
        and isinstance(text, str)
        and len(text) <= 4096
        and level in EVENT_LEVELS
        and isinstance(data, dict)
    ):
        raise EngineProtocolError("the engine sent an event that is not well-formed")
    return Event(stage=stage, fraction=float(fraction), message=text, level=level, data=data)


def _outcome(run: EngineRun, ending: dict | None, supervisor: _Supervisor, status: int) -> Any:
    killed_for = supervisor.killed_for
    if killed_for == "protocol":
        raise EngineProtocolError(f"The job's engine process broke the worker's protocol: {supervisor.problem}.")
    if killed_for == "cancel":
        raise Cancelled("stopped: the engine did not stop by itself and was ended")
    if killed_for == "time_limit":
        raise EngineTimeLimit(
            "The job ran past its time limit and did not stop by itself; it was ended without a result."
        )
    kind = (ending or {}).get("type")
    if kind == "result":
        return ending["result"]  # type: ignore[index]  # kind says it is a dict
    if kind == "cancelled":
        raise Cancelled("stopped")
    if kind == "error" and isinstance(ending["code"], str) and isinstance(ending["message"], str):  # type: ignore[index]
        raise SqueezerError(ending["message"][:4096], code=ending["code"][:64])  # type: ignore[index]
    if status == OUT_OF_MEMORY_EXIT or (status > 128 and status - 128 in MEMORY_SIGNALS) or -status in MEMORY_SIGNALS:
        raise EngineOutOfMemory(
            f"The job ran out of memory: its engine may use {run.spare.limits.memory_bytes / 2**30:.1f} GiB of address "
            "space (SQUEEZER_JOB_MEMORY_BYTES on the worker). Use less data per step, or a smaller model."
        )
    log.error("engine process ended with status %s; its stderr ends with:\n%s", status, run.spare.stderr_tail())
    raise EngineCrashed(f"the engine process ended with status {status} without a result")
