"""HTTP Range requests on downloads (RFC 9110 §14): one byte range per request, so a client resumes a download or
reads part of a file. Several ranges, another unit or a malformed header are ignored (the whole file, 200), as the
RFC allows; a well-formed range that starts past the end is 416."""

import re

# ASCII digits, at most 19 (int() refuses numbers past 4,300 digits, and \d takes other scripts' digits).
_BYTE_RANGE = re.compile(r"^bytes=[ \t]*(?:([0-9]{1,19})-([0-9]{0,19})|-([0-9]{1,19}))[ \t]*$")


class RangeNotSatisfiable(Exception):
    """No byte of the file falls in the requested range (416, with `Content-Range: bytes */<size>`)."""


def requested_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The bytes [start, stop) that `Range: <header>` asks of a file of `size` bytes, or None for the whole file."""
    if not header or size == 0:
        return None
    match = _BYTE_RANGE.match(header)
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        if int(suffix) == 0:
            raise RangeNotSatisfiable
        return max(0, size - int(suffix)), size
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: the RFC says to ignore it
    if start >= size:
        raise RangeNotSatisfiable
    return start, size if not last else min(int(last) + 1, size)


def content_range(start: int, stop: int, size: int) -> str:
    return f"bytes {start}-{stop - 1}/{size}"
