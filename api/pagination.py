"""Cursor pagination: `after` (the id of the last item the client saw) + `limit` → `{data, has_more}`.

Query values are parsed strictly: ASCII digits only and bounded (str.isdigit also takes ², which int() refuses), and
a cursor is an id's characters only; anything else is a 422 problem naming the parameter, never a 500."""

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, BeforeValidator

from squeezer.api.errors import ProblemError
from squeezer.api.limits import decimal

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Ids are a prefix and 32 hex digits (store.models.new_id), event ids decimal numbers up to PostgreSQL's bigint.
MAX_CURSOR_CHARS = 64
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"
MAX_EVENT_ID = 2**63 - 1
# Longer numbers are refused before int() reads them.
MAX_NUMBER_DIGITS = 32
T = TypeVar("T")


def _ascii_number(value: Any) -> Any:
    """A query value as the int it spells, when it is ASCII digits, at most MAX_NUMBER_DIGITS of them; the
    parameter's own bounds are checked after this, and name themselves."""
    if isinstance(value, str):
        number = decimal(value, 10**MAX_NUMBER_DIGITS - 1)
        if number is None:
            raise ValueError("must be a whole number written in ASCII digits")
        return number
    return value


class PageParams(BaseModel):
    after: str | None = None
    limit: int = DEFAULT_LIMIT


def page_params(
    after: Annotated[
        str | None,
        Query(
            description="Return the items after this cursor (the id of the last item of the previous page): letters, "
            f"digits, _ and -, at most {MAX_CURSOR_CHARS} characters.",
            max_length=MAX_CURSOR_CHARS,
            pattern=CURSOR_PATTERN,
        ),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1 to {MAX_LIMIT}."), BeforeValidator(_ascii_number)
    ] = DEFAULT_LIMIT,
) -> PageParams:
    return PageParams(after=after, limit=limit)


PageDep = Annotated[PageParams, Depends(page_params)]


def event_cursor(after: str | None) -> int | None:
    """The event id a cursor names; 422 when it is not one (events are numbered, so their cursor is a number)."""
    if after is None:
        return None
    event_id = decimal(after, MAX_EVENT_ID)
    if event_id is None:
        raise ProblemError(
            422,
            "invalid_cursor",
            f"after must be an event id: a whole number in ASCII digits, at most {MAX_EVENT_ID}",
            errors=[{"loc": ["query", "after"], "msg": "not an event id", "type": "invalid_cursor"}],
        )
    return event_id


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool


def make_page(rows: Sequence[Any], limit: int, convert: Callable[[Any], T]) -> dict:
    """`rows` was fetched with `limit + 1`: the extra row only says whether another page exists."""
    return {
        "data": [convert(row) for row in rows[:limit]],
        "has_more": len(rows) > limit,
    }
