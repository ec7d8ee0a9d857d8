"""Targets the jail tests run in place of the engine job (core.jail_entry runs `module:function(payload, channel)`):
each looks at the jail from the inside, or misbehaves the way a compromised engine could."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from squeezer.core.events import Event
from squeezer.core.jail_entry import Channel

# Run by `orphan`: leaves its session and forks twice, so that only a PID namespace can still find it.
_ESCAPE = """
import os, sys, time
os.setsid()
if os.fork(): os._exit(0)
if os.fork(): os._exit(0)
open(sys.argv[1], "w").write("escaped")
time.sleep(600)
"""


def look_around(payload: dict, _: Channel | None) -> dict:
    """What code running as the engine can see and reach."""
    parent = Path("/proc") / str(payload["parent_pid"])
    try:
        parent_environ: str | None = (parent / "environ").read_bytes().decode(errors="replace")
    except OSError:
        parent_environ = None
    try:
        socket.create_connection(("127.0.0.1", payload["port"]), timeout=5).close()
        network = "connected"
    except OSError as error:
        network = type(error).__name__
    status = Path("/proc/self/status").read_text()
    return {
        "environ": dict(os.environ),
        "proc_environ": Path("/proc/self/environ").read_bytes().decode(errors="replace"),
        "parent_environ": parent_environ,
        "parent_visible": parent.exists(),
        "pids": sorted(int(name) for name in os.listdir("/proc") if name.isdigit()),
        "network": network,
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "capabilities": [line.split()[1] for line in status.splitlines() if line.startswith("Cap")],
        "sibling_visible": Path(payload["sibling"]).exists(),
        "source_writable": os.access(Path(__file__).resolve().parents[2] / "core", os.W_OK),
        "workdir_writable": os.access(os.getcwd(), os.W_OK),
    }


def look_around_check(payload: dict) -> dict:
    """look_around as a submission check (core.sandbox target), and what it can do with its input file."""
    seen = look_around(payload, None)
    seen["input_readable"] = os.access(payload["input"], os.R_OK)
    seen["input_writable"] = os.access(payload["input"], os.W_OK)
    return seen


def orphan_check(payload: dict) -> dict:
    return orphan(payload, None)


def orphan(payload: dict, _: Channel | None) -> dict:
    """Starts a process that escapes the session and the parent, and returns once it is running."""
    ready = Path(payload["ready"])
    subprocess.run([sys.executable, "-c", _ESCAPE, str(ready), payload["token"]], check=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"escaped": ready.exists()}


def allocate(_: dict, channel: Channel) -> dict:
    """Allocates until the address-space limit stops it."""
    channel.on_event(Event(stage="intake", fraction=0.0, message="allocating"))
    blocks = []
    while True:
        blocks.append(bytearray(256 << 20))


def obey(_: dict, channel: Channel) -> dict:
    """Reports progress until told to stop, as the engine does at its stop checks."""
    step = 0
    while not channel.should_stop():
        channel.on_event(Event(stage="train", fraction=0.5, data={"step": step}))
        step += 1
        time.sleep(0.1)
    from squeezer.core.errors import Cancelled

    raise Cancelled("stopped")


def ignore_stop(_: dict, channel: Channel) -> dict:
    """Reports once, then never checks again."""
    channel.on_event(Event(stage="train", fraction=0.5))
    while True:
        time.sleep(1)


def checkpoint(payload: dict, channel: Channel) -> dict:
    """Writes a checkpoint file and a link to a file outside, reports the checkpoint, then returns."""
    folder = Path(payload["checkpoint_dir"])
    (folder / "state.bin").write_bytes(b"state")
    os.symlink(payload["outside"], folder / "stolen")
    channel.on_checkpoint()
    return {"after_ack": True}


def garble(payload: dict, channel: Channel) -> dict:
    """Writes what the protocol does not allow straight into the channel."""
    line = {"not_json": b"{this is not json\n", "too_long": b"x" * (1 << 20) + b"\n"}[payload["kind"]]
    os.write(channel.out_fd, line)
    time.sleep(600)
    return {}


def flood(_: dict, channel: Channel) -> dict:
    """More events in a second than a job may send."""
    while True:
        channel.on_event(Event(stage="train", fraction=0.1))
