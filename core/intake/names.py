"""Names that come from an upload (ONNX node and tensor names, architecture names and arguments, state-dict keys,
layer names) are data: they are looked up in tables we own and quoted in messages, never executed or used to reach
an attribute. `shown` is how any of them appears in a message."""

import re

SHOWN_CHARS = 200
_PLAIN = re.compile(r"[A-Za-z0-9_./:+-]{1,200}")  # ASCII letters, digits and separators: nothing to escape or forge


def shown(name: object) -> str:
    """An uploaded name as a message quotes it: as it is when plain ASCII (`head.gate`), else repr-quoted (quotes,
    newlines, NUL and look-alike letters escaped or visible as such) and cut to SHOWN_CHARS characters, so a
    megabyte-long or multi-line name cannot flood or forge a message."""
    text = name if isinstance(name, str) else str(name)
    return text if _PLAIN.fullmatch(text) else quoted(text)


def quoted(name: str) -> str:
    """`name` always between quotes, escaped and capped as `shown` does for names that are not plain."""
    return ascii(name[:SHOWN_CHARS]) + ("…" if len(name) > SHOWN_CHARS else "")


def shown_list(names, limit: int = 5) -> str:
    """The first `limit` names, each `shown`, comma-separated."""
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown(name) for name in names[:limit]) + more
