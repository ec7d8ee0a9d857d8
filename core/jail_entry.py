"""The engine's side of a jailed job: `python -m squeezer.core.jail_entry MODULE...`, started ahead of its job by the
worker (core.jail.SparePool, worker.engine_process): it imports the modules, then waits for its request.

The request, the first line on stdin, names a target ("package.module:function", chosen by our code, never by an
upload) and its JSON payload. The target gets the payload and a Channel. Out on stdout, as JSON lines: events
({"type": "event", ...}) and checkpoints ({"type": "checkpoint"}: one is on disk, and the child waits until the parent
has kept it). In on stdin, the parent's orders ("stop": end at the next stop check; "ack": the checkpoint is kept).
The last line says how the target ended: {"type": "result", ...}, {"type": "error", "code", "message"} or
{"type": "cancelled"}. Anything a library prints goes to stderr, never into the channel. Running out of memory exits
with OUT_OF_MEMORY_EXIT so that the parent knows even when there was no memory left to write a line.
"""

import dataclasses
import importlib
import json
import os
import select
import sys
import traceback
from pathlib import Path
from typing import Any

from squeezer.core.errors import Cancelled, SqueezerError, is_out_of_memory
from squeezer.core.events import Event

OUT_OF_MEMORY_EXIT = 86


class Channel:
    """The JSON-lines pipe to the parent: events out, stop orders and checkpoint acknowledgements in."""

    def __init__(self, out_fd: int, in_fd: int = 0):
        self.out_fd = out_fd
        self.in_fd = in_fd
        self._pending = b""
        self.stopped = False

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, default=str, allow_nan=False) + "\n").encode()
        while data:
            data = data[os.write(self.out_fd, data) :]

    def on_event(self, event: Event) -> None:
        self.send({"type": "event", **dataclasses.asdict(event)})

    def on_checkpoint(self) -> None:
        """Tells the parent a checkpoint is on disk and waits until it has kept it (or asks to stop)."""
        self.send({"type": "checkpoint"})
        self._read_orders(until_ack=True)

    def request(self) -> dict | None:
        """The first line from the parent, the request (None: the parent closed the pipe first)."""
        while b"\n" not in self._pending:
            chunk = os.read(self.in_fd, 1 << 16)
            if not chunk:
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def should_stop(self) -> bool:
        if not self.stopped:
            self._read_orders(until_ack=False)
        return self.stopped

    def _read_orders(self, *, until_ack: bool) -> None:
        """Reads what the parent wrote; waits for "ack" when `until_ack`. A closed pipe means the parent is gone."""
        while True:
            if not until_ack and not select.select([self.in_fd], [], [], 0)[0]:
                return
            chunk = os.read(self.in_fd, 4096)
            if not chunk:
                self.stopped = True
                return
            self._pending += chunk
            *lines, self._pending = self._pending.split(b"\n")
            self.stopped = self.stopped or b"stop" in lines
            if until_ack and (b"ack" in lines or self.stopped):
                return


def compress_job(payload: dict, channel: Channel) -> dict:
    """The worker's job: core.pipeline.compress_files on the files in the job's folder, reporting through `channel`.
    Returns what the worker decides the final status with (the full report is out_dir/report.json)."""
    from squeezer.core import limits
    from squeezer.core.config import CompressConfig
    from squeezer.core.pipeline import ModelSource, compress_files

    model = payload["model"]
    source = ModelSource(Path(model["path"]), model.get("architecture"), model.get("arch_args") or {})
    config = CompressConfig.model_validate(payload["config"])
    with limits.using(limits.IntakeLimits(**payload["limits"])):
        report = compress_files(
            source,
            payload["data"],
            Path(payload["out_dir"]),
            config,
            on_event=channel.on_event,
            should_stop=channel.should_stop,
            checkpoint_dir=Path(payload["checkpoint_dir"]),
            on_checkpoint=channel.on_checkpoint,
        )
    return {"stopped_early": report.get("stopped_early"), "target_met": bool(report.get("target_met"))}


def run(request: dict, channel: Channel) -> int:
    """Runs the request's target and reports how it ended; the exit status."""
    module_name, _, function_name = request["target"].partition(":")
    try:
        result = getattr(importlib.import_module(module_name), function_name)(request["payload"], channel)
    except Cancelled:
        channel.send({"type": "cancelled"})
    except SqueezerError as error:
        channel.send({"type": "error", "code": error.code, "message": error.message})
    except BaseException as error:
        if is_out_of_memory(error):
            return OUT_OF_MEMORY_EXIT
        traceback.print_exc()
        channel.send({"type": "crash", "error": type(error).__name__})
        return 1
    else:
        channel.send({"type": "result", "result": result})
    return 0


def main(preload: list[str]) -> int:
    out_fd = os.dup(1)
    os.dup2(2, 1)  # stdout is the channel: whatever a library prints goes to stderr
    sys.stdout = sys.stderr
    channel = Channel(out_fd)
    try:
        for module in preload:
            importlib.import_module(module)
        request = channel.request()
        return 0 if request is None else run(request, channel)
    except MemoryError:
        return OUT_OF_MEMORY_EXIT


if __name__ == "__main__":
    status = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(status)  # no interpreter teardown: library threads and atexit hooks cannot hang the exit
